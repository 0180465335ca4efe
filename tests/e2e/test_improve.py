"""The improvement loop end to end: registered prompts on the request path, replays of recorded
traffic with no live side effects, and eval runs through the pipeline.

The upstream is deterministic (it answers `echo: <last user message>`), so a replay of the same
requests must reproduce every recorded answer exactly.
"""

from __future__ import annotations

import time
from typing import Any

import openai
import pytest

from sluicegate.cli_evals import run_results
from sluicegate.cli_kafka import publish_events
from sluicegate.connectors.schema_registry import build_serde
from sluicegate.processors.eval_datasets import parse_dataset
from sluicegate.processors.eval_run import RunSpec, new_run_id
from sluicegate.processors.prompt_registry import PromptRegistry, prompt_key
from sluicegate.processors.replay import ReplayOverrides, ReplaySlice
from sluicegate.processors.scorecard import build_scorecard
from sluicegate.schemas.models import PromptVersionPublished
from sluicegate.serving.eval_runner import EvalRunner
from sluicegate.settings import Settings
from tests.conftest import IMPROVE, IMPROVE_FREE, CallerKey

pytestmark = pytest.mark.e2e
TENANT = IMPROVE.tenant


def client(bridge_url: str, key: CallerKey = IMPROVE) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{bridge_url}/v1", api_key=key.token, max_retries=0, timeout=30)


def runner(settings: Settings) -> EvalRunner:
    return EvalRunner(
        settings,
        build_serde(settings),
        publish=lambda topic, events: publish_events(settings, topic, events),
    )


def ask(bridge_url: str, text: str, key: CallerKey = IMPROVE, **extra: Any) -> Any:
    return client(bridge_url, key).chat.completions.create(
        model="gpt-fake",
        messages=[{"role": "user", "content": text}],
        temperature=0,
        extra_body={"sluicegate": extra} if extra else None,
    )


def publish(settings: Settings, *events: PromptVersionPublished) -> None:
    publish_events(settings, "prompts", [(prompt_key(event), event) for event in events])


def test_a_registered_prompt_renders_on_the_request_path_and_rolls_back(
    settings: Settings, bridge_url: str
) -> None:
    registry = PromptRegistry()
    variables = {"name": {"type": "string", "required": True}}
    v1 = registry.publish(
        TENANT, "greet", template="Greet {{ name }} warmly.", variables=variables, labels=["prod"]
    )
    registry.apply(v1)
    v2 = registry.publish(
        TENANT, "greet", template="Greet {{ name }} briefly.", variables=variables
    )
    registry.apply(v2)
    moved = registry.label(TENANT, "greet", "prod", v2.version)
    registry.apply(moved)
    publish(settings, v1)

    def answer_when(expected: str, **extra: Any) -> Any:
        deadline = time.monotonic() + 20
        while True:  # the worker's prompt view follows sg.prompts within its fetch wait
            try:
                reply = ask(bridge_url, "hi", IMPROVE_FREE, **extra)
                if reply.choices[0].message.content == expected:
                    return reply
            except openai.NotFoundError:
                pass
            assert time.monotonic() < deadline, f"never answered {expected!r}"
            time.sleep(0.3)

    answer_when("echo: Greet Ada warmly.", prompt="greet@prod", variables={"name": "Ada"})
    publish(settings, v2, moved)
    answer_when("echo: Greet Ada briefly.", prompt="greet@prod", variables={"name": "Ada"})
    answer_when("echo: Greet Ada warmly.", prompt="greet@1", variables={"name": "Ada"})
    rolled_back = registry.rollback(TENANT, "greet", "prod")
    assert rolled_back.version == 1
    publish(settings, rolled_back)
    answer_when("echo: Greet Ada warmly.", prompt="greet@prod", variables={"name": "Ada"})

    with pytest.raises(openai.BadRequestError) as bad:
        ask(bridge_url, "hi", IMPROVE_FREE, prompt="greet@prod", variables={})
    assert "name" in bad.value.message
    with pytest.raises(openai.NotFoundError):
        ask(bridge_url, "hi", IMPROVE_FREE, prompt="nothing@prod")


