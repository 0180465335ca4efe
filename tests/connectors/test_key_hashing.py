"""The SecretHasher port and its argon2id adapter."""

from __future__ import annotations

import pytest

from sluicegate.connectors.key_hashing import Argon2SecretHasher, SecretHasher
from sluicegate.settings import AuthSettings

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def hasher() -> Argon2SecretHasher:
    return Argon2SecretHasher(time_cost=1, memory_kib=64, parallelism=1)


def test_is_a_secret_hasher(hasher: Argon2SecretHasher) -> None:
    assert isinstance(hasher, SecretHasher)


def test_hash_is_a_salted_argon2id_phc_string(hasher: Argon2SecretHasher) -> None:
    first, second = hasher.hash("s3cret"), hasher.hash("s3cret")
    assert first.startswith("$argon2id$v=19$m=64,t=1,p=1$")
    assert "s3cret" not in first
    assert first != second  # a fresh salt every time


def test_verify_accepts_the_secret_and_refuses_anything_else(hasher: Argon2SecretHasher) -> None:
    hashed = hasher.hash("s3cret")
    assert hasher.verify(hashed, "s3cret")
    assert not hasher.verify(hashed, "s3cret ")
    assert not hasher.verify(hashed, "")


def test_an_unreadable_hash_verifies_nothing(hasher: Argon2SecretHasher) -> None:
    assert not hasher.verify("not-a-hash", "s3cret")
    assert not hasher.verify("$argon2id$v=19$m=64,t=1,p=1$broken", "s3cret")


def test_parameters_come_from_the_settings_and_old_hashes_still_verify() -> None:
    settings = AuthSettings(argon2_time_cost=2, argon2_memory_kib=128, argon2_parallelism=2)
    strong = Argon2SecretHasher.from_settings(settings)
    weak = Argon2SecretHasher(time_cost=1, memory_kib=64, parallelism=1)
    old = weak.hash("s3cret")
    assert strong.hash("s3cret").startswith("$argon2id$v=19$m=128,t=2,p=2$")
    assert strong.verify(old, "s3cret")
    assert strong.needs_rehash(old)
    assert not weak.needs_rehash(old)
