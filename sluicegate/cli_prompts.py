"""`sluicegate prompts …`: the prompt registry (sg.prompts) from the command line.

    sluicegate prompts create support.yaml --tenant acme      # version 1 (fails if it exists)
    sluicegate prompts update support.yaml --tenant acme      # the next version, semver bumped
    sluicegate prompts list [NAME]                            # prompts, or one prompt's versions
    sluicegate prompts show support@prod                      # one version as JSON
    sluicegate prompts diff support 3 prod                    # unified diff, field by field
    sluicegate prompts label support prod 4                   # move a label
    sluicegate prompts rollback support [--label prod] [--to 2]
    sluicegate prompts render support@prod --var question='Why?' --message user:Hi   # dry run

Like `sluicegate keys`, this is the operator's tool: it reads the whole topic (a PromptView
started, read to the end, stopped) and publishes directly, with the tenant named by
`--tenant`. Tenants manage their own prompts through the admin API (serving/prompts_api.py),
which authenticates and audits. The YAML format is in docs/prompts.md, examples in
examples/prompts/. Exit status: 0 done, 1 refused by the registry (the error's code is
printed), 2 a bad file or argument.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sluicegate.settings import Settings

PRODUCER = "cli"


class UsageError(Exception):
    """A file or an argument that cannot be used (exit status 2)."""


def load_spec(path: Path) -> Any:
    """A PromptSpec from a YAML (or JSON) prompt file."""
    import yaml
    from pydantic import ValidationError

    from sluicegate.processors.prompt_registry import PromptSpec

    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise UsageError(f"{path}: {error}") from None
    if not isinstance(raw, dict):
        raise UsageError(f"{path}: a prompt file is a YAML mapping (name, kind, template, …)")
    try:
        return PromptSpec.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in error.errors()[:5]
        )
        raise UsageError(f"{path}: {problems}") from None


def parse_vars(pairs: Sequence[str], declared: Mapping[str, Any]) -> dict[str, Any]:
    """`--var k=v` pairs, typed by the declarations: a string variable takes the text as it
    is, any other type parses it as JSON (`--var n=3`, `--var tags='["a"]'`)."""
    values: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise UsageError(f"--var wants name=value, got {pair!r}")
        spec = declared.get(name)
        if spec is None or spec.type == "string":
            values[name] = raw
            continue
        try:
            values[name] = json.loads(raw)
        except ValueError:
            values[name] = raw  # validation names the variable and the type it wants
    return values


def parse_messages(pairs: Sequence[str]) -> list[dict[str, str]]:
    """`--message role:content` pairs, in order."""
    messages = []
    for pair in pairs:
        role, sep, content = pair.partition(":")
        if not sep or role not in ("system", "user", "assistant"):
            raise UsageError(f"--message wants system|user|assistant:text, got {pair!r}")
        messages.append({"role": role, "content": content})
    return messages


def read_registry(settings: Settings) -> Any:
    """The registry as sg.prompts has it now (read to its end, then the view is stopped)."""
    from sluicegate.connectors.schema_registry import build_serde
    from sluicegate.streams.prompt_view import PromptView
    from sluicegate.streams.topics import ensure_topics

    ensure_topics(settings)
    view = PromptView(settings=settings, serde=build_serde(settings))
    view.start()
    view.stop()
    return view.registry


def publish_versions(settings: Settings, events: Sequence[Any]) -> None:
    """Append prompt records (keyed by `prompt_key`) and wait for the broker's acks."""
    from sluicegate.cli_kafka import publish_events
    from sluicegate.processors.prompt_registry import prompt_key

    publish_events(settings, "prompts", [(prompt_key(e), e) for e in events])


def _author(args: argparse.Namespace) -> str:
    if args.author:
        return str(args.author)
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return PRODUCER


def _summary(event: Any) -> dict[str, Any]:
    return {
        "prompt_ref": f"{event.prompt_name}@{event.version}",
        "tenant": event.tenant_id,
        "version": event.version,
        "semver": event.semver,
        "labels": list(event.labels),
    }


# -- the commands --------------------------------------------------------------------------------


def _publish(settings: Settings, args: argparse.Namespace, registry: Any) -> dict[str, Any]:
    from sluicegate.processors.prompt_registry import PromptNotFoundError

    spec = load_spec(Path(args.file))
    exists = registry.exists(args.tenant, spec.name)
    if args.action == "create" and exists:
        raise UsageError(f"`{spec.name}` exists; publish its next version with `prompts update`")
    if args.action == "update" and not exists:
        raise PromptNotFoundError(f"No prompt `{spec.name}`; create it with `prompts create`.")
    fields = spec.publish_fields()
    fields["author"] = fields["author"] or _author(args)
    fields["bump"] = args.bump or fields["bump"]
    event = registry.publish(args.tenant, spec.name, **fields, producer=PRODUCER)
    publish_versions(settings, [event])
    return _summary(event)


