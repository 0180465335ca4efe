"""docker-compose.yml, Prometheus' scrape config and the Grafana dashboards stay in step with the
code: every scrape target is a compose service on the port its environment configures, and every
metric and label a dashboard queries is one the bridge or the workers actually export.

No Docker here: the files are parsed and cross-checked, not run.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from prometheus_client import CollectorRegistry

from sluicegate.serving.event_metrics import EventMetrics
from sluicegate.serving.lag_metrics import LagCollector
from sluicegate.serving.metrics import BridgeMetrics
from sluicegate.settings import Settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS = ROOT / "infra" / "prometheus" / "prometheus.yml"
GRAFANA = ROOT / "infra" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))

# Labels Prometheus attaches to every scraped series.
TARGET_LABELS = frozenset({"job", "instance"})

# ------------------------------------------------------------------------------ the code's metrics


@dataclass
class Sample:
    """One sample name a registry can expose, with the labels it carries."""

    family: str
    kind: str
    labels: frozenset[str]


def _collectors(registry: CollectorRegistry) -> list[Any]:
    # prometheus_client has no public listing of a registry's collectors.
    return list(registry._collector_to_names)


def exported_samples(*registries: CollectorRegistry) -> dict[str, Sample]:
    """Every sample name the registries can expose, even for families with no child yet
    (a labelled family without children yields no samples from `collect()`)."""
    samples: dict[str, Sample] = {}
    for registry in registries:
        for collector in _collectors(registry):
            for family in collector.describe():
                # Instrumented families carry labels on the collector; custom collectors'
                # families (consumer lag) on the family itself.
                names = getattr(collector, "_labelnames", None)
                if names is None:
                    names = getattr(family, "_labelnames", ())
                labels = frozenset(names) | TARGET_LABELS
                suffixes: dict[str, frozenset[str]] = {
                    "counter": {"_total": labels, "_created": labels},
                    "gauge": {"": labels},
                    "histogram": {
                        "_bucket": labels | {"le"},
                        "_count": labels,
                        "_sum": labels,
                        "_created": labels,
                    },
                    "summary": {"": labels | {"quantile"}, "_count": labels, "_sum": labels},
                }[family.type]
                for suffix, sample_labels in suffixes.items():
                    samples[family.name + suffix] = Sample(family.name, family.type, sample_labels)
    return samples


def _lag_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(LagCollector(admin=None, groups=[]))  # describe() needs no broker
    return registry


SAMPLES = exported_samples(EventMetrics().registry, BridgeMetrics().registry, _lag_registry())


def test_the_sample_table_reads_names_types_and_labels() -> None:
    """Guards the private reads above: if prometheus_client changes, fail here, not silently."""
    assert SAMPLES["sluicegate_rejections_total"].labels == {
        "stage",
        "code",
        "http_status",
        *TARGET_LABELS,
    }
    assert "le" in SAMPLES["sluicegate_inference_latency_seconds_bucket"].labels
    assert "le" not in SAMPLES["sluicegate_inference_latency_seconds_count"].labels
    assert SAMPLES["sluicegate_deployment_breaker_state"].kind == "gauge"
    assert "sluicegate_cache_misses_total" in SAMPLES  # an unlabelled counter
    assert "sluicegate_bridge_in_flight" in SAMPLES
    assert "tenant" in SAMPLES["sluicegate_cost_usd_total"].labels  # workers keep tenant labels
    assert "sluicegate_responses" not in SAMPLES  # a counter only as `_total`


# ------------------------------------------------------------------------------ PromQL, minimally

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<var>\$\{?\w+\}?)
  | (?P<duration>\d+(?:ms|[smhdwy])\b)
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^<>=,(){}])
    """,
    re.VERBOSE,
)
AGGREGATIONS = frozenset(
    "sum min max avg group stddev stdvar count count_values bottomk topk quantile "
    "limitk limit_ratio".split()
)
KEYWORDS = frozenset(
    "by without on ignoring group_left group_right bool and or unless offset".split()
)
COUNTER_FUNCTIONS = frozenset({"rate", "irate", "increase"})
LABEL_CLAUSES = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})


