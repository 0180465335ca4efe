"""`sluicegate eval …`, `sluicegate replay` and `sluicegate leaderboard`: the improvement loop.

    sluicegate eval run examples/evals/smoke.yaml --model chat [--prompt support@staging]
    sluicegate eval compare RUN_A RUN_B               # per-case diff, deltas with intervals
    sluicegate eval keep REQUEST_ID --dataset keep.yaml   # this interaction as a test case
    sluicegate replay --since=-1h --tenant acme --to-model chat-v2 [--to-prompt support@4]
    sluicegate leaderboard [--metric exact]

Runs go through the live pipeline with their own `run_id` (serving/eval_runner.py); results
land on sg.evals (and in ClickHouse through the sink). `compare` reads both runs' results from
sg.evals, the log of record; `leaderboard` reads ClickHouse's `v_leaderboard`. A report
(Markdown with PNG plots) is written per replay and per comparison into `evals.reports_dir`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sluicegate.settings import Settings

_RELATIVE = re.compile(r"^-(\d+(?:\.\d+)?)([smhd])$")
_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time_ms(text: str, *, now_ms: int | None = None) -> int:
    """`-90m`, `-2h`, `-1d` (relative to now), an ISO 8601 time, or epoch millis."""
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    relative = _RELATIVE.match(text.strip())
    if relative:
        return now_ms - int(float(relative.group(1)) * _UNITS_S[relative.group(2)] * 1000)
    if text.isdigit():
        return int(text)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (use -2h, ISO 8601 or ms)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def _embedder(settings: Settings, needed: bool) -> Any:
    if not needed:
        return None
    from sluicegate.connectors.embeddings import build_embedder

    embedder = build_embedder(settings.cache)
    return None if embedder is None else embedder.embed


def _needs_embedder(configs: list[dict[str, Any]]) -> bool:
    return any(config.get("type") == "semantic_similarity" for config in configs)


def _runner(settings: Settings, *, embed: Any) -> Any:
    from sluicegate.cli_kafka import publish_events
    from sluicegate.connectors.schema_registry import build_serde
    from sluicegate.serving.eval_runner import EvalRunner
    from sluicegate.streams.topics import ensure_topics

    ensure_topics(settings)
    serde = build_serde(settings)

    def progress(done: int, total: int) -> None:
        if sys.stderr.isatty():
            sys.stderr.write(f"\r{done}/{total} answered")
            sys.stderr.flush()

    return EvalRunner(
        settings,
        serde,
        publish=lambda topic, events: publish_events(settings, topic, events),
        embed=embed,
        progress=progress,
    )


def _report_dir(settings: Settings, args: argparse.Namespace, run_id: str) -> Path:
    base = Path(args.report_dir or settings.evals.reports_dir).expanduser()
    return base / run_id


def _print_run(report: Any) -> None:
    completed = report.completed
    print(f"run {completed.run_id}: {completed.cases} cases, {completed.failed} without answer")
    for metric in sorted(completed.scores):
        rate = completed.pass_rates.get(metric, 0.0)
        print(f"  {metric:<24} mean {completed.scores[metric]:.3f}  passed {rate:.1%}")
    print(f"  cost ${completed.cost_usd:.6f}  judge ${completed.judge_usd:.6f}")


def run_results(settings: Settings, run_id: str) -> dict[str, Any]:
    """A run's per-case outcomes as recorded on sg.evals (the log of record)."""
    from sluicegate.connectors.schema_registry import build_serde
    from sluicegate.processors.scorecard import runs_from_rows
    from sluicegate.schemas.models import EvalCaseResult
    from sluicegate.serving.topic_read import read_to_end

    serde = build_serde(settings)
    rows = []
    for batch in read_to_end(settings, settings.topic("evals")):
        for message in batch:
            if message.key() != run_id.encode():
                continue
            event = serde.decode(message.value())
            if isinstance(event, EvalCaseResult) and event.run_id == run_id:
                rows.append(event.model_dump())
    return runs_from_rows(rows)


