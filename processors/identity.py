"""Identity: who is calling. Folds the key registry and turns a bearer token into a Principal.

The registry is event-sourced: `ApiKeyRecord`, `TenantRecord` and `PolicyRecord` on the
compacted topic `sg.identity` (keys `key:<key_id>`, `tenant:<tenant_id>`, `policy:<tenant_id>`,
see `record_key`). Every process folds the whole topic into an `IdentityRegistry` with `apply`;
per record key the highest `revision` wins (ties broken by `occurred_at`, then `event_id`, so
every process converges on the same state), and re-applying a record changes nothing.

An API key reads `sk-sg-<key_id>_<secret>`: `key_id` is 12 alphanumeric characters (the lookup
key, and `api_key_id` on events), the secret 43 url-safe characters (256 bits). Only an argon2id
hash of the secret is stored. argon2 is slow by design (tens of ms), so after one successful
verification the registry keeps `keyed BLAKE2b(token) -> Principal` in a bounded LRU with a TTL;
the digest key is random per process, so the cache holds no token. A cached principal is
re-validated on every hit against the current revision of its key and tenant, and any new
record of either evicts it: a revocation, rotation or tenant change is effective as soon as
its record is folded.

A bearer token with two dots is a JWT when a `TokenVerifier` is configured
(connectors/jwt_verifier.py); its principal has no key_id and `api_key_id` is `jwt:<sub>`.
Its claims exist only at the bridge, so the bridge journals what it verified
(`journaled_principal` → `RequestReceived.principal`) and admission rebuilds the principal from
that with the same `token_principal` (processors/enrichment.py says why that is safe).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import string
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeAlias, TypeVar

import yaml
from pydantic import TypeAdapter, ValidationError

from sluicegate.errors import (
    ExpiredCredentialsError,
    MalformedCredentialsError,
    MissingCredentialsError,
    RevokedKeyError,
    TenantDisabledError,
    UnknownKeyError,
)
from sluicegate.processors.envelope import origin_envelope
from sluicegate.schemas.models import (
    ApiKeyRecord,
    IdentityLimits,
    PolicyRecord,
    TenantRecord,
    VerifiedPrincipal,
)
from sluicegate.settings import AccessRule, AuthSettings, LimitRule

if TYPE_CHECKING:
    from sluicegate.connectors.key_hashing import SecretHasher

log = logging.getLogger(__name__)

IdentityRecord: TypeAlias = ApiKeyRecord | TenantRecord | PolicyRecord
_R = TypeVar("_R", ApiKeyRecord, TenantRecord, PolicyRecord)
AuthMethod = Literal["api_key", "jwt", "anonymous"]

ACTIVE, REVOKED, DISABLED = "active", "revoked", "disabled"
KEY_ID_LENGTH = 12
_KEY_ID_ALPHABET = string.ascii_letters + string.digits
_SECRET_ALPHABET = frozenset(string.ascii_letters + string.digits + "-_")
_MIN_SECRET_CHARS = 43  # token_urlsafe(32): 256 bits
_MAX_TOKEN_CHARS = 8192
_GLOB_CHARS = frozenset("*?[")
# Tenant ids: partition keys, topic-key parts and URL segments, so a conservative alphabet.
TENANT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


# -- keys ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A freshly made key. `token` is shown to its owner once and never stored."""

    key_id: str
    secret: str = field(repr=False)
    token: str = field(repr=False)


def issue_key(prefix: str) -> IssuedKey:
    key_id = "".join(secrets.choice(_KEY_ID_ALPHABET) for _ in range(KEY_ID_LENGTH))
    secret = secrets.token_urlsafe(32)
    return IssuedKey(key_id=key_id, secret=secret, token=f"{prefix}{key_id}_{secret}")