def tokenize(expr: str) -> list[tuple[str, str]]:
    tokens, position = [], 0
    while position < len(expr):
        match = _TOKEN.match(expr, position)
        assert match, f"cannot tokenize {expr[position:]!r} in {expr!r}"
        position = match.end()
        if match.lastgroup != "ws":
            tokens.append((match.lastgroup or "", match.group()))
    return tokens


@dataclass
class Query:
    """What a PromQL expression uses: metric names, the labels of its selectors, and the label
    lists of its `by (...)` / `without (...)` clauses with the metrics they aggregate."""

    metrics: list[str] = field(default_factory=list)
    selector_labels: list[tuple[str, str]] = field(default_factory=list)  # (metric, label)
    groupings: list[tuple[str, list[str], list[str]]] = field(default_factory=list)
    joins: list[list[str]] = field(default_factory=list)  # on/ignoring/group_* label lists
    calls: list[tuple[str, str]] = field(default_factory=list)  # (metric, innermost function)


def _closing(tokens: list[tuple[str, str]], start: int) -> int:
    """Index of the `)` matching the `(` at `start`."""
    depth = 0
    for index in range(start, len(tokens)):
        depth += {"(": 1, ")": -1}.get(tokens[index][1], 0)
        if depth == 0:
            return index
    raise AssertionError(f"unbalanced parentheses in {' '.join(t for _, t in tokens)}")


def _opening(tokens: list[tuple[str, str]], end: int) -> int:
    """Index of the `(` matching the `)` at `end`."""
    depth = 0
    for index in range(end, -1, -1):
        depth += {")": 1, "(": -1}.get(tokens[index][1], 0)
        if depth == 0:
            return index
    raise AssertionError(f"unbalanced parentheses in {' '.join(t for _, t in tokens)}")


def parse(expr: str) -> Query:
    tokens = tokenize(expr)
    query = Query()
    metric_at: dict[int, str] = {}
    skip: set[int] = set()  # label names in clauses and matchers
    functions: list[str] = []  # the function each open parenthesis belongs to ("" for none)
    index = 0
    while index < len(tokens):
        kind, text = tokens[index]
        following = tokens[index + 1][1] if index + 1 < len(tokens) else None
        if text == "(":
            before = tokens[index - 1] if index else ("", "")
            functions.append(before[1] if before[0] == "ident" else "")
        elif text == ")":
            functions.pop()
        if kind == "ident" and text in LABEL_CLAUSES:
            assert following == "(", f"{text} without a label list in {expr!r}"
            end = _closing(tokens, index + 1)
            labels = [t for k, t in tokens[index + 2 : end] if k == "ident"]
            skip.update(range(index + 1, end + 1))
            if text in {"by", "without"}:
                query.groupings.append((text, labels, _aggregated(tokens, index, end, expr)))
            else:
                query.joins.append(labels)
            index = end + 1
            continue
        if text == "{":
            end = next(i for i in range(index, len(tokens)) if tokens[i][1] == "}")
            metric = metric_at.get(index - 1)
            assert metric, f"a selector without a metric name in {expr!r}"
            matchers = tokens[index + 1 : end]
            for position, (matcher_kind, label) in enumerate(matchers):
                if matcher_kind == "ident" and (position == 0 or matchers[position - 1][1] == ","):
                    query.selector_labels.append((metric, label))
            skip.update(range(index, end + 1))
            index = end + 1
            continue
        if (
            kind == "ident"
            and index not in skip
            and text not in KEYWORDS
            and text not in AGGREGATIONS
            and following != "("
        ):
            metric_at[index] = text
            query.metrics.append(text)
            query.calls.append((text, functions[-1] if functions else ""))
        index += 1
    return query


def _aggregated(tokens: list[tuple[str, str]], clause: int, end: int, expr: str) -> list[str]:
    """The metric names inside the argument of the aggregation a `by`/`without` belongs to:
    `sum by (x) (arg)` or `sum (arg) by (x)`."""
    if tokens[clause - 1][1] in AGGREGATIONS:
        start, stop = end + 1, _closing(tokens, end + 1)
    else:
        assert tokens[clause - 1][1] == ")", f"`by` after neither an aggregation nor () in {expr!r}"
        stop = clause - 1
        start = _opening(tokens, stop)
        assert tokens[start - 1][1] in AGGREGATIONS, f"`by` not on an aggregation in {expr!r}"
    return parse(" ".join(text for _, text in tokens[start + 1 : stop])).metrics


