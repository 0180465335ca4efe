"""`sluicegate keys …` and `sluicegate audit verify`: identity and audit from the command line.

These write to sg.identity directly, as an operator who can reach the broker: that is how the
first admin key comes to exist (`sluicegate up` does it for you on an empty registry), and it
keeps working when no bridge runs. Day-to-day key management for tenants goes through the
bridge's admin API (/admin/v1, OpenAPI at /openapi.json), which also audits every call.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sluicegate.settings import Settings

PRODUCER = "cli"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _registry(settings: Settings) -> Any:
    """The registry as the topic has it now (read to its end, then closed)."""
    from sluicegate.connectors.schema_registry import build_serde
    from sluicegate.streams.identity_view import IdentityView

    view = IdentityView(settings=settings, serde=build_serde(settings))
    view.start()
    view.close()
    return view.registry


def publish_records(settings: Settings, records: list[Any]) -> None:
    """Append identity records in order (keyed by `record_key`); raise if any fails."""
    from sluicegate.cli_kafka import publish_events
    from sluicegate.processors.identity import record_key

    publish_events(settings, "identity", [(record_key(r), r) for r in records])


def key_records(
    settings: Settings,
    *,
    token: str,
    tenant_id: str,
    name: str = "",
    roles: list[str] | None = None,
    models: list[str] | None = None,
    limits: dict[str, Any] | None = None,
    registry: Any = None,
) -> list[Any]:
    """The records that make an issued `token` a key of `tenant_id` (and the tenant, when the
    registry does not know it): only the hash of its secret goes in."""
    from sluicegate.connectors.key_hashing import Argon2SecretHasher
    from sluicegate.processors.identity import IssuedKey, new_key, new_tenant, parse_key
    from sluicegate.schemas.models import IdentityLimits

    parsed = parse_key(token, settings.auth.key_prefix)
    if parsed is None:
        raise ValueError(f"not a key of the form {settings.auth.key_prefix}<key_id>_<secret>")
    records: list[Any] = []
    if registry is None or registry.tenant(tenant_id) is None:
        records.append(new_tenant(tenant_id, producer=PRODUCER))
    key, _ = new_key(
        settings=settings.auth,
        hasher=Argon2SecretHasher.from_settings(settings.auth),
        tenant_id=tenant_id,
        now_ms=_now_ms(),
        producer=PRODUCER,
        name=name,
        roles=roles or ["developer"],
        allowed_models=models or [],
        limits=IdentityLimits(**limits) if limits else None,
        issued=IssuedKey(key_id=parsed[0], secret=parsed[1], token=token),
    )
    return [*records, key]


def mint_key(
    settings: Settings,
    *,
    tenant_id: str,
    name: str = "",
    roles: list[str] | None = None,
    models: list[str] | None = None,
    limits: dict[str, Any] | None = None,
    registry: Any = None,
) -> str:
    """Create a key (and its tenant, when new) on sg.identity; return the token."""
    from sluicegate.processors.identity import issue_key

    registry = registry if registry is not None else _registry(settings)
    token = issue_key(settings.auth.key_prefix).token
    publish_records(
        settings,
        key_records(
            settings,
            token=token,
            tenant_id=tenant_id,
            name=name,
            roles=roles,
            models=models,
            limits=limits,
            registry=registry,
        ),
    )
    return token


def bootstrap_key(settings: Settings, state_dir: Path) -> str | None:
    """On an empty registry (and `auth.bootstrap` on): a development tenant and admin key.

    The token is printed by the caller and kept in `<state_dir>/bootstrap-key` (mode 0600) so a
    newcomer can find it again; None when the registry already has keys.
    """
    from sluicegate.connectors.key_hashing import Argon2SecretHasher
    from sluicegate.processors.identity import bootstrap_records

    if not (settings.auth.required and settings.auth.bootstrap):
        return None
    if not _registry(settings).is_empty:
        saved = state_dir / "bootstrap-key"
        return saved.read_text().strip() if saved.exists() else None
    records, issued = bootstrap_records(
        settings=settings.auth,
        hasher=Argon2SecretHasher.from_settings(settings.auth),
        now_ms=_now_ms(),
        producer=PRODUCER,
    )
    publish_records(settings, records)
    saved = state_dir / "bootstrap-key"
    saved.write_text(issued.token + "\n")
    os.chmod(saved, 0o600)
    return issued.token


def cmd_keys(settings: Settings, args: argparse.Namespace) -> int:
    from sluicegate.processors.identity import REVOKED, revised

    if args.action == "create":
        limits = {
            name: value
            for name, value in (
                ("requests_per_minute", args.rpm),
                ("tokens_per_minute", args.tpm),
                ("usd_per_day", args.usd_per_day),
            )
            if value is not None
        }
        token = mint_key(
            settings,
            tenant_id=args.tenant,
            name=args.name,
            roles=args.role,
            models=args.model,
            limits=limits,
        )
        print(token)
        print("(shown once: only its hash is stored)", file=sys.stderr)
        return 0
    registry = _registry(settings)
    if args.action == "list":
        for key in registry.keys(args.tenant):
            print(
                "\t".join(
                    [key.key_id, key.tenant_id, key.status, ",".join(key.roles), key.name or "-"]
                )
            )
        return 0
    key = registry.key(args.key_id)
    if key is None:
        print(f"no key {args.key_id}", file=sys.stderr)
        return 1
    if args.action == "revoke":
        publish_records(settings, [revised(key, producer=PRODUCER, status=REVOKED)])
        print(f"revoked {key.key_id}")
        return 0
    # rotate: a new key with the same grants; the old one is revoked
    token = mint_key(
        settings,
        tenant_id=key.tenant_id,
        name=key.name,
        roles=list(key.roles),
        models=list(key.allowed_models),
        limits=key.limits.model_dump() if key.limits is not None else None,
        registry=registry,
    )
    publish_records(settings, [revised(key, producer=PRODUCER, status=REVOKED)])
    print(token)
    print(f"(replaces {key.key_id}, now revoked; shown once)", file=sys.stderr)
    return 0


def cmd_audit(settings: Settings, args: argparse.Namespace) -> int:
    """Read sg.audit from the beginning and check every tenant's hash chain."""
    from sluicegate.connectors.schema_registry import build_serde
    from sluicegate.processors.audit import verify_chain
    from sluicegate.schemas.models import AuditRecord
    from sluicegate.streams.compacted import CompactedTopicReader

    serde = build_serde(settings)
    values: list[bytes] = []
    # Reads every partition to its end (a tenant's chain is one partition, in order).
    reader = CompactedTopicReader(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        topic=settings.topic("audit"),
        on_record=values.append,
    )
    reader.start()
    reader.close()
    records = [serde.decode_as(value, AuditRecord) for value in values]
    if args.tenant:
        records = [r for r in records if r.tenant_id == args.tenant]
    checked, breaks = verify_chain(records)
    for item in breaks:
        print(f"BROKEN {item.tenant_id} {item.event_id}: {item.reason}")
    tenants = len({r.tenant_id for r in records})
    print(f"{checked} records, {tenants} tenants, {len(breaks)} breaks")
    return 1 if breaks else 0


