"""The key registry in every process that authenticates: sg.identity folded into memory.

Keys, tenants and policies are records on the compacted, single-partition sg.identity; each
bridge reads the whole topic at start (so it never serves a request on an empty registry) and
then follows it, so a key created, rotated or revoked on any bridge (admin API) or from the CLI
takes effect on every bridge as soon as its record is folded, within the reader's fetch wait.
"""

from __future__ import annotations

import logging

from sluicegate.connectors.jwt_verifier import JwtVerifier
from sluicegate.connectors.key_hashing import Argon2SecretHasher
from sluicegate.processors.identity import IdentityRegistry
from sluicegate.schemas.models import ApiKeyRecord, PolicyRecord, TenantRecord
from sluicegate.schemas.serde import AvroSerde
from sluicegate.settings import Settings
from sluicegate.streams.compacted import CompactedTopicReader

log = logging.getLogger(__name__)

IDENTITY_EVENTS = (ApiKeyRecord, TenantRecord, PolicyRecord)


def build_registry(settings: Settings) -> IdentityRegistry:
    """An empty registry with the configured hasher and, when enabled, the JWT verifier."""
    verifier = JwtVerifier(settings=settings.auth.jwt) if settings.auth.jwt.enabled else None
    return IdentityRegistry(
        settings=settings.auth,
        hasher=Argon2SecretHasher.from_settings(settings.auth),
        token_verifier=verifier,
        anonymous_tenant=settings.bridge.default_tenant,
    )


class IdentityView:
    """Follows sg.identity into `registry`; a record that does not decode is logged and skipped
    (the topic is written only by sluicegate itself, so that is a bug, not an attack)."""

    def __init__(
        self, *, settings: Settings, serde: AvroSerde, registry: IdentityRegistry | None = None
    ) -> None:
        self.registry = registry or build_registry(settings)
        self._serde = serde
        self._reader = CompactedTopicReader(
            bootstrap_servers=settings.kafka.bootstrap_servers,
            client_config=settings.kafka.client_config(),
            topic=settings.topic("identity"),
            on_record=self.apply,
        )

    def start(self, timeout_s: float = 30.0) -> None:
        self._reader.start(timeout_s)

    def close(self) -> None:
        self._reader.close()

    def apply(self, value: bytes) -> None:
        try:
            record = self._serde.decode(value)
        except Exception:
            log.exception("identity: a record that does not decode was skipped")
            return
        if not isinstance(record, IDENTITY_EVENTS):
            log.warning("identity: %s is not an identity record", type(record).__name__)
            return
        self.registry.apply(record)