def check_query(expr: str, where: str, *, selector_only: bool = False) -> Query:
    """Fail on a metric the code does not export or a label that metric does not carry; and,
    unless `selector_only` (a `label_values` selector), on counters read without rate() or
    increase(), rate() over gauges, and buckets outside histogram_quantile or without `le`."""
    query = parse(expr)
    assert query.metrics, f"{where}: no metric in {expr!r}"
    for metric in query.metrics:
        assert metric in SAMPLES, f"{where}: {metric!r} is not exported by the code ({expr!r})"
    for metric, label in query.selector_labels:
        assert label in SAMPLES[metric].labels, f"{where}: {metric} has no label {label!r}"
    for clause, labels, aggregated in query.groupings:
        assert aggregated, f"{where}: {clause} ({', '.join(labels)}) aggregates no metric"
        for label in labels:
            for metric in aggregated:
                assert label in SAMPLES[metric].labels, (
                    f"{where}: {clause} ({label}) but {metric} has no label {label!r}"
                )
    for metric, function in [] if selector_only else query.calls:
        sample = SAMPLES[metric]
        if sample.kind in {"counter", "histogram"}:
            assert function in COUNTER_FUNCTIONS, (
                f"{where}: {metric} is a counter: read it through rate()/increase() ({expr!r})"
            )
        else:
            assert function not in COUNTER_FUNCTIONS, f"{where}: {function}() over gauge {metric}"
        if metric.endswith("_bucket"):
            assert "histogram_quantile" in expr, f"{where}: {metric} outside histogram_quantile"
            assert any(
                "le" in labels and metric in aggregated for _, labels, aggregated in query.groupings
            ), f"{where}: {metric} aggregated without `le`"
    union = set().union(*(SAMPLES[m].labels for m in query.metrics))
    for labels in query.joins:
        assert set(labels) <= union, f"{where}: unknown join labels {labels} in {expr!r}"
    return query


@pytest.mark.parametrize(
    "expr",
    [
        "rate(sluicegate_responses[5m])",  # a counter without `_total`
        "sum(rate(sluicegate_no_such_metric_total[5m]))",
        "histogram_quantile(0.9, sum by (le) (rate(sluicegate_inference_latency_seconds[5m])))",
        'sum(rate(sluicegate_responses_total{deployment="x"}[5m]))',  # label it does not have
        "sum by (deployment) (rate(sluicegate_responses_total[5m]))",
        "sum(rate(sluicegate_responses_total[5m])) by (tier)",
        "histogram_quantile(0.9, sum by (le) (rate(sluicegate_stage_duration_seconds_sum[5m])))",
        "up",  # not ours
        "sum(sluicegate_responses_total)",  # a raw counter
        "rate(sluicegate_bridge_in_flight[5m])",  # rate() over a gauge
        "histogram_quantile(0.9, sum by (deployment) "
        "(rate(sluicegate_inference_latency_seconds_bucket[5m])))",  # `le` aggregated away
    ],
)
def test_the_checker_rejects_wrong_names_and_labels(expr: str) -> None:
    with pytest.raises(AssertionError):
        check_query(expr, "probe")


def test_the_checker_accepts_good_queries() -> None:
    query = check_query(
        "histogram_quantile(0.95, sum by (le, deployment) "
        '(rate(sluicegate_inference_latency_seconds_bucket{deployment=~"$deployment"}'
        "[$__rate_interval]))) or vector(0)",
        "probe",
    )
    assert query.metrics == ["sluicegate_inference_latency_seconds_bucket"]
    assert query.groupings == [
        ("by", ["le", "deployment"], ["sluicegate_inference_latency_seconds_bucket"])
    ]
    check_query("sum(rate(sluicegate_cache_hits_total[5m])) by (tier, job)", "probe")


# ------------------------------------------------------------------------------ docker-compose


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