def add_parsers(sub: Any) -> dict[str, Callable[[Settings, argparse.Namespace], int]]:
    keys = sub.add_parser("keys", help="create, list, rotate or revoke API keys (operator)")
    keys_sub = keys.add_subparsers(dest="action", required=True)
    create = keys_sub.add_parser("create", help="a new key; prints its token once")
    create.add_argument("--tenant", required=True)
    create.add_argument("--name", default="")
    create.add_argument("--role", action="append", help="admin, developer, viewer, service")
    create.add_argument("--model", action="append", help="allowed model alias (repeat)")
    create.add_argument("--rpm", type=int, help="requests per minute")
    create.add_argument("--tpm", type=int, help="tokens per minute")
    create.add_argument("--usd-per-day", type=float)
    keys_sub.add_parser("list", help="key id, tenant, status, roles, name").add_argument("--tenant")
    keys_sub.add_parser("revoke", help="revoke a key at once").add_argument("key_id")
    keys_sub.add_parser("rotate", help="a new token, the old one revoked").add_argument("key_id")
    audit = sub.add_parser("audit", help="verify the audit trail's hash chains")
    audit_sub = audit.add_subparsers(dest="action", required=True)
    audit_sub.add_parser("verify", help="check every link").add_argument("--tenant")
    return {"keys": cmd_keys, "audit": cmd_audit}
