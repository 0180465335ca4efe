"""JWT bearer tokens (PyJWT): HS* with a shared secret, RS/PS/ES with keys from a JWKS file.

The accepted algorithms are the configured ones, never the token's own choice: `alg=none` and
any algorithm not configured are refused before a key is even looked up, and the key comes from
the algorithm's family (the HMAC secret for HS*, the JWKS for the others), so a token cannot
make a public key serve as an HMAC secret. `exp` is required; `exp` and `nbf` are checked
against the caller's clock with `leeway_s`; `aud` and `iss` against the configured values (a
token that carries an `aud` is refused unless an audience is configured).

Claims map to the caller (`auth.jwt.*_claim`): subject, tenant, roles (a list, or a string of
space- or comma-separated names), optional allowed models and attributes. A claim name is looked
up as it is first, then as a dotted path into nested objects (`realm_access.roles`).

The JWKS file is read at start and read again when a token names a `kid` it does not hold and
the file has changed since, so a key rotation needs no restart.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from jwt import PyJWK

from sluicegate.errors import ConfigurationError, ExpiredCredentialsError, InvalidTokenError
from sluicegate.processors.identity import TENANT_ID_PATTERN, TokenClaims
from sluicegate.settings import JwtSettings

log = logging.getLogger(__name__)

TENANT_ID = re.compile(TENANT_ID_PATTERN)
_KEY_TYPES = {"RS": ("RSA",), "PS": ("RSA",), "ES": ("EC",)}
_MAX_SUBJECT = 256


@dataclass(frozen=True, slots=True)
class _Key:
    jwk: PyJWK
    kty: str | None
    alg: str | None


def claim(claims: dict[str, Any], name: str) -> Any:
    """`claims[name]`, else the value at the dotted path `name` into nested objects."""
    if name in claims:
        return claims[name]
    value: Any = claims
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _names(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(n for n in re.split(r"[\s,]+", value) if n)
    if isinstance(value, list):
        return tuple(v for v in value if isinstance(v, str) and v)
    return ()


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class JwtVerifier:
    """A `TokenVerifier` (processors/identity.py) for JWTs."""

    def __init__(self, *, settings: JwtSettings) -> None:
        self._settings = settings
        secret = settings.hmac_secret
        self._hmac_key = secret.get_secret_value().encode() if secret is not None else None
        self._jwks: dict[str | None, _Key] = {}
        self._jwks_stamp: tuple[float, int] | None = None
        self._lock = threading.Lock()
        if settings.jwks_file is not None:
            try:
                self._load_jwks()
            except (OSError, ValueError, jwt.PyJWTError) as error:
                raise ConfigurationError(f"auth.jwt.jwks_file: {error}") from error

    # -- keys ----------------------------------------------------------------------------------

    def _stamp(self, path: Path) -> tuple[float, int]:
        stat = path.stat()
        return (stat.st_mtime, stat.st_size)

    def _load_jwks(self) -> None:
        path = self._settings.jwks_file
        assert path is not None
        path = path.expanduser()
        stamp = self._stamp(path)
        document = json.loads(path.read_text())
        raw_keys = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(raw_keys, list):
            raise ValueError("a JWKS is a JSON object with a `keys` list")
        keys: list[_Key] = []
        for raw in raw_keys:
            if not isinstance(raw, dict) or raw.get("use", "sig") != "sig":
                continue
            try:
                keys.append(_Key(PyJWK(raw), raw.get("kty"), raw.get("alg")))
            except jwt.PyJWTError as error:
                log.warning("JWKS %s: key %s skipped: %s", path, raw.get("kid"), error)
        if not keys:
            raise ValueError("the JWKS holds no usable signing key")
        by_kid: dict[str | None, _Key] = {k.jwk.key_id: k for k in keys}
        if len(keys) == 1:
            by_kid.setdefault(None, keys[0])  # a token without `kid` may use the only key
        self._jwks, self._jwks_stamp = by_kid, stamp

    def _reload_if_changed(self) -> None:
        path = self._settings.jwks_file
        if path is None:
            return
        with self._lock:
            try:
                if self._stamp(path.expanduser()) != self._jwks_stamp:
                    self._load_jwks()
                    log.info("reloaded JWKS %s (%d keys)", path, len(self._jwks))
            except (OSError, ValueError, jwt.PyJWTError) as error:
                log.warning("JWKS %s not reloaded, keeping the previous keys: %s", path, error)

    def _key_for(self, alg: str, kid: Any) -> Any:
        if alg.startswith("HS"):
            if self._hmac_key is None:
                raise InvalidTokenError(f"No key is configured for {alg} tokens.")
            return self._hmac_key
        if kid is not None and not isinstance(kid, str):
            raise InvalidTokenError("The token's `kid` is not a string.")
        jwk = self._jwks.get(kid)
        if jwk is None:
            self._reload_if_changed()
            jwk = self._jwks.get(kid)
        if jwk is None:
            raise InvalidTokenError(f"The token's signing key `{kid}` is not known.")
        if jwk.kty not in _KEY_TYPES.get(alg[:2], ()) or (jwk.alg and jwk.alg != alg):
            raise InvalidTokenError(f"The key `{kid}` cannot verify {alg} tokens.")
        return jwk.jwk.key

    # -- verification --------------------------------------------------------------------------

    def verify(self, token: str, *, now_ms: int) -> TokenClaims:
        settings = self._settings
        if len(token) > settings.max_token_bytes:
            raise InvalidTokenError("The token is too large.")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as error:
            raise InvalidTokenError(f"The token is not a valid JWT: {error}") from error
        alg = header.get("alg")
        if alg not in settings.algorithms:
            raise InvalidTokenError(f"Tokens signed with {alg!r} are not accepted.")
        key = self._key_for(alg, header.get("kid"))
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=settings.audience,
                issuer=settings.issuer,
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
            )
        except jwt.PyJWTError as error:
            raise InvalidTokenError(f"The token was refused: {error}") from error
        return self._claims(claims, now_ms / 1000)

    def _claims(self, claims: dict[str, Any], now_s: float) -> TokenClaims:
        settings = self._settings
        exp = _number(claims.get("exp"))
        if exp is None:
            raise InvalidTokenError("The token has no valid `exp` claim.")
        if now_s > exp + settings.leeway_s:
            raise ExpiredCredentialsError("The token has expired.", code="expired_token")
        if "nbf" in claims:
            not_before = _number(claims["nbf"])
            if not_before is None or not_before > now_s + settings.leeway_s:
                raise InvalidTokenError("The token is not valid yet.")
        subject = claim(claims, settings.subject_claim)
        if not isinstance(subject, str) or not subject or len(subject) > _MAX_SUBJECT:
            raise InvalidTokenError(f"The token has no valid `{settings.subject_claim}` claim.")
        tenant = claim(claims, settings.tenant_claim)
        if not isinstance(tenant, str) or not TENANT_ID.match(tenant):
            raise InvalidTokenError(f"The token has no valid `{settings.tenant_claim}` claim.")
        attributes = {}
        for attribute, name in settings.attribute_claims.items():
            value = claim(claims, name)
            if isinstance(value, str | int | float | bool):
                attributes[attribute] = (
                    str(value).lower() if isinstance(value, bool) else str(value)
                )
        models = _names(claim(claims, settings.models_claim)) if settings.models_claim else ()
        return TokenClaims(
            subject=subject,
            tenant_id=tenant,
            roles=frozenset(_names(claim(claims, settings.roles_claim))),
            attributes=attributes,
            allowed_models=models,
            expires_at_ms=int(exp * 1000),
        )
