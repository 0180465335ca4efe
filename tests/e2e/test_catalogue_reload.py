"""Hot reload: a catalogue published on sg.catalogue goes live in the running processes."""

from __future__ import annotations

import time

import openai
import pytest
import yaml

from sluicegate.settings import ModelAlias, Settings
from tests.cli.test_cli import run_cli
from tests.conftest import CALLER_TOKEN

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def test_a_published_alias_is_served_without_a_restart(
    settings: Settings, bridge_url: str, tmp_path, upstream
) -> None:
    client = openai.OpenAI(base_url=f"{bridge_url}/v1", api_key=CALLER_TOKEN, max_retries=0)
    assert "gpt-reloaded" not in {m.id for m in client.models.list().data}
    # A superset of the session's catalogue, so the tests after this one see what they expect.
    catalogue = settings.catalogue.model_dump(mode="json")
    catalogue["models"].append(
        ModelAlias(
            name="gpt-reloaded", deployments=["fake"], description="published at run time"
        ).model_dump(mode="json")
    )
    path = tmp_path / "catalogue.yaml"
    path.write_text(yaml.safe_dump(catalogue))

    published = run_cli(settings, "catalogue", "publish", str(path))
    assert published.returncode == 0, published.stderr
    assert "gpt-reloaded" in published.stdout

    deadline = time.monotonic() + 20
    while "gpt-reloaded" not in {m.id for m in client.models.list().data}:
        assert time.monotonic() < deadline, "the bridge never listed the published alias"
        time.sleep(0.2)
    answer = None
    while answer is None:  # the worker follows the same topic; give it the same bounded time
        try:
            answer = client.chat.completions.create(
                model="gpt-reloaded", messages=[{"role": "user", "content": "hot reload"}]
            )
        except openai.NotFoundError:
            assert time.monotonic() < deadline, "the worker never routed the published alias"
            time.sleep(0.2)
    assert "hot reload" in answer.choices[0].message.content

    shown = run_cli(settings, "catalogue", "show")
    assert shown.returncode == 0 and "gpt-reloaded" in shown.stdout


def test_an_invalid_catalogue_is_refused_before_publishing(settings: Settings, tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump({"deployments": [], "models": [{"name": "x", "deployments": ["nope"]}]})
    )
    result = run_cli(settings, "catalogue", "publish", str(path))
    assert result.returncode == 2 and "unknown deployments" in result.stderr
