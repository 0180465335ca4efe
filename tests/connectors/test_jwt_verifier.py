"""JWT bearer tokens: HS256 with a secret, RS256 with a JWKS file, and every way a token is
refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from pydantic import SecretStr, ValidationError

from sluicegate.connectors.jwt_verifier import JwtVerifier
from sluicegate.connectors.key_hashing import Argon2SecretHasher
from sluicegate.errors import ConfigurationError, ExpiredCredentialsError, InvalidTokenError
from sluicegate.processors.identity import IdentityRegistry, identity_envelope
from sluicegate.schemas.models import TenantRecord
from sluicegate.settings import AuthSettings, JwtSettings

pytestmark = pytest.mark.unit

SECRET = "an-hmac-secret-of-at-least-32-bytes!!"
NOW_S = 1_800_000_000
NOW_MS = NOW_S * 1000


def claims(**overrides) -> dict:
    return {
        "sub": "alice",
        "tenant": "acme",
        "roles": ["developer"],
        "exp": NOW_S + 300,
        "iat": NOW_S,
        **overrides,
    }


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def hs256(**overrides) -> str:
    return jwt.encode(claims(**overrides), SECRET, algorithm="HS256")


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwks(path: Path, *keys: tuple[str, rsa.RSAPrivateKey]) -> Path:
    entries = []
    for kid, key in keys:
        entry = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
        entries.append({**entry, "kid": kid, "use": "sig", "alg": "RS256"})
    path.write_text(json.dumps({"keys": entries}))
    return path


def rs256(key: rsa.RSAPrivateKey, kid: str | None = "k1", **overrides) -> str:
    headers = {"kid": kid} if kid else {}
    return jwt.encode(claims(**overrides), key, algorithm="RS256", headers=headers)


@pytest.fixture
def hmac_verifier() -> JwtVerifier:
    return JwtVerifier(
        settings=JwtSettings(enabled=True, algorithms=["HS256"], hmac_secret=SecretStr(SECRET))
    )


@pytest.fixture
def rsa_verifier(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> JwtVerifier:
    path = jwks(tmp_path / "jwks.json", ("k1", rsa_key))
    settings = JwtSettings(
        enabled=True,
        algorithms=["RS256"],
        jwks_file=path,
        issuer="https://idp.example",
        audience="sluicegate",
    )
    return JwtVerifier(settings=settings)


def test_an_hs256_token_maps_its_claims(hmac_verifier: JwtVerifier) -> None:
    verified = hmac_verifier.verify(hs256(), now_ms=NOW_MS)
    assert (verified.subject, verified.tenant_id, verified.roles) == (
        "alice",
        "acme",
        {"developer"},
    )
    assert verified.expires_at_ms == (NOW_S + 300) * 1000


def test_an_rs256_token_verifies_with_the_jwks_key(
    rsa_verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey
) -> None:
    token = rs256(rsa_key, iss="https://idp.example", aud="sluicegate")
    assert rsa_verifier.verify(token, now_ms=NOW_MS).tenant_id == "acme"


def test_claim_names_are_configurable_and_may_be_paths(tmp_path: Path) -> None:
    settings = JwtSettings(
        enabled=True,
        algorithms=["HS256"],
        hmac_secret=SecretStr(SECRET),
        subject_claim="email",
        tenant_claim="https://sluicegate.dev/tenant",
        roles_claim="realm_access.roles",
        models_claim="models",
        attribute_claims={"department": "dept", "staff": "is_staff"},
    )
    token = hs256(
        email="bob@example.com",
        **{"https://sluicegate.dev/tenant": "globex"},
        realm_access={"roles": ["viewer", "service"]},
        models="gpt-4o-mini claude-3-5",
        dept="research",
        is_staff=True,
    )
    verified = JwtVerifier(settings=settings).verify(token, now_ms=NOW_MS)
    assert (verified.subject, verified.tenant_id) == ("bob@example.com", "globex")
    assert verified.roles == {"viewer", "service"}
    assert verified.allowed_models == ("gpt-4o-mini", "claude-3-5")
    assert verified.attributes == {"department": "research", "staff": "true"}


def test_expiry_is_checked_with_leeway(hmac_verifier: JwtVerifier) -> None:
    token = hs256(exp=NOW_S - 10)
    assert hmac_verifier.verify(token, now_ms=NOW_MS).subject == "alice"  # within 30 s
    with pytest.raises(ExpiredCredentialsError) as caught:
        hmac_verifier.verify(token, now_ms=NOW_MS + 21_000)
    assert (caught.value.status, caught.value.code) == (401, "expired_token")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"exp": None}, "exp"),
        ({"exp": "tomorrow"}, "exp"),
        ({"nbf": NOW_S + 3600}, "not valid yet"),
        ({"sub": None}, "sub"),
        ({"tenant": None}, "tenant"),
        ({"tenant": "../etc"}, "tenant"),
        ({"aud": "someone-else"}, "audience"),
    ],
)
def test_tokens_with_bad_claims_are_refused(
    hmac_verifier: JwtVerifier, changes: dict, message: str
) -> None:
    payload = {k: v for k, v in claims(**changes).items() if v is not None}  # None: left out
    token = jwt.encode(payload, SECRET, algorithm="HS256")
    with pytest.raises(InvalidTokenError, match=message) as caught:
        hmac_verifier.verify(token, now_ms=NOW_MS)
    assert (caught.value.status, caught.value.code) == (401, "invalid_token")


def test_audience_and_issuer_must_match(
    rsa_verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey
) -> None:
    for token in (
        rs256(rsa_key, iss="https://idp.example", aud="another-api"),
        rs256(rsa_key, iss="https://idp.example"),  # no audience at all
        rs256(rsa_key, iss="https://evil.example", aud="sluicegate"),
        rs256(rsa_key, aud="sluicegate"),  # no issuer at all
    ):
        with pytest.raises(InvalidTokenError):
            rsa_verifier.verify(token, now_ms=NOW_MS)


def test_a_wrong_signature_is_refused(
    hmac_verifier: JwtVerifier, rsa_verifier: JwtVerifier
) -> None:
    forged = jwt.encode(claims(), "another-secret-that-is-also-32-bytes!!", algorithm="HS256")
    with pytest.raises(InvalidTokenError, match="Signature"):
        hmac_verifier.verify(forged, now_ms=NOW_MS)
    impostor = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = rs256(impostor, iss="https://idp.example", aud="sluicegate")
    with pytest.raises(InvalidTokenError, match="Signature"):
        rsa_verifier.verify(token, now_ms=NOW_MS)
    header, _, signature = hs256().split(".")
    escalated = b64(claims(roles=["admin"]))
    with pytest.raises(InvalidTokenError, match="Signature"):
        hmac_verifier.verify(f"{header}.{escalated}.{signature}", now_ms=NOW_MS)


def test_alg_none_and_unconfigured_algorithms_are_refused(
    hmac_verifier: JwtVerifier, rsa_verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey
) -> None:
    for alg in ("none", "None", "NONE"):
        unsigned = f"{b64({'alg': alg, 'typ': 'JWT'})}.{b64(claims())}."
        for verifier in (hmac_verifier, rsa_verifier):
            with pytest.raises(InvalidTokenError, match="not accepted"):
                verifier.verify(unsigned, now_ms=NOW_MS)
    with pytest.raises(InvalidTokenError, match="not accepted"):
        rsa_verifier.verify(hs256(), now_ms=NOW_MS)
    with pytest.raises(InvalidTokenError, match="not accepted"):
        hmac_verifier.verify(rs256(rsa_key), now_ms=NOW_MS)


def test_a_public_key_cannot_serve_as_an_hmac_secret(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    """Algorithm confusion: an HS256 token MACed with the (public) RSA key as the secret."""
    path = jwks(tmp_path / "jwks.json", ("k1", rsa_key))
    settings = JwtSettings(
        enabled=True, algorithms=["RS256", "HS256"], hmac_secret=SECRET, jwks_file=path
    )
    pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = f"{b64({'alg': 'HS256', 'kid': 'k1'})}.{b64(claims())}"
    mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    with pytest.raises(InvalidTokenError, match="Signature"):
        JwtVerifier(settings=settings).verify(token, now_ms=NOW_MS)


def test_an_unknown_kid_is_refused_until_the_jwks_file_has_it(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    path = jwks(tmp_path / "jwks.json", ("k1", rsa_key))
    verifier = JwtVerifier(settings=JwtSettings(enabled=True, jwks_file=path))
    rotated = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = rs256(rotated, kid="k2")
    with pytest.raises(InvalidTokenError, match="`k2` is not known"):
        verifier.verify(token, now_ms=NOW_MS)
    jwks(path, ("k1", rsa_key), ("k2", rotated))  # the IdP rotated its keys
    assert verifier.verify(token, now_ms=NOW_MS).subject == "alice"
    assert verifier.verify(rs256(rsa_key, kid="k1"), now_ms=NOW_MS).subject == "alice"
    with pytest.raises(InvalidTokenError):  # two keys now: a token must say which
        verifier.verify(rs256(rsa_key, kid=None), now_ms=NOW_MS)


def test_a_token_without_kid_uses_the_only_key(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    path = jwks(tmp_path / "jwks.json", ("k1", rsa_key))
    verifier = JwtVerifier(settings=JwtSettings(enabled=True, jwks_file=path))
    assert verifier.verify(rs256(rsa_key, kid=None), now_ms=NOW_MS).subject == "alice"


@pytest.mark.parametrize("token", ["a.b.c", "x" * 9000, "...", "e30.e30.e30"])
def test_garbage_is_an_invalid_token(hmac_verifier: JwtVerifier, token: str) -> None:
    with pytest.raises(InvalidTokenError):
        hmac_verifier.verify(token, now_ms=NOW_MS)


def test_settings_need_keys_for_their_algorithms(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="hmac_secret"):
        JwtSettings(enabled=True, algorithms=["HS256"])
    with pytest.raises(ValidationError, match="hmac_secret"):
        JwtSettings(enabled=True, algorithms=["HS256"], hmac_secret=SecretStr("short"))
    with pytest.raises(ValidationError, match="jwks_file"):
        JwtSettings(enabled=True, algorithms=["RS256"])
    with pytest.raises(ValidationError):
        JwtSettings(enabled=True, algorithms=["none"])
    JwtSettings(algorithms=["RS256"])  # disabled: nothing required


@pytest.mark.parametrize("content", ["not json", '{"keys": []}', '{"nokeys": 1}', "[]"])
def test_an_unusable_jwks_file_fails_at_start(tmp_path: Path, content: str) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(content)
    with pytest.raises(ConfigurationError):
        JwtVerifier(settings=JwtSettings(enabled=True, jwks_file=path))


def test_the_registry_authenticates_jwts_through_the_verifier() -> None:
    settings = AuthSettings(
        jwt=JwtSettings(enabled=True, algorithms=["HS256"], hmac_secret=SecretStr(SECRET))
    )
    registry = IdentityRegistry(
        settings=settings,
        hasher=Argon2SecretHasher(time_cost=1, memory_kib=64, parallelism=1),
        token_verifier=JwtVerifier(settings=settings.jwt),
    )
    registry.apply(
        TenantRecord(
            **identity_envelope("acme", producer="t"), name="acme", status="active", revision=1
        )
    )
    now_ms = int(time.time() * 1000)
    token = jwt.encode(claims(exp=now_ms // 1000 + 60), SECRET, algorithm="HS256")
    principal = registry.authenticate(token, now_ms=now_ms)
    assert (principal.api_key_id, principal.tenant_id, principal.method) == (
        "jwt:alice",
        "acme",
        "jwt",
    )