def parse_key(token: str, prefix: str) -> tuple[str, str] | None:
    """(key_id, secret) of a well-formed key, else None. The key_id has a fixed length, so the
    `_` separator is unambiguous even though the secret's alphabet contains `_`."""
    if not token.startswith(prefix):
        return None
    body = token[len(prefix) :]
    key_id, secret = body[:KEY_ID_LENGTH], body[KEY_ID_LENGTH + 1 :]
    if body[KEY_ID_LENGTH : KEY_ID_LENGTH + 1] != "_" or len(secret) < _MIN_SECRET_CHARS:
        return None
    if not key_id.isascii() or not key_id.isalnum() or not set(secret) <= _SECRET_ALPHABET:
        return None
    return key_id, secret


def token_from_headers(headers: Mapping[str, str]) -> str | None:
    """The caller's credential: `Authorization: Bearer …`, else `api-key` (Azure OpenAI
    clients) or `x-api-key` (Anthropic clients). None when there is none."""
    authorization = headers.get("Authorization", "").strip()
    if authorization:
        scheme, _, value = authorization.partition(" ")
        return value.strip() if scheme.lower() == "bearer" and value.strip() else authorization
    for name in ("api-key", "x-api-key"):
        value = headers.get(name, "").strip()
        if value:
            return value
    return None


# -- principals ------------------------------------------------------------------------------


def within(name: str, patterns: tuple[str, ...]) -> bool:
    """Whether `name` is one of `patterns` (exact names or globs); an empty list allows all."""
    if not patterns or name in patterns:
        return True
    return any(_GLOB_CHARS & set(p) and fnmatchcase(name, p) for p in patterns)


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller. Model and knowledge-base access is the intersection of the
    key's (or token's) list and the tenant's; an empty list means no restriction at that
    level. Entries may be globs (`gpt-4o*`). `attributes` are the key's (or token's) with the
    tenant's on top: what an operator set on the tenant, a tenant admin cannot override."""

    tenant_id: str
    subject: str  # the key_id, or the JWT subject
    method: AuthMethod
    roles: frozenset[str]
    key_id: str | None = None
    name: str = ""
    key_models: tuple[str, ...] = ()
    tenant_models: tuple[str, ...] = ()
    key_knowledge_bases: tuple[str, ...] = ()
    tenant_knowledge_bases: tuple[str, ...] = ()
    attributes: Mapping[str, str] = field(default_factory=dict)
    limits: IdentityLimits | None = None
    tenant_limits: IdentityLimits | None = None
    expires_at_ms: int | None = None

    @property
    def api_key_id(self) -> str:
        """What events carry as `api_key_id`: the key_id, `jwt:<sub>`, or `anonymous`."""
        if self.key_id is not None:
            return self.key_id
        return f"jwt:{self.subject}" if self.method == "jwt" else "anonymous"

    def may_use_model(self, model: str) -> bool:
        return within(model, self.key_models) and within(model, self.tenant_models)

    def may_read_knowledge_base(self, name: str) -> bool:
        return within(name, self.key_knowledge_bases) and within(name, self.tenant_knowledge_bases)

    def describe(self) -> dict[str, Any]:
        """A JSON-able view (no secrets), e.g. for `whoami`."""
        return {
            "tenant_id": self.tenant_id,
            "subject": self.subject,
            "method": self.method,
            "api_key_id": self.api_key_id,
            "key_id": self.key_id,
            "name": self.name,
            "roles": sorted(self.roles),
            "allowed_models": list(self.key_models),
            "tenant_allowed_models": list(self.tenant_models),
            "allowed_knowledge_bases": list(self.key_knowledge_bases),
            "tenant_allowed_knowledge_bases": list(self.tenant_knowledge_bases),
            "attributes": dict(self.attributes),
            "expires_at_ms": self.expires_at_ms,
        }


def key_principal(record: ApiKeyRecord, tenant: TenantRecord) -> Principal:
    """The principal an API key stands for, from its record and its tenant's."""
    return Principal(
        tenant_id=record.tenant_id,
        subject=record.key_id,
        method="api_key",
        roles=frozenset(record.roles),
        key_id=record.key_id,
        name=record.name,
        key_models=tuple(record.allowed_models),
        tenant_models=tuple(tenant.allowed_models),
        key_knowledge_bases=tuple(record.allowed_knowledge_bases),
        tenant_knowledge_bases=tuple(tenant.allowed_knowledge_bases),
        attributes={**record.attributes, **tenant.attributes},
        limits=record.limits,
        tenant_limits=tenant.limits,
        expires_at_ms=record.expires_at_ms,
    )