def test_a_replay_reproduces_recorded_answers_without_live_side_effects(
    settings: Settings, bridge_url: str
) -> None:
    since_ms = int(time.time() * 1000) - 1
    questions = [f"replay question {i}" for i in range(4)]
    for question in questions:  # the key's 4 requests a minute, all used
        ask(bridge_url, question)
    with pytest.raises(openai.RateLimitError):
        ask(bridge_url, "one too many")
    slice_ = ReplaySlice(since_ms=since_ms, until_ms=int(time.time() * 1000) + 1, tenant_id=TENANT)
    reports = []
    for _ in range(2):
        spec = RunSpec(
            run_id=new_run_id("replay"), tenant_id=TENANT, model="gpt-fake", dataset="replay"
        )
        reports.append(
            runner(settings).run_replay(
                slice_, ReplayOverrides(), spec, matchers=[{"type": "exact"}]
            )
        )
    first, second = reports
    # Only answered live requests are replayed: the rate-limited one has nothing to compare.
    assert sorted(o.output for o in first.originals.values()) == sorted(
        f"echo: {q}" for q in questions
    )
    # Determinism: the same requests against the same upstream give the same answers, twice.
    for report in reports:
        assert [a.error for a in report.answers] == [None] * 4  # not limited: not live traffic
        assert {r.metric: r.score for r in report.results} == {"exact": 1.0}
        assert report.completed.scores == {"exact": 1.0} and report.completed.failed == 0
    assert [a.output for a in first.answers] == [a.output for a in second.answers]
    # The key's live limit is still spent (the replays did not refill or use it) ...
    with pytest.raises(openai.RateLimitError):
        ask(bridge_url, "still limited")
    # ... and the runs' results are on sg.evals under their run ids.
    recorded = run_results(settings, first.spec.run_id)
    assert set(recorded) == set(first.originals)


def test_an_eval_run_scores_cases_through_the_pipeline_and_compares_runs(
    settings: Settings, bridge_url: str
) -> None:
    dataset = parse_dataset(
        {
            "name": "echo-smoke",
            "matchers": [{"type": "contains", "value": "echo", "case_sensitive": False}],
            "cases": [
                {
                    "id": "exact",
                    "input": {"messages": [{"role": "user", "content": "ping"}]},
                    "expected": "echo: ping",
                    "matchers": [{"type": "exact"}],
                },
                {
                    "id": "regex",
                    "input": {"messages": [{"role": "user", "content": "42"}]},
                    "matchers": [{"type": "regex", "pattern": r"\d+$"}],
                },
                {
                    "id": "miss",
                    "input": {"messages": [{"role": "user", "content": "a"}]},
                    "expected": "something else",
                    "matchers": [{"type": "exact"}],
                },
                # The echoing judge answers prose without a score: an error result, no crash.
                {
                    "id": "judged",
                    "input": {"messages": [{"role": "user", "content": "q"}]},
                    "matchers": [{"type": "llm_judge", "criteria": ["is correct"]}],
                },
            ],
        }
    )
    runs = []
    for _ in range(2):
        spec = RunSpec(
            run_id=new_run_id("eval"), tenant_id=TENANT, model="gpt-fake", dataset=dataset.name
        )
        runs.append(runner(settings).run_dataset(dataset, spec))
    report = runs[0]
    by_case = {(r.case_id, r.metric): r for r in report.results}
    assert by_case[("exact", "exact")].passed and by_case[("exact", "contains")].passed
    assert by_case[("regex", "regex")].passed
    assert not by_case[("miss", "exact")].passed and by_case[("miss", "contains")].passed
    judged = by_case[("judged", "llm_judge")]
    assert not judged.passed and judged.score == 0.0 and judged.detail
    assert judged.judge_usd > 0 and by_case[("exact", "exact")].judge_usd == 0
    assert all(r.cost_usd > 0 for r in report.results)  # the answers' own cost, apart
    assert report.completed.cases == 4 and report.completed.pass_rates["exact"] == 0.5
    baseline = run_results(settings, runs[0].spec.run_id)
    candidate = run_results(settings, runs[1].spec.run_id)
    scorecard = build_scorecard(baseline, candidate)
    assert {c.status for c in scorecard.cases} == {"unchanged"}
    assert scorecard.metrics["exact"].delta.estimate == 0