def _compare(settings: Settings, args: argparse.Namespace, baseline: str, candidate: str) -> int:
    from sluicegate.eval_report import write_report
    from sluicegate.processors.scorecard import build_scorecard

    base, cand = run_results(settings, baseline), run_results(settings, candidate)
    if not base or not cand:
        missing = baseline if not base else candidate
        print(f"no results for run {missing} on {settings.topic('evals')}", file=sys.stderr)
        return 1
    scorecard = build_scorecard(base, cand)
    for metric, summary in scorecard.metrics.items():
        print(f"{metric}: {summary}")
    paths = write_report(
        _report_dir(settings, args, f"{baseline}-vs-{candidate}"),
        scorecard,
        title=f"{candidate} vs {baseline}",
        names=(baseline, candidate),
        leaderboard=_report_leaderboard(settings, args),
    )
    print(f"report: {paths.markdown}")
    return 0


def cmd_eval(settings: Settings, args: argparse.Namespace) -> int:
    from sluicegate.errors import SluicegateError

    try:
        if args.eval_command == "run":
            return _eval_run(settings, args)
        if args.eval_command == "compare":
            return _compare(settings, args, args.baseline, args.candidate)
        return _eval_keep(settings, args)
    except (SluicegateError, ValueError) as error:
        print(f"eval: {error}", file=sys.stderr)
        return 1


def _eval_run(settings: Settings, args: argparse.Namespace) -> int:
    from sluicegate.processors.eval_datasets import load_dataset
    from sluicegate.processors.eval_run import RunSpec, new_run_id

    dataset = load_dataset(args.dataset)
    configs = [c for case in dataset.cases for c in dataset.matchers_for(case)]
    runner = _runner(settings, embed=_embedder(settings, _needs_embedder(configs)))
    spec = RunSpec(
        run_id=args.run_id or new_run_id("eval"),
        tenant_id=args.tenant or settings.evals.tenant_id,
        model=args.model,
        dataset=dataset.name,
        prompt=args.prompt,
        params={"temperature": args.temperature, "seed": args.seed},
    )
    report = runner.run_dataset(dataset, spec, baseline_run_id=args.baseline)
    _print_run(report)
    if args.baseline:
        return _compare(settings, args, args.baseline, spec.run_id)
    return 0


def _eval_keep(settings: Settings, args: argparse.Namespace) -> int:
    """Append the recorded interaction `request_id` to a dataset file as a test case."""
    import yaml

    from sluicegate.connectors.schema_registry import build_serde
    from sluicegate.processors.eval_datasets import (
        EvalDataset,
        case_from_interaction,
        dump_dataset,
        load_dataset,
    )
    from sluicegate.schemas.models import RequestReceived, ResponseReady
    from sluicegate.serving.topic_read import read_to_end

    serde = build_serde(settings)
    found: dict[str, Any] = {}
    for name in ("requests", "responses"):
        for batch in read_to_end(settings, settings.topic(name)):
            for message in batch:
                if args.request_id.encode() not in (message.value() or b""):
                    continue  # cheap: the id is in the record's bytes
                event = serde.decode(message.value())
                if event.request_id == args.request_id:
                    found.setdefault(type(event).__name__, event)
    request, response = found.get("RequestReceived"), found.get("ResponseReady")
    if not isinstance(request, RequestReceived) or not isinstance(response, ResponseReady):
        print(f"no answered request {args.request_id} on the journal", file=sys.stderr)
        return 1
    messages = [m.model_dump(exclude_none=True) for m in request.messages]
    case = case_from_interaction(
        messages,
        response.message.content or "",
        args.case_id or args.request_id,
        matcher=args.matcher,
        metadata={"request_id": request.request_id, "model": request.model},
    )
    path = Path(args.dataset)
    if path.exists():
        dataset = load_dataset(path)
        dataset = dataset.model_copy(update={"cases": [*dataset.cases, case]})
    else:
        dataset = EvalDataset(name=path.stem, cases=[case])
    EvalDataset.model_validate(yaml.safe_load(dump_dataset(dataset)))  # refuse a duplicate id
    dump_dataset(dataset, path)
    print(f"kept {args.request_id} as case {case.id} in {path} ({len(dataset.cases)} cases)")
    return 0