def limit_rule(limits: IdentityLimits | None) -> LimitRule | None:
    """The limits of a key or tenant record as the limiter's rule; None when unset."""
    if limits is None:
        return None
    return LimitRule(**limits.model_dump())


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """What a verified bearer token (JWT) says about its caller."""

    subject: str
    tenant_id: str
    roles: frozenset[str]
    attributes: Mapping[str, str] = field(default_factory=dict)
    allowed_models: tuple[str, ...] = ()
    expires_at_ms: int | None = None


class TokenVerifier(Protocol):
    """Verifies a bearer token that is not an API key. Raises AuthenticationError."""

    def verify(self, token: str, *, now_ms: int) -> TokenClaims: ...


def token_principal(claims: TokenClaims, tenant: TenantRecord | None) -> Principal:
    """The principal a verified token stands for: its claims, with its tenant's model and
    knowledge-base lists and the tenant's attributes on top (when the tenant is known). One
    construction for the bridge (from the token) and admission (from the journaled facts)."""
    return Principal(
        tenant_id=claims.tenant_id,
        subject=claims.subject,
        method="jwt",
        roles=claims.roles,
        key_models=claims.allowed_models,
        tenant_models=tuple(tenant.allowed_models) if tenant else (),
        tenant_knowledge_bases=tuple(tenant.allowed_knowledge_bases) if tenant else (),
        attributes={**claims.attributes, **(tenant.attributes if tenant else {})},
        tenant_limits=tenant.limits if tenant else None,
        expires_at_ms=claims.expires_at_ms,
    )


def journaled_principal(principal: Principal) -> VerifiedPrincipal | None:
    """What the bridge journals of its caller on `RequestReceived.principal`: the verified
    facts of a JWT caller (never the token), which no later stage could know otherwise; None
    for an API key (admission rebuilds it from sg.identity, as it is *now*) and for anonymous
    callers."""
    if principal.method != "jwt":
        return None
    return VerifiedPrincipal(
        method="jwt",
        tenant_id=principal.tenant_id,
        subject=principal.subject,
        roles=sorted(principal.roles),
        attributes=dict(principal.attributes),
        allowed_models=list(principal.key_models),
        expires_at_ms=principal.expires_at_ms,
    )


def journaled_claims(facts: VerifiedPrincipal) -> TokenClaims:
    """The claims a journaled principal stands for (the inverse of `journaled_principal`)."""
    return TokenClaims(
        subject=facts.subject,
        tenant_id=facts.tenant_id,
        roles=frozenset(facts.roles),
        attributes=dict(facts.attributes),
        allowed_models=tuple(facts.allowed_models),
        expires_at_ms=facts.expires_at_ms,
    )


# -- records ---------------------------------------------------------------------------------


def identity_envelope(tenant_id: str, *, producer: str) -> dict[str, Any]:
    """Envelope of an identity record: the owning tenant, a request and trace of its own."""
    return origin_envelope(tenant_id, producer=producer)


def record_key(record: IdentityRecord) -> str:
    """The Kafka key of a record on the compacted identity topic."""
    if isinstance(record, ApiKeyRecord):
        return f"key:{record.key_id}"
    if isinstance(record, TenantRecord):
        return f"tenant:{record.tenant_id}"
    return f"policy:{record.tenant_id}"


def revised(record: _R, *, producer: str, **changes: Any) -> _R:
    """The next revision of `record` with `changes`, under a fresh envelope."""
    data = record.model_dump()
    data.update(identity_envelope(record.tenant_id, producer=producer))
    data.update(changes, revision=record.revision + 1)
    return type(record).model_validate(data)


def policy_version(policy_yaml: str) -> str:
    return f"sha256:{hashlib.sha256(policy_yaml.encode()).hexdigest()[:16]}"