COMPOSE_DOC = _load_yaml(COMPOSE)
SERVICES: dict[str, Any] = COMPOSE_DOC["services"]
_INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def environment(service: str) -> dict[str, str]:
    """The service's environment (anchors merged), `${VAR:-default}` resolved to the default."""
    env = SERVICES[service].get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {
        str(name): _INTERPOLATION.sub(lambda m: m.group(2) or "", str(value))
        for name, value in env.items()
    }


def settings_of(service: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings the service's process would build from its compose environment."""
    with monkeypatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("SLUICEGATE_")]:
            patch.delenv(name)
        for name, value in environment(service).items():
            patch.setenv(name, value)
        return Settings()


def sluicegate_command(service: str) -> str | None:
    command = SERVICES[service].get("command") or []
    if isinstance(command, str):
        command = command.split()
    return command[1] if len(command) > 1 and command[0] == "sluicegate" else None


def metrics_endpoint(service: str, monkeypatch: pytest.MonkeyPatch) -> tuple[str, int] | None:
    """(listen host, port) of the service's /metrics, from its settings; None if it has none."""
    settings = settings_of(service, monkeypatch)
    match sluicegate_command(service):
        case "bridge":
            return settings.bridge.host, settings.bridge.port
        case "worker":
            port = settings.worker.metrics_port
        case "inference":
            port = settings.worker.inference_metrics_port
        case _:
            return None
    return (settings.worker.metrics_host, port) if port is not None else None


def test_every_image_is_pinned() -> None:
    for name, service in SERVICES.items():
        if "build" in service:
            continue
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest", f"{name}: image {image!r} is not pinned"
        assert "/" not in tag


def test_the_stack_has_every_service() -> None:
    commands = {sluicegate_command(name) for name in SERVICES}
    assert {"bridge", "worker", "inference", "sink"} <= commands
    assert {"kafka", "clickhouse", "prometheus", "grafana"} <= set(SERVICES)


def test_depends_on_names_services() -> None:
    for name, service in SERVICES.items():
        depends = service.get("depends_on") or []
        for other in depends if isinstance(depends, list) else depends.keys():
            assert other in SERVICES, f"{name} depends on unknown service {other!r}"
            condition = depends[other].get("condition") if isinstance(depends, dict) else None
            if condition == "service_healthy":
                assert "healthcheck" in SERVICES[other], f"{other} has no healthcheck"


def test_bind_mounts_exist_and_volumes_are_declared() -> None:
    declared = set(COMPOSE_DOC.get("volumes") or {})
    for name, service in SERVICES.items():
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in declared, f"{name}: named volume {source!r} not declared"


def test_metrics_listen_on_every_interface_and_are_exposed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in SERVICES:
        endpoint = metrics_endpoint(name, monkeypatch)
        if endpoint is None:
            continue
        host, port = endpoint
        assert host == "0.0.0.0", f"{name}: /metrics listens on {host}, unreachable in compose"
        service = SERVICES[name]
        published = [str(p).rsplit(":", 1)[-1].split("/")[0] for p in service.get("ports") or []]
        exposed = [str(p) for p in service.get("expose") or []]
        assert str(port) in published + exposed, (
            f"{name}: port {port} neither exposed nor published"
        )


def test_the_sink_writes_to_the_clickhouse_service(monkeypatch: pytest.MonkeyPatch) -> None:
    sink = next(name for name in SERVICES if sluicegate_command(name) == "sink")
    analytics = settings_of(sink, monkeypatch).analytics
    assert analytics.url is not None
    url = urlsplit(analytics.url)
    assert url.hostname in SERVICES and url.port == 8123
    clickhouse = environment(url.hostname)
    assert analytics.username == clickhouse["CLICKHOUSE_USER"]
    assert analytics.password is not None
    assert analytics.password.get_secret_value() == clickhouse["CLICKHOUSE_PASSWORD"]
    assert analytics.database == clickhouse["CLICKHOUSE_DB"]
    assert url.hostname in SERVICES[sink]["depends_on"]


# ------------------------------------------------------------------------------ Prometheus

PROMETHEUS_DOC = _load_yaml(PROMETHEUS)


def _mount_target(service: str, source: Path) -> str:
    for volume in SERVICES[service].get("volumes") or []:
        parts = volume.split(":")
        if parts[0].startswith(".") and (ROOT / parts[0]).resolve() == source.resolve():
            return parts[1]
    raise AssertionError(f"{service} does not mount {source.relative_to(ROOT)}")