def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    from sluicegate.errors import SluicegateError
    from sluicegate.eval_report import write_report
    from sluicegate.processors.eval_run import RunSpec, new_run_id
    from sluicegate.processors.replay import ReplayError, ReplayOverrides, ReplaySlice
    from sluicegate.processors.scorecard import CaseOutcome, MetricScore, build_scorecard

    try:
        overrides = ReplayOverrides(
            model=args.to_model,
            prompt=args.to_prompt,
            strategy=args.strategy,
            deployment=args.deployment,
            params={
                k: v
                for k, v in (("temperature", args.temperature), ("seed", args.seed))
                if v is not None
            },
        )
        slice_ = ReplaySlice(
            since_ms=parse_time_ms(args.since),
            until_ms=parse_time_ms(args.until) if args.until else int(time.time() * 1000),
            tenant_id=args.tenant,
            model=args.model,
            user=args.user,
            prompt=args.prompt_name,
            contains=args.contains,
            limit=args.limit,
        )
        matchers = [json.loads(m) if m.startswith("{") else {"type": m} for m in args.matcher]
        matchers = matchers or [{"type": "exact"}]
        if args.judge:
            matchers.append({"type": "llm_judge", "criteria": args.judge})
        runner = _runner(settings, embed=_embedder(settings, _needs_embedder(matchers)))
        spec = RunSpec(
            run_id=args.run_id or new_run_id("replay"),
            tenant_id=args.tenant or settings.evals.tenant_id,
            model=args.to_model or args.model or "",
            dataset=f"replay:{args.tenant or '*'}:{args.model or '*'}",
        )
        report = runner.run_replay(slice_, overrides, spec, matchers=matchers)
    except (SluicegateError, ReplayError, ValueError) as error:
        print(f"replay: {error}", file=sys.stderr)
        return 1
    if not report.answers:
        print("replay: the slice selects no answered live request", file=sys.stderr)
        return 1
    _print_run(report)
    candidate: dict[str, CaseOutcome] = {}
    for answer in report.answers:
        metrics = {
            r.metric: MetricScore(r.score, r.passed)
            for r in report.results
            if r.case_id == answer.case_id
        }
        candidate[answer.case_id] = CaseOutcome(
            metrics, answer.output, answer.cost_usd, answer.latency_ms
        )
    # The recorded answers are the reference: every matcher that compares with `expected`
    # scores them 1 by construction, so the deltas say how far the replay moved.
    baseline = {
        case_id: CaseOutcome(
            {m: MetricScore(1.0, True) for m in candidate[case_id].metrics if m != "llm_judge"},
            then.output,
            then.cost_usd,
            then.latency_ms,
        )
        for case_id, then in report.originals.items()
    }
    paths = write_report(
        _report_dir(settings, args, spec.run_id),
        build_scorecard(baseline, candidate),
        title=f"Replay {spec.run_id}: {json.dumps(overrides.describe())}",
        names=("recorded", spec.run_id),
        leaderboard=_report_leaderboard(settings, args),
    )
    print(f"report: {paths.markdown}")
    return 0


def leaderboard(settings: Settings, metric: str | None = None) -> Any:
    """The leaderboard from ClickHouse's `v_leaderboard` (AnalyticsError when unreachable)."""
    from sluicegate.cli import _query
    from sluicegate.processors.scorecard import Leaderboard, LeaderboardEntry

    where = ""
    if metric:
        if not _NAME.match(metric):
            raise ValueError("a metric name is letters, digits and _.:-")
        where = f" WHERE metric = '{metric}'"
    query = (
        "SELECT model, prompt_ref, metric, mean_score, pass_rate, usd_per_case, "
        f"p50_latency_ms, p95_latency_ms, cases FROM v_leaderboard{where}"
    )
    _columns, rows = _query(settings, query)
    return Leaderboard.from_entries(
        LeaderboardEntry(
            model=row[0],
            prompt_ref=row[1] or None,
            metric=row[2],
            mean_score=float(row[3]),
            pass_rate=float(row[4]),
            cost_per_request=float(row[5]),
            p50_latency_ms=None if row[6] is None else float(row[6]),
            p95_latency_ms=None if row[7] is None else float(row[7]),
            n=int(row[8]),
        )
        for row in rows
    )


def _report_leaderboard(settings: Settings, args: argparse.Namespace) -> Any:
    """The leaderboard for a report when asked for (`--leaderboard`); a report is still
    written when analytics cannot be reached."""
    if not getattr(args, "leaderboard", False):
        return None
    from sluicegate.errors import AnalyticsError

    try:
        return leaderboard(settings)
    except AnalyticsError as error:
        print(f"report without leaderboard: {error}", file=sys.stderr)
        return None