def test_a_live_ab_test_splits_users_stickily_and_is_judged_from_analytics(
    settings: Settings, bridge_url: str, tmp_path_factory: pytest.TempPathFactory, capsys
) -> None:
    from sluicegate.cli import parser
    from sluicegate.cli_evals import cmd_ab, cmd_leaderboard
    from sluicegate.settings import AnalyticsSettings
    from tests.e2e.test_analytics_sink import Sink, sql

    registry = PromptRegistry()
    first = registry.publish(TENANT, "split", template="variant one", labels=["prod"])
    registry.apply(first)
    second = registry.publish(TENANT, "split", template="variant two")
    publish(settings, first, second)
    users = [f"user-{i}" for i in range(12)]
    seen: dict[str, set[str]] = {}
    deadline = time.monotonic() + 20
    while True:  # the worker's prompt view follows sg.prompts within its fetch wait
        try:
            ask(bridge_url, "warm up", IMPROVE_FREE, prompt="split@prod")
            break
        except openai.NotFoundError:
            assert time.monotonic() < deadline, "the prompt never arrived"
            time.sleep(0.3)
    for _ in range(2):
        for user in users:
            reply = client(bridge_url, IMPROVE_FREE).chat.completions.create(
                model="gpt-fake",
                messages=[{"role": "user", "content": "hi"}],
                user=user,
                extra_body={"sluicegate": {"prompt": "split@prod"}},
            )
            seen.setdefault(user, set()).add(reply.choices[0].message.content)
    assert all(len(answers) == 1 for answers in seen.values())  # a user keeps one variant
    arms = {next(iter(answers)) for answers in seen.values()}
    assert arms == {"echo: variant one", "echo: variant two"}

    sink_settings = settings.model_copy(
        update={
            "analytics": AnalyticsSettings(
                dsn=f"chdb://{tmp_path_factory.mktemp('ab-analytics')}/chdb"
            )
        }
    )
    sink = Sink(sink_settings, tmp_path_factory.mktemp("ab-sink-logs"))
    sink.start()
    try:
        query = "SELECT count() FROM responses FINAL WHERE prompt_ref LIKE 'split@%'"
        deadline = time.monotonic() + 60
        while sql(sink_settings, query)[0][0] < 2 * len(users) + 1:
            assert time.monotonic() < deadline, "the answers never reached the sink"
            time.sleep(0.5)
        capsys.readouterr()
        assert cmd_ab(sink_settings, parser().parse_args(["ab", "tone", "--since=-1h"])) == 0
        out = capsys.readouterr().out
        # The earlier eval runs of this module reached the sink too: the leaderboard ranks them.
        evals = "SELECT count() FROM eval_results FINAL WHERE model = 'gpt-fake'"
        while sql(sink_settings, evals)[0][0] == 0:
            assert time.monotonic() < deadline + 30, "no eval result reached the sink"
            time.sleep(0.5)
        assert cmd_leaderboard(sink_settings, parser().parse_args(["leaderboard"])) == 0
        board = [line.split("\t") for line in capsys.readouterr().out.splitlines()[1:]]
    finally:
        sink.stop()
    assert "split@1:" in out and "split@2:" in out
    rows = [
        line.split("\t") for line in out.splitlines() if line.startswith(("latency_ms", "pass"))
    ]
    assert {row[0] for row in rows} == {"latency_ms", "pass_rate"}
    assert all(row[1] == "split@1" and row[2] == "split@2" for row in rows)
    assert {(row[0], row[1]) for row in board} >= {("exact", "gpt-fake"), ("contains", "gpt-fake")}


def test_the_cli_replays_a_slice_into_a_report_and_keeps_an_interaction_as_a_case(
    settings: Settings, bridge_url: str, tmp_path, capsys
) -> None:
    from sluicegate.cli import parser
    from sluicegate.cli_evals import cmd_eval, cmd_replay
    from sluicegate.processors.eval_datasets import load_dataset

    since_ms = int(time.time() * 1000) - 1
    reply = ask(bridge_url, "keep me", IMPROVE_FREE)
    ask(bridge_url, "and me", IMPROVE_FREE)
    request_id = reply.id.removeprefix("chatcmpl-")
    reports = tmp_path / "reports"
    matchers = ["--matcher", "exact", "--matcher", '{"type": "contains", "value": "echo"}']
    args = parser().parse_args(
        [
            "replay",
            f"--since={since_ms}",
            "--tenant",
            TENANT,
            "--report-dir",
            str(reports),
            *matchers,
        ]
    )
    assert cmd_replay(settings, args) == 0
    out = capsys.readouterr().out
    assert "2 cases, 0 without answer" in out and "exact" in out
    (report,) = reports.glob("replay-*/report.md")
    text = report.read_text()
    assert "recorded" in text and "exact" in text and "contains" in text
    assert list(report.parent.glob("*.png"))

    dataset = tmp_path / "kept.yaml"
    args = parser().parse_args(
        ["eval", "keep", request_id, "--dataset", str(dataset), "--matcher", "exact"]
    )
    assert cmd_eval(settings, args) == 0
    (case,) = load_dataset(dataset).cases
    assert case.expected == "echo: keep me"
    assert case.input.messages == [{"role": "user", "content": "keep me"}]
    assert case.matchers == [{"type": "exact"}]
