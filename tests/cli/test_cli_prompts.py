"""`sluicegate prompts`: prompt files, `--var` typing, the shipped examples, and the round trip
create → update → list → show → diff → rollback → label → render against the real broker."""

from __future__ import annotations

import argparse
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from sluicegate.cli_prompts import (
    UsageError,
    add_parsers,
    load_spec,
    parse_messages,
    parse_vars,
    read_registry,
)
from sluicegate.processors.prompt_registry import PromptRegistry, render
from sluicegate.processors.prompt_templates import parse_variables
from sluicegate.settings import KafkaSettings, Settings, WorkerSettings
from sluicegate.streams.topics import ensure_topics
from tests.topics_io import drop_topics

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "prompts"


def run(settings: Settings, *argv: str) -> int:
    root = argparse.ArgumentParser()
    commands = add_parsers(root.add_subparsers(dest="command", required=True))
    args = root.parse_args(list(argv))
    return commands[args.command](settings, args)


# -- files and arguments -------------------------------------------------------------------------


@pytest.mark.unit
def test_a_prompt_file_loads_or_says_what_is_wrong(tmp_path: Path) -> None:
    good = tmp_path / "p.yaml"
    good.write_text("name: p\ntemplate: 'Hi {{ who }}'\nvariables: {who: string}\n")
    assert load_spec(good).variables == {"who": "string"}
    for text, fragment in (
        ("- a list", "a YAML mapping"),
        ("name: p\ntempalte: x\n", "tempalte: Extra inputs are not permitted"),
        ("name: [unclosed", "p.yaml"),
    ):
        good.write_text(text)
        with pytest.raises(UsageError, match=fragment):
            load_spec(good)
    with pytest.raises(UsageError):
        load_spec(tmp_path / "missing.yaml")


@pytest.mark.unit
def test_vars_are_typed_by_the_declarations() -> None:
    declared = parse_variables({"q": "string", "n": "integer", "tags": "array", "on": "boolean"})
    values = parse_vars(["q=3", "n=3", 'tags=["a"]', "on=true", "x=y=z"], declared)
    assert values == {"q": "3", "n": 3, "tags": ["a"], "on": True, "x": "y=z"}
    assert parse_vars(["n=three"], declared) == {"n": "three"}  # validation names it later
    with pytest.raises(UsageError):
        parse_vars(["novalue"], declared)
    assert parse_messages(["user:hi: there"]) == [{"role": "user", "content": "hi: there"}]
    with pytest.raises(UsageError):
        parse_messages(["tool:x"])


@pytest.mark.unit
def test_the_shipped_examples_publish_and_render() -> None:
    registry = PromptRegistry()
    for name in ("persona", "support", "support-chat"):  # persona first: support-chat includes it
        spec = load_spec(EXAMPLES / f"{name}.yaml")
        registry.apply(registry.publish("acme", spec.name, **spec.publish_fields()))
    assert sorted(p.stem for p in EXAMPLES.glob("*.yaml")) == ["persona", "support", "support-chat"]
    chat = render(registry, "acme", "support-chat", {"company": "Acme", "question": "Hi?"})
    assert chat.messages[0]["content"].startswith("You are Acme's support assistant.")
    support = render(registry, "acme", "support@prod", {"question": "Refund?", "order_id": "9"})
    assert "Their order is 9." in support.messages[-1]["content"]


# -- the round trip ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def broker_settings(kafka_bootstrap: str) -> Iterator[Settings]:
    run_id = uuid.uuid4().hex[:8]
    settings = Settings(
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=f"c{run_id}."),
        worker=WorkerSettings(app_id=f"sluicegate-cli-prompts-{run_id}", metrics_port=None),
    )
    ensure_topics(settings)
    try:
        yield settings
    finally:
        drop_topics(settings)


def write(path: Path, **fields: object) -> str:
    path.write_text(yaml.safe_dump(fields))
    return str(path)


@pytest.mark.integration
def test_create_update_list_rollback_resolve(
    broker_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s, tenant = broker_settings, ["--tenant", "acme"]
    spec = {
        "name": "support",
        "template": "Answer {{ question }}.",
        "variables": {"question": "string"},
        "labels": ["prod"],
    }
    v1 = write(tmp_path / "v1.yaml", **spec)
    assert run(s, "prompts", "create", v1, *tenant) == 0
    assert json.loads(capsys.readouterr().out)["prompt_ref"] == "support@1"
    assert run(s, "prompts", "create", v1, *tenant) == 2  # exists: use update
    assert "with `prompts update`" in capsys.readouterr().err
    assert run(s, "prompts", "update", v1, *tenant) == 1
    assert "prompt_no_change" in capsys.readouterr().err

    v2 = write(tmp_path / "v2.yaml", **{**spec, "template": "Please answer {{ question }}."})
    assert run(s, "prompts", "update", v2, *tenant, "--author", "ana") == 0
    published = json.loads(capsys.readouterr().out)
    assert (published["prompt_ref"], published["semver"]) == ("support@2", "1.1.0")

    assert run(s, "prompts", "list", *tenant) == 0
    assert capsys.readouterr().out.split() == ["support", "2", "1.1.0", "template", "prod=2"]
    assert run(s, "prompts", "list", "support", *tenant) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [r[:3] for r in rows] == [["support@1", "1.0.0", "-"], ["support@2", "1.1.0", "prod"]]
    assert rows[1][3] == "ana"

    assert run(s, "prompts", "diff", "support", "1", "prod", *tenant) == 0
    assert "+Please answer {{ question }}." in capsys.readouterr().out

    assert run(s, "prompts", "rollback", "support", *tenant) == 0
    assert json.loads(capsys.readouterr().out)["prompt_ref"] == "support@1"
    registry = read_registry(s)
    assert registry.resolve("acme", "support@prod").version == 1
    assert registry.resolve("acme", "support").version == 2  # no `default` label: the latest

    assert run(s, "prompts", "label", "support", "default", "1", *tenant) == 0
    capsys.readouterr()
    assert run(s, "prompts", "show", "support", *tenant) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["version"], shown["labels"]) == (1, ["default", "prod"])

    argv = ["prompts", "render", "support@2", "--var", "question=why", "--message", "system:Hi"]
    assert run(s, *argv, *tenant) == 0
    rendered = json.loads(capsys.readouterr().out)
    assert rendered["messages"] == [
        {"role": "system", "content": "Hi"},
        {"role": "user", "content": "Please answer why."},
    ]
    assert run(s, "prompts", "render", "support", "--var", "city=x", *tenant) == 1
    assert "prompt_variables_invalid" in capsys.readouterr().err
    assert run(s, "prompts", "show", "support", "--tenant", "globex") == 1
    assert "prompt_not_found" in capsys.readouterr().err