def test_prometheus_loads_this_config() -> None:
    target = _mount_target("prometheus", PROMETHEUS)
    assert f"--config.file={target}" in SERVICES["prometheus"]["command"]


def test_every_scrape_target_is_a_service_on_its_configured_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scraped: set[str] = set()
    default_interval = PROMETHEUS_DOC.get("global", {}).get("scrape_interval")
    for job in PROMETHEUS_DOC["scrape_configs"]:
        assert job.get("scrape_interval", default_interval) == "5s", job["job_name"]
        assert job.get("metrics_path", "/metrics") == "/metrics"
        for static in job["static_configs"]:
            for target in static["targets"]:
                host, _, port = target.partition(":")
                assert host in SERVICES, f"{job['job_name']}: {host!r} is no compose service"
                endpoint = metrics_endpoint(host, monkeypatch)
                assert endpoint is not None, f"{host} serves no /metrics"
                assert int(port) == endpoint[1], f"{target}: {host} listens on {endpoint[1]}"
                scraped.add(host)
    serving = {name for name in SERVICES if metrics_endpoint(name, monkeypatch) is not None}
    assert scraped == serving, f"not scraped: {serving - scraped}"
    assert {sluicegate_command(name) for name in scraped} == {"bridge", "worker", "inference"}


# ------------------------------------------------------------------------------ Grafana


def _provisioning(kind: str) -> list[dict[str, Any]]:
    files = sorted((GRAFANA / "provisioning" / kind).glob("*.y*ml"))
    assert files, f"no {kind} provisioning"
    return [_load_yaml(path) for path in files]


DATASOURCES = [ds for doc in _provisioning("datasources") for ds in doc["datasources"]]
DATASOURCE_UIDS = {ds["uid"]: ds["type"] for ds in DATASOURCES}


def test_the_prometheus_datasource_points_at_the_prometheus_service() -> None:
    prometheus = [ds for ds in DATASOURCES if ds["type"] == "prometheus"]
    assert len(prometheus) == 1
    url = urlsplit(prometheus[0]["url"])
    assert url.hostname == "prometheus" and url.hostname in SERVICES
    assert f"{url.port}:{url.port}" in SERVICES["prometheus"]["ports"]