def cmd_leaderboard(settings: Settings, args: argparse.Namespace) -> int:
    from sluicegate.errors import AnalyticsError

    try:
        board = leaderboard(settings, args.metric)
    except (AnalyticsError, ValueError) as error:
        print(f"leaderboard: {error}", file=sys.stderr)
        return 1
    print("metric\tmodel\tprompt\tmean_score\tpass_rate\tusd/case\tp50_ms\tp95_ms\tcases")
    for e in board.entries:
        p50 = "-" if e.p50_latency_ms is None else f"{e.p50_latency_ms:.1f}"
        p95 = "-" if e.p95_latency_ms is None else f"{e.p95_latency_ms:.1f}"
        print(
            f"{e.metric}\t{e.model}\t{e.prompt_ref or '-'}\t{e.mean_score:.3f}\t"
            f"{e.pass_rate:.3f}\t{e.cost_per_request:.6f}\t{p50}\t{p95}\t{e.n}"
        )
    return 0


_NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")


def cmd_ab(settings: Settings, args: argparse.Namespace) -> int:
    """A live A/B test of prompt variants from ClickHouse: latency and cost per answer
    (Mann-Whitney, bootstrap interval) and the share of answers that finished (`stop`, not cut
    off or filtered: two-proportion z-test), each variant against the first."""
    from sluicegate.cli import _query
    from sluicegate.errors import AnalyticsError
    from sluicegate.processors.ab_report import ArmSamples, compare_arms

    experiment = next((e for e in settings.prompts.experiments if e.name == args.experiment), None)
    if experiment is None:
        known = ", ".join(e.name for e in settings.prompts.experiments) or "none"
        print(f"ab: no experiment {args.experiment!r} in prompts.experiments ({known})")
        return 1
    if not _NAME.match(experiment.prompt):
        print(f"ab: unusable prompt name {experiment.prompt!r}", file=sys.stderr)
        return 1
    since = parse_time_ms(args.since) / 1000
    tenant = f" AND tenant_id = '{experiment.tenant_id}'" if experiment.tenant_id else ""
    if experiment.tenant_id and not _NAME.match(experiment.tenant_id):
        print(f"ab: unusable tenant id {experiment.tenant_id!r}", file=sys.stderr)
        return 1
    where = (
        f"run_id IS NULL AND prompt_ref LIKE '{experiment.prompt}@%'"
        f" AND occurred_at >= toDateTime64({since:.3f}, 3){tenant}"
    )
    try:
        _, answers = _query(
            settings,
            "SELECT prompt_ref, latency_ms, finish_reason = 'stop' FROM responses FINAL "
            f"WHERE status = 'ok' AND NOT cache_hit AND {where}",
        )
        _, costs = _query(settings, f"SELECT prompt_ref, usd FROM cost FINAL WHERE {where}")
    except AnalyticsError as error:
        print(f"analytics: {error}", file=sys.stderr)
        return 1
    samples: dict[str, dict[str, list[Any]]] = {}
    for ref, latency, finished in answers:
        arm = samples.setdefault(ref, {"latency_ms": [], "cost_usd": [], "passed": []})
        if latency is not None:
            arm["latency_ms"].append(float(latency))
        arm["passed"].append(bool(finished))
    for ref, usd in costs:
        samples.setdefault(ref, {"latency_ms": [], "cost_usd": [], "passed": []})
        samples[ref]["cost_usd"].append(float(usd))
    first = [f"{experiment.prompt}@{v}" for v in experiment.variants]
    order = sorted(samples, key=lambda ref: (first.index(ref) if ref in first else 99, ref))
    arms = {ref: ArmSamples(ref, **samples[ref]) for ref in order}
    print(
        f"experiment {experiment.name}: {experiment.prompt}@{experiment.label}, split by "
        f"{experiment.split_by}"
    )
    for ref, arm in arms.items():
        print(f"  {ref}: {len(arm.passed)} answers, {len(arm.cost_usd)} costed")
    comparisons = compare_arms(arms)
    if not comparisons:
        print("not enough answers in two arms yet")
        return 0
    print("metric\tcontrol\tvariant\tn\tcontrol_mean\tvariant_mean\tdiff [95% CI]\teffect\tp")
    for c in comparisons:
        if c.proportions is not None:
            ci, effect = c.proportions.interval, f"h={c.proportions.cohens_h:+.3f}"
        else:
            assert c.difference is not None and c.ranks is not None
            ci, effect = c.difference, f"r={c.ranks.rank_biserial:+.3f}"
        print(
            f"{c.metric}\t{c.control}\t{c.variant}\t{c.n_control}/{c.n_variant}\t"
            f"{c.control_mean:.6g}\t{c.variant_mean:.6g}\t"
            f"{ci.estimate:+.4g} [{ci.low:+.4g}, {ci.high:+.4g}]\t{effect}\t{c.p_value:.4f}"
        )
    print("decide at the sample size fixed in advance (docs/evals.md: stop rules)")
    return 0