_RULES = TypeAdapter(list[AccessRule])


class _PolicyLoader(yaml.SafeLoader):
    """SafeLoader without aliases: `*refs` nested in a few kilobytes expand to billions of
    nodes for whoever walks the document (a "billion laughs"); a policy needs none."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError("aliases (*name) are not allowed in a policy")
        return super().compose_node(parent, index)


def policy_access_rules(policy_yaml: str) -> tuple[AccessRule, ...]:
    """The ABAC rules of a tenant policy document: its optional `access` list. Raises
    ValueError (with a message for the caller) if the text is not a YAML mapping or the
    rules are invalid; every other key of the document is left to its own consumers."""
    try:
        document = yaml.load(policy_yaml, Loader=_PolicyLoader)  # a SafeLoader
    except yaml.YAMLError as error:
        raise ValueError(f"not valid YAML: {error}") from error
    except RecursionError as error:
        raise ValueError("YAML nested too deeply") from error
    if not isinstance(document, dict):
        raise ValueError("the policy document must be a YAML mapping")
    try:
        return tuple(_RULES.validate_python(document.get("access") or []))
    except ValidationError as error:
        raise ValueError(f"invalid `access` rules: {error}") from error


def new_tenant(tenant_id: str, *, producer: str, name: str = "") -> TenantRecord:
    return TenantRecord(
        **identity_envelope(tenant_id, producer=producer),
        name=name or tenant_id,
        status=ACTIVE,
        revision=1,
    )


def new_key(
    *,
    settings: AuthSettings,
    hasher: SecretHasher,
    tenant_id: str,
    now_ms: int,
    producer: str,
    name: str = "",
    roles: Iterable[str] = ("developer",),
    allowed_models: Iterable[str] = (),
    limits: IdentityLimits | None = None,
    expires_at_ms: int | None = None,
    issued: IssuedKey | None = None,
) -> tuple[ApiKeyRecord, IssuedKey]:
    """A new active key for `tenant_id` (`issued`, or a fresh one); show `issued.token` to its
    owner once, publish the record (only the secret's hash is in it)."""
    issued = issued or issue_key(settings.key_prefix)
    record = ApiKeyRecord(
        **identity_envelope(tenant_id, producer=producer),
        key_id=issued.key_id,
        name=name,
        secret_hash=hasher.hash(issued.secret),
        roles=list(dict.fromkeys(roles)),
        allowed_models=list(allowed_models),
        limits=limits,
        status=ACTIVE,
        created_at_ms=now_ms,
        expires_at_ms=expires_at_ms,
        revision=1,
    )
    return record, issued


def bootstrap_records(
    *, settings: AuthSettings, hasher: SecretHasher, now_ms: int, producer: str = "bootstrap"
) -> tuple[list[IdentityRecord], IssuedKey]:
    """A first tenant and a key for it (settings `bootstrap_*`), for `sluicegate up` on an
    empty registry; print `issued.token` once and publish the records."""
    tenant = new_tenant(settings.bootstrap_tenant, producer=producer)
    key, issued = new_key(
        settings=settings,
        hasher=hasher,
        tenant_id=settings.bootstrap_tenant,
        now_ms=now_ms,
        producer=producer,
        name="bootstrap",
        roles=settings.bootstrap_roles,
    )
    return [tenant, key], issued


# -- the registry ----------------------------------------------------------------------------


def _order(record: IdentityRecord) -> tuple[int, Any, str]:
    return (record.revision, record.occurred_at, record.event_id)


@dataclass(slots=True)
class _Cached:
    principal: Principal
    key_order: tuple[int, Any, str] | None
    tenant_order: tuple[int, Any, str] | None
    valid_until_ms: int


@dataclass(slots=True)
class _Attempt:
    """An API key that needs its secret checked against the stored hash."""

    digest: bytes
    record: ApiKeyRecord
    tenant: TenantRecord
    secret: str


@dataclass(slots=True)
class RegistryStats:
    cache_hits: int = 0
    cache_misses: int = 0
    secret_verifications: int = 0
    failures: int = 0


class IdentityRegistry:
    """The folded identity topic and the authentication of bearer tokens.

    Thread-safe: records may be applied from a reader thread while the event loop
    authenticates.
    """

    def __init__(
        self,
        *,
        settings: AuthSettings,
        hasher: SecretHasher,
        token_verifier: TokenVerifier | None = None,
        anonymous_tenant: str = "default",
    ) -> None:
        self._settings = settings
        self._hasher = hasher
        self._verifier = token_verifier
        self._anonymous_tenant = anonymous_tenant
        self._keys: dict[str, ApiKeyRecord] = {}
        self._tenants: dict[str, TenantRecord] = {}
        self._policies: dict[str, PolicyRecord] = {}
        self._rules: dict[str, tuple[AccessRule, ...]] = {}
        self._lock = threading.RLock()
        self._digest_key = secrets.token_bytes(32)
        self._cache: OrderedDict[bytes, _Cached] = OrderedDict()
        self._failed: OrderedDict[bytes, int] = OrderedDict()
        self._by_key: dict[str, set[bytes]] = {}
        self._by_tenant: dict[str, set[bytes]] = {}
        self._pending: dict[bytes, asyncio.Future[bool]] = {}
        self.stats = RegistryStats()

    # -- the fold ------------------------------------------------------------------------------

    def apply(self, record: IdentityRecord) -> bool:
        """Fold one record; True if it changed the state (False: older or already applied)."""
        with self._lock:
            if isinstance(record, ApiKeyRecord):
                table: dict[str, Any] = self._keys
                ident = record.key_id
            elif isinstance(record, TenantRecord):
                table, ident = self._tenants, record.tenant_id
            elif isinstance(record, PolicyRecord):
                table, ident = self._policies, record.tenant_id
            else:
                raise TypeError(f"not an identity record: {type(record).__name__}")
            current = table.get(ident)
            if current is not None and _order(current) >= _order(record):
                return False
            if isinstance(record, PolicyRecord) and not self._fold_policy(record):
                return False
            table[ident] = record
            if isinstance(record, ApiKeyRecord):
                self._evict(self._by_key.pop(ident, set()))
            elif isinstance(record, TenantRecord):
                self._evict(self._by_tenant.pop(ident, set()))
            return True

    def _fold_policy(self, record: PolicyRecord) -> bool:
        try:
            self._rules[record.tenant_id] = policy_access_rules(record.policy_yaml)
        except ValueError as error:  # the admin API validates; this is a foreign writer
            log.warning("policy %s of %s ignored: %s", record.version, record.tenant_id, error)
            return False
        return True

    def key(self, key_id: str) -> ApiKeyRecord | None:
        return self._keys.get(key_id)

    def keys(self, tenant_id: str | None = None) -> list[ApiKeyRecord]:
        with self._lock:
            found = [k for k in self._keys.values() if tenant_id in (None, k.tenant_id)]
        return sorted(found, key=lambda k: (k.tenant_id, k.created_at_ms, k.key_id))

    def tenant(self, tenant_id: str) -> TenantRecord | None:
        return self._tenants.get(tenant_id)

    def tenants(self) -> list[TenantRecord]:
        with self._lock:
            return sorted(self._tenants.values(), key=lambda t: t.tenant_id)

    def policy(self, tenant_id: str) -> PolicyRecord | None:
        return self._policies.get(tenant_id)

    def key_rule(self, key_id: str) -> LimitRule | None:
        """The limits bound to a key (admission's rate limits and budgets read them here)."""
        record = self._keys.get(key_id)
        return limit_rule(record.limits) if record is not None else None

    def tenant_rule(self, tenant_id: str) -> LimitRule | None:
        record = self._tenants.get(tenant_id)
        return limit_rule(record.limits) if record is not None else None

    def access_rules(self, tenant_id: str) -> tuple[AccessRule, ...]:
        """The ABAC rules of the tenant's policy (none without one)."""
        return self._rules.get(tenant_id, ())

    @property
    def is_empty(self) -> bool:
        """No key and no tenant yet: the moment for `bootstrap_records`."""
        return not self._keys and not self._tenants

    @property
    def cache_size(self) -> int:
        return len(self._cache)

    # -- authentication ------------------------------------------------------------------------

    def authenticate(self, token: str | None, *, now_ms: int) -> Principal:
        """The principal of a bearer token, or an AuthError (see sluicegate/errors.py).

        An uncached API key costs one argon2 verification on the calling thread; on an event
        loop prefer `authenticate_async`.
        """
        attempt = self._begin(token, now_ms)
        if isinstance(attempt, Principal):
            return attempt
        self.stats.secret_verifications += 1
        return self._finish(
            attempt, self._hasher.verify(attempt.record.secret_hash, attempt.secret), now_ms
        )

    async def authenticate_async(
        self, token: str | None, *, now_ms: int, executor: Executor | None = None
    ) -> Principal:
        """`authenticate` with the argon2 verification on `executor` (default: the loop's),
        and one verification for concurrent first uses of the same key."""
        attempt = self._begin(token, now_ms)
        if isinstance(attempt, Principal):
            return attempt
        pending = self._pending.get(attempt.digest)
        if pending is None:
            loop = asyncio.get_running_loop()
            self.stats.secret_verifications += 1
            pending = asyncio.ensure_future(
                loop.run_in_executor(
                    executor, self._hasher.verify, attempt.record.secret_hash, attempt.secret
                )
            )
            self._pending[attempt.digest] = pending
            pending.add_done_callback(lambda _f: self._pending.pop(attempt.digest, None))
        return self._finish(attempt, await asyncio.shield(pending), now_ms)

    def _digest(self, token: str) -> bytes:
        return hashlib.blake2b(token.encode(), key=self._digest_key, digest_size=16).digest()

    def _begin(self, token: str | None, now_ms: int) -> Principal | _Attempt:
        if not token:
            if self._settings.required:
                raise MissingCredentialsError(
                    "You didn't provide an API key. Send it as `Authorization: Bearer <key>`."
                )
            return Principal(
                tenant_id=self._anonymous_tenant,
                subject="anonymous",
                method="anonymous",
                roles=frozenset({"developer"}),
            )
        if len(token) > _MAX_TOKEN_CHARS or not token.isascii():
            raise MalformedCredentialsError("The API key is not in a recognised format.")
        digest = self._digest(token)
        cached = self._cached(digest, now_ms)
        if cached is not None:
            return cached
        self.stats.cache_misses += 1
        parsed = parse_key(token, self._settings.key_prefix)
        if parsed is not None:
            return self._key_attempt(digest, parsed, now_ms)
        if self._verifier is not None and token.count(".") == 2:
            return self._token_principal(digest, token, now_ms)
        raise MalformedCredentialsError("The API key is not in a recognised format.")

    def _cached(self, digest: bytes, now_ms: int) -> Principal | None:
        with self._lock:
            failed_until = self._failed.get(digest)
            if failed_until is not None:
                if failed_until > now_ms:
                    self.stats.failures += 1
                    raise UnknownKeyError("Incorrect API key provided.")
                del self._failed[digest]
            entry = self._cache.get(digest)
            if entry is None:
                return None
            principal = entry.principal
            key = self._keys.get(principal.key_id) if principal.key_id else None
            tenant = self._tenants.get(principal.tenant_id)
            fresh = (
                entry.valid_until_ms > now_ms
                and (key is None) == (entry.key_order is None)
                and (key is None or _order(key) == entry.key_order)
                and (_order(tenant) if tenant else None) == entry.tenant_order
            )
            if not fresh:
                self._drop(digest)
                return None
            self._cache.move_to_end(digest)
            self.stats.cache_hits += 1
            return principal

    def _active_tenant(self, tenant_id: str, *, required: bool = True) -> TenantRecord | None:
        tenant = self._tenants.get(tenant_id)
        if tenant is None and required:
            raise TenantDisabledError(
                f"Tenant `{tenant_id}` is not known to the gateway.", code="tenant_unknown"
            )
        if tenant is not None and tenant.status != ACTIVE:
            raise TenantDisabledError(f"Tenant `{tenant_id}` is disabled.")
        return tenant

    def _key_attempt(self, digest: bytes, parsed: tuple[str, str], now_ms: int) -> _Attempt:
        key_id, secret = parsed
        record = self._keys.get(key_id)
        if record is None:
            self.stats.failures += 1
            raise UnknownKeyError("Incorrect API key provided.")
        # Status before the secret: refusing a revoked or expired key needs no argon2 (and
        # only tells what the key id, which is on events, already tells).
        if record.status != ACTIVE:
            raise RevokedKeyError(f"The API key {key_id} has been revoked.")
        if record.expires_at_ms is not None and record.expires_at_ms <= now_ms:
            raise ExpiredCredentialsError(f"The API key {key_id} has expired.")
        tenant = self._active_tenant(record.tenant_id)
        assert tenant is not None
        return _Attempt(digest=digest, record=record, tenant=tenant, secret=secret)

    def _finish(self, attempt: _Attempt, verified: bool, now_ms: int) -> Principal:
        record, tenant = attempt.record, attempt.tenant
        if not verified:
            self.stats.failures += 1
            if self._settings.failed_cache_ttl_s > 0:
                with self._lock:
                    self._failed[attempt.digest] = now_ms + int(
                        self._settings.failed_cache_ttl_s * 1000
                    )
                    self._failed.move_to_end(attempt.digest)
                    while len(self._failed) > self._settings.cache_max_entries:
                        self._failed.popitem(last=False)
            raise UnknownKeyError("Incorrect API key provided.")
        principal = key_principal(record, tenant)
        self._remember(attempt.digest, principal, record, tenant, now_ms)
        return principal

    def _token_principal(self, digest: bytes, token: str, now_ms: int) -> Principal:
        assert self._verifier is not None
        try:
            claims = self._verifier.verify(token, now_ms=now_ms)
        except Exception:
            self.stats.failures += 1
            raise
        required = self._settings.jwt.require_known_tenant
        tenant = self._active_tenant(claims.tenant_id, required=required)
        principal = token_principal(claims, tenant)
        self._remember(digest, principal, None, tenant, now_ms)
        return principal

    # -- the verified-token cache --------------------------------------------------------------

    def _remember(
        self,
        digest: bytes,
        principal: Principal,
        key: ApiKeyRecord | None,
        tenant: TenantRecord | None,
        now_ms: int,
    ) -> None:
        valid_until = now_ms + int(self._settings.cache_ttl_s * 1000)
        if principal.expires_at_ms is not None:
            valid_until = min(valid_until, principal.expires_at_ms)
        entry = _Cached(
            principal=principal,
            key_order=_order(key) if key else None,
            tenant_order=_order(tenant) if tenant else None,
            valid_until_ms=valid_until,
        )
        with self._lock:
            # A record folded while argon2 ran makes this entry stale: do not keep it.
            if key is not None and self._keys.get(key.key_id) is not key:
                return
            if tenant is not None and self._tenants.get(tenant.tenant_id) is not tenant:
                return
            self._drop(digest)
            self._cache[digest] = entry
            if principal.key_id is not None:
                self._by_key.setdefault(principal.key_id, set()).add(digest)
            self._by_tenant.setdefault(principal.tenant_id, set()).add(digest)
            while len(self._cache) > self._settings.cache_max_entries:
                self._drop(next(iter(self._cache)))

    def _drop(self, digest: bytes) -> None:
        entry = self._cache.pop(digest, None)
        if entry is None:
            return
        if entry.principal.key_id is not None:
            self._by_key.get(entry.principal.key_id, set()).discard(digest)
        self._by_tenant.get(entry.principal.tenant_id, set()).discard(digest)

    def _evict(self, digests: Iterable[bytes]) -> None:
        for digest in list(digests):
            self._drop(digest)