def _list(registry: Any, args: argparse.Namespace) -> str:
    rows: list[list[str]] = []
    if args.name is None:
        for name in registry.names(args.tenant):
            latest = registry.latest(args.tenant, name)
            labels = registry.labels(args.tenant, name)
            shown = ",".join(f"{k}={v}" for k, v in labels.items()) or "-"
            rows.append([name, str(latest.version), latest.semver, latest.kind, shown])
    else:
        for version in registry.versions(args.tenant, args.name):
            rows.append(
                [
                    version.ref,
                    version.semver,
                    ",".join(registry.held(version)) or "-",
                    version.author or "-",
                    (version.change_note or "-").splitlines()[0] if version.change_note else "-",
                ]
            )
    return "\n".join("\t".join(row) for row in rows)


def _render(registry: Any, args: argparse.Namespace) -> dict[str, Any]:
    from sluicegate.processors.prompt_registry import render

    version = registry.resolve(args.tenant, args.ref)
    _, declared = registry.compose(version)
    values = parse_vars(args.var or [], declared)
    if args.vars_json:
        try:
            extra = json.loads(args.vars_json)
        except ValueError as error:
            raise UsageError(f"--vars-json: {error}") from None
        if not isinstance(extra, dict):
            raise UsageError("--vars-json must be a JSON object")
        values |= extra
    rendered = render(
        registry,
        args.tenant,
        args.ref,
        values,
        user_messages=parse_messages(args.message or []),
    )
    return {
        "prompt_ref": rendered.prompt_ref,
        "semver": rendered.semver,
        "model": rendered.model,
        "messages": rendered.messages,
        "notes": rendered.notes,
    }


def cmd_prompts(settings: Settings, args: argparse.Namespace) -> int:
    from sluicegate.errors import BrokerError
    from sluicegate.processors.prompt_registry import PromptError

    try:
        registry = read_registry(settings)
        out: Any
        if args.action in ("create", "update"):
            out = _publish(settings, args, registry)
        elif args.action == "list":
            out = _list(registry, args)
        elif args.action == "show":
            version = registry.resolve(args.tenant, args.ref)
            out = version.describe(registry.held(version))
        elif args.action == "diff":
            out = registry.diff(args.tenant, args.name, args.a, args.b) or "(no differences)"
        elif args.action == "render":
            out = _render(registry, args)
        else:  # label, rollback
            if args.action == "label":
                event = registry.label(
                    args.tenant, args.name, args.label, args.version, producer=PRODUCER
                )
            else:
                event = registry.rollback(
                    args.tenant, args.name, args.label, args.to, producer=PRODUCER
                )
            publish_versions(settings, [event])
            out = _summary(event)
    except UsageError as error:
        print(f"prompts: {error}", file=sys.stderr)
        return 2
    except PromptError as error:
        print(f"prompts: {error.code}: {error.message}", file=sys.stderr)
        return 1
    except BrokerError as error:
        print(f"prompts: {error}", file=sys.stderr)
        return 1
    print(out if isinstance(out, str) else json.dumps(out, indent=2))
    return 0


def add_parsers(sub: Any) -> dict[str, Callable[[Settings, argparse.Namespace], int]]:
    prompts = sub.add_parser("prompts", help="the prompt registry: publish, label, roll back")
    actions = prompts.add_subparsers(dest="action", required=True)

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = actions.add_parser(name, help=help_text)
        parser.add_argument("--tenant", default="default", help="the prompt's tenant")
        return parser

    for name, help_text in (
        ("create", "publish version 1 of a prompt from a YAML file"),
        ("update", "publish the next version of a prompt from a YAML file"),
    ):
        publish = action(name, help_text)
        publish.add_argument("file", help="the prompt file (docs/prompts.md)")
        publish.add_argument(
            "--bump", choices=("major", "minor", "patch"), help="override the computed bump"
        )
        publish.add_argument("--author", help="who publishes (default: cli:<user>)")
    action("list", "prompts, or one prompt's versions").add_argument("name", nargs="?")
    action("show", "one version as JSON").add_argument("ref", help="name[@version|semver|label]")
    diff = action("diff", "what changed between two versions")
    diff.add_argument("name")
    diff.add_argument("a", help="version, semver or label")
    diff.add_argument("b", help="version, semver or label")
    label = action("label", "move a label to a version")
    label.add_argument("name")
    label.add_argument("label")
    label.add_argument("version", type=int)
    rollback = action("rollback", "give a label back to its previous holder")
    rollback.add_argument("name")
    rollback.add_argument("--label", default="prod")
    rollback.add_argument("--to", type=int, help="this version instead of the previous holder")
    render = action("render", "render a prompt without calling a model (dry run)")
    render.add_argument("ref", help="name[@version|semver|label]")
    render.add_argument("--var", action="append", help="name=value (repeat)")
    render.add_argument("--vars-json", help="variables as one JSON object")
    render.add_argument("--message", action="append", help="role:content of a caller message")
    return {"prompts": cmd_prompts}