def add_parsers(sub: Any) -> dict[str, Any]:
    evals = sub.add_parser("eval", help="run an eval dataset, compare runs, keep interactions")
    evals_sub = evals.add_subparsers(dest="eval_command", required=True)
    run = evals_sub.add_parser("run", help="run a dataset through the pipeline and score it")
    run.add_argument("dataset", help="dataset YAML (docs/evals.md)")
    run.add_argument("--model", required=True, help="model alias the cases are sent to")
    run.add_argument("--prompt", help="render every case with this prompt (name@ref)")
    run.add_argument("--run-id", help="default: a new eval-… id")
    run.add_argument("--baseline", help="compare with this earlier run and write a report")
    run.add_argument("--tenant", help="tenant the run is journaled under")
    run.add_argument("--temperature", type=float, default=0.0)
    run.add_argument("--seed", type=int, default=None)
    run.add_argument("--report-dir", help="default: evals.reports_dir")
    run.add_argument(
        "--leaderboard", action="store_true", help="add the leaderboard (ClickHouse) to the report"
    )
    compare = evals_sub.add_parser("compare", help="per-case diff and deltas of two runs")
    compare.add_argument("baseline")
    compare.add_argument("candidate")
    compare.add_argument("--report-dir", help="default: evals.reports_dir")
    compare.add_argument(
        "--leaderboard", action="store_true", help="add the leaderboard (ClickHouse) to the report"
    )
    keep = evals_sub.add_parser("keep", help="keep a recorded interaction as a test case")
    keep.add_argument("request_id")
    keep.add_argument("--dataset", required=True, help="dataset YAML to append to (created)")
    keep.add_argument("--case-id")
    keep.add_argument(
        "--matcher", default="semantic_similarity", choices=("semantic_similarity", "exact")
    )

    replay = sub.add_parser("replay", help="replay recorded traffic against a new model/prompt")
    replay.add_argument(
        "--since", required=True, help="-2h (write --since=-2h), ISO 8601 or epoch ms"
    )
    replay.add_argument("--until", help="default: now")
    replay.add_argument("--tenant")
    replay.add_argument("--model", help="only requests for this alias")
    replay.add_argument("--user")
    replay.add_argument("--prompt-name", help="only requests that named this prompt")
    replay.add_argument("--contains", help="only requests whose last user message has this")
    replay.add_argument("--limit", type=int)
    replay.add_argument("--to-model", help="override: the alias to send them to")
    replay.add_argument("--to-prompt", help="override: render with this prompt (name@ref)")
    replay.add_argument("--strategy", help="override: routing strategy")
    replay.add_argument("--deployment", help="override: pin a deployment")
    replay.add_argument("--temperature", type=float)
    replay.add_argument("--seed", type=int)
    replay.add_argument(
        "--matcher",
        action="append",
        default=[],
        help="matcher type or JSON config scoring each answer against the recorded one "
        "(repeatable; default: exact)",
    )
    replay.add_argument("--judge", action="append", help="LLM-judge criterion (repeatable)")
    replay.add_argument("--run-id")
    replay.add_argument("--report-dir", help="default: evals.reports_dir")
    replay.add_argument(
        "--leaderboard", action="store_true", help="add the leaderboard (ClickHouse) to the report"
    )

    ab = sub.add_parser("ab", help="a live A/B test of prompt variants, with significance")
    ab.add_argument("experiment", help="name in prompts.experiments")
    ab.add_argument("--since", default="-7d", help="-7d (write --since=-7d), ISO 8601 or epoch ms")

    board = sub.add_parser("leaderboard", help="models x prompt versions by score, cost, latency")
    board.add_argument("--metric")
    return {"eval": cmd_eval, "replay": cmd_replay, "leaderboard": cmd_leaderboard, "ab": cmd_ab}
