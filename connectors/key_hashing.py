"""Hashing of API-key secrets: the `SecretHasher` port and its argon2id adapter.

Only the hash of a key's secret is ever stored (ApiKeyRecord.secret_hash, a PHC string such as
`$argon2id$v=19$m=19456,t=2,p=1$...`), so a copy of the identity topic does not let anyone call
the gateway. Verification is deliberately slow (tens of milliseconds); the identity registry runs
it once per key and process and then answers from its verified-key cache
(processors/identity.py).

argon2-cffi releases the GIL while hashing, so `verify` can run on a thread-pool executor
without stalling an event loop.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

from sluicegate.settings import AuthSettings


@runtime_checkable
class SecretHasher(Protocol):
    """Hashes secrets for storage and checks a presented secret against a stored hash."""

    def hash(self, secret: str) -> str:
        """A self-describing hash of `secret` (salt and parameters included)."""
        ...

    def verify(self, hashed: str, secret: str) -> bool:
        """True if `secret` matches `hashed`; False for a mismatch or an unreadable hash."""
        ...


class Argon2SecretHasher:
    """argon2id through argon2-cffi. Hashes made with other parameters still verify."""

    def __init__(
        self, *, time_cost: int = 2, memory_kib: int = 19456, parallelism: int = 1
    ) -> None:
        self._hasher = PasswordHasher(
            time_cost=time_cost,
            memory_cost=memory_kib,
            parallelism=parallelism,
            type=Type.ID,
        )

    @classmethod
    def from_settings(cls, settings: AuthSettings) -> Argon2SecretHasher:
        return cls(
            time_cost=settings.argon2_time_cost,
            memory_kib=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
        )

    def hash(self, secret: str) -> str:
        return self._hasher.hash(secret)

    def verify(self, hashed: str, secret: str) -> bool:
        try:
            return self._hasher.verify(hashed, secret)
        except (VerificationError, InvalidHashError):  # VerifyMismatchError included
            return False

    def needs_rehash(self, hashed: str) -> bool:
        """Whether `hashed` was made with other parameters than the configured ones."""
        try:
            return self._hasher.check_needs_rehash(hashed)
        except InvalidHashError:
            return True