def test_grafana_mounts_provisioning_and_dashboards() -> None:
    provisioning = _mount_target("grafana", GRAFANA / "provisioning")
    assert provisioning == "/etc/grafana/provisioning"
    dashboards = _mount_target("grafana", GRAFANA / "dashboards")
    paths = [
        provider["options"]["path"]
        for doc in _provisioning("dashboards")
        for provider in doc["providers"]
    ]
    assert paths == [dashboards]
    env = environment("grafana")
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert (
        "${GRAFANA_ADMIN_PASSWORD:-"
        in SERVICES["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    )
    home = env.get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert home.startswith(dashboards + "/")
        assert (GRAFANA / "dashboards" / home.removeprefix(dashboards + "/")).is_file()


def _load_dashboard(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard.get("panels", []):
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # a collapsed row keeps its panels inside
    return panels


def _variables(dashboard: dict[str, Any]) -> set[str]:
    return {v["name"] for v in dashboard.get("templating", {}).get("list", [])}


def _datasource_ok(reference: Any, dashboard: dict[str, Any]) -> bool:
    if isinstance(reference, dict):
        uid = reference.get("uid", "")
        if uid.startswith("$"):
            return uid.strip("${}") in _variables(dashboard)
        return DATASOURCE_UIDS.get(uid) == reference.get("type")
    if isinstance(reference, str) and reference.startswith("$"):
        return reference.strip("${}") in _variables(dashboard)
    return False


def test_there_are_dashboards_with_unique_uids_and_titles() -> None:
    names = {path.name for path in DASHBOARDS}
    assert {"gateway-overview.json", "bridge.json"} <= names
    dashboards = [_load_dashboard(path) for path in DASHBOARDS]
    uids = [d.get("uid") for d in dashboards]
    assert all(uids) and len(set(uids)) == len(uids), uids
    assert all(len(uid) <= 40 for uid in uids)
    titles = [d.get("title") for d in dashboards]
    assert all(titles) and len(set(titles)) == len(titles), titles


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_structure_and_datasources(path: Path) -> None:
    dashboard = _load_dashboard(path)
    assert isinstance(dashboard.get("schemaVersion"), int)
    panels = _panels(dashboard)
    ids = [panel["id"] for panel in panels]
    assert len(set(ids)) == len(ids), f"{path.name}: duplicate panel ids"
    for panel in panels:
        where = f"{path.name}: {panel.get('title')!r}"
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["w"] > 0 and grid["h"] > 0, where
        if panel["type"] == "row":
            assert not panel.get("targets"), where
            continue
        assert panel.get("title"), f"{path.name}: panel {panel['id']} has no title"
        assert _datasource_ok(panel.get("datasource"), dashboard), f"{where}: bad datasource"
        targets = panel.get("targets") or []
        assert targets, f"{where}: no query"
        refs = [target["refId"] for target in targets]
        assert len(set(refs)) == len(refs), f"{where}: duplicate refIds"
        for target in targets:
            if "datasource" in target:
                assert _datasource_ok(target["datasource"], dashboard), f"{where}: bad datasource"
    for variable in dashboard.get("templating", {}).get("list", []):
        if "datasource" in variable:
            assert _datasource_ok(variable["datasource"], dashboard), variable["name"]


_LABEL_VALUES = re.compile(r"^label_values\(\s*(.+?)\s*,\s*(\w+)\s*\)$")
_LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_VARIABLE_USE = re.compile(r"\$\{?(\w+)")


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_queries_use_exported_metrics_and_labels(path: Path) -> None:
    dashboard = _load_dashboard(path)
    variables = _variables(dashboard)
    for panel in _panels(dashboard):
        for target in panel.get("targets") or []:
            where = f"{path.name}: {panel['title']!r} {target['refId']}"
            expr = target["expr"]
            query = check_query(expr, where)
            for used in _VARIABLE_USE.findall(expr):
                assert used.startswith("__") or used in variables, f"{where}: unknown ${used}"
            legend_labels = set().union(*(SAMPLES[m].labels for m in query.metrics))
            for label in _LEGEND_LABEL.findall(target.get("legendFormat", "")):
                assert label in legend_labels, f"{where}: legend uses unknown label {label!r}"
            if len(query.groupings) == 1 and query.groupings[0][0] == "by":
                kept = set(query.groupings[0][1]) - {"le"}
                for label in _LEGEND_LABEL.findall(target.get("legendFormat", "")):
                    assert label in kept, f"{where}: legend label {label!r} aggregated away"
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        definition = variable.get("definition") or variable["query"]
        if isinstance(definition, dict):
            definition = definition["query"]
        match = _LABEL_VALUES.match(definition)
        assert match, f"{path.name}: variable {variable['name']}: unsupported {definition!r}"
        selector, label = match.groups()
        query = check_query(
            selector, f"{path.name}: variable {variable['name']}", selector_only=True
        )
        assert all(label in SAMPLES[m].labels for m in query.metrics), variable["name"]


def test_the_dashboards_cover_every_exported_family() -> None:
    """A new metric shows up on a dashboard (or is named here as deliberately left off)."""
    left_off: set[str] = set()
    used: set[str] = set()
    for path in DASHBOARDS:
        for panel in _panels(_load_dashboard(path)):
            for target in panel.get("targets") or []:
                used.update(
                    SAMPLES[m].family for m in parse(target["expr"]).metrics if m in SAMPLES
                )
    families = {sample.family for sample in SAMPLES.values()}
    assert families - used <= left_off, f"families on no dashboard: {sorted(families - used)}"


def test_the_gpu_serving_service_configures_a_vllm_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    assert SERVICES["serve-gpu"]["profiles"] == ["gpu"]  # never started without a GPU host
    assert sluicegate_command("serve-gpu") == "serve"
    pool = settings_of("serve-gpu", monkeypatch).ray.pools["gpu"]
    assert pool.vllm is not None and pool.vllm.quantization == "awq" and pool.num_gpus == 0.5
