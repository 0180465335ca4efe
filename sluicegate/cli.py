"""`sluicegate`: run the pipeline on embedded defaults and look at its topics.

sluicegate up          broker (if needed), topics, workers, bridge and sink; Ctrl-C stops them
sluicegate down        stop what `up` started, and the local broker
sluicegate worker      the Faust worker (stateful stages) alone
sluicegate inference   the inference worker (consumes the pool topics) alone
sluicegate bridge      the HTTP bridge alone
sluicegate sink        the analytics sink (events → ClickHouse / chDB) alone
sluicegate sql "SQL"   run a read-only query on the analytics store; tab-separated rows
sluicegate topics      create missing topics and list the catalogue
sluicegate send FILE   publish a RequestReceived from an OpenAI-style JSON body
sluicegate tail TOPIC  decode a topic's Avro records to JSON lines
sluicegate trace ID    a request's spans (bridge, admission, inference) as a waterfall
sluicegate trace-export  the traces topic → an OpenTelemetry backend over OTLP/HTTP (optional)
sluicegate keys create|list|rotate|revoke   API keys on sg.identity (operator)
sluicegate ingest PATH… --kb NAME   parse files into a knowledge base (sg.documents)
sluicegate rag         the RAG ingestion worker (chunk, embed, index); --reindex replays
sluicegate rag rechunk|delete   re-chunk a knowledge base by replay; remove documents
sluicegate audit verify  check the audit trail's hash chains
sluicegate prompts create|update|list|show|diff|label|rollback|render   the prompt registry
sluicegate eval run|compare|keep   eval datasets through the pipeline (docs/evals.md)
sluicegate replay --since=-2h …    backtest recorded traffic against a new model or prompt
sluicegate serve [--address ray://…]   the inference pools as Ray Serve replicas (extra `ray`)
sluicegate leaderboard   models x prompt versions by score, cost and latency
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from sluicegate.cli_evals import add_parsers as add_eval_parsers
from sluicegate.cli_identity import add_parsers as add_identity_parsers
from sluicegate.cli_identity import bootstrap_key
from sluicegate.cli_prompts import add_parsers as add_prompt_parsers
from sluicegate.cli_rag import add_parsers as add_rag_parsers
from sluicegate.cli_serve import add_parsers as add_serve_parsers
from sluicegate.settings import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
KAFKA_SCRIPT = REPO_ROOT / "infra" / "kafka" / "kafka.sh"


def _state_dir() -> Path:
    path = Path(os.environ.get("SLUICEGATE_HOME", Path.home() / ".sluicegate"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def start_broker(settings: Settings) -> str:
    """Start the local jar broker (a no-op when it runs already); return its bootstrap address."""
    port = settings.kafka.bootstrap_servers.rsplit(":", 1)[-1]
    env = {**os.environ, "SLUICEGATE_KAFKA_PORT": port}
    out = subprocess.run(
        ["bash", str(KAFKA_SCRIPT), "start"], check=True, env=env, capture_output=True, text=True
    )
    return out.stdout.strip().splitlines()[-1]


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    if not args.no_broker:
        print(f"broker: {start_broker(settings)}", flush=True)
    from sluicegate.streams.topics import ensure_topics

    created = ensure_topics(settings)
    print(f"topics: {len(created)} created", flush=True)
    state = _state_dir()
    token = bootstrap_key(settings, state)
    pids = state / "up.pids"
    names = ("worker", "inference", "bridge", "sink", "rag")
    children = [_spawn(name, state / f"{name}.log" if args.detach else None) for name in names]
    pids.write_text("\n".join(str(c.pid) for c in children))
    url = f"http://{settings.bridge.host}:{settings.bridge.port}"
    model = settings.models[0].name
    if not _wait_ready(f"{url}/readyz", children, timeout_s=120):
        _stop(children)
        where = f"the logs in {state}" if args.detach else "the output above"
        print(f"sluicegate did not become ready; see {where}", file=sys.stderr)
        return 1
    print(f"\nsluicegate is up at {url}/v1  (models: {', '.join(m.name for m in settings.models)})")
    auth = ""
    if token:
        print(f"your admin key (also in {state / 'bootstrap-key'}): {token}")
        auth = f"-H 'Authorization: Bearer {token}' "
    print(
        "try:\n  curl -s "
        + url
        + "/v1/chat/completions -H 'Content-Type: application/json' "
        + auth
        + f'-d \'{{"model": "{model}", "messages": [{{"role": "user", "content": '
        '"Say hello in five words."}]}\'\n',
        flush=True,
    )
    if args.detach:
        logs = ", ".join(str(state / f"{c}.log") for c in names)
        print(f"logs: {logs}; stop with `sluicegate down`")
        return 0
    try:
        while all(c.poll() is None for c in children):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    _stop(children)
    pids.unlink(missing_ok=True)
    return 0


def _spawn(name: str, log: Path | None) -> subprocess.Popen[bytes]:
    """A child process; detached ones write to a log file so nothing holds our stdout open."""
    output = log.open("ab") if log is not None else None
    return subprocess.Popen(
        [sys.executable, "-m", "sluicegate.cli", name],
        stdout=output,
        stderr=subprocess.STDOUT if output else None,
        start_new_session=log is not None,
    )


def _wait_ready(url: str, children: list[subprocess.Popen[bytes]], timeout_s: float) -> bool:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(c.poll() is not None for c in children):
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


def _stop(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()


def cmd_down(settings: Settings, args: argparse.Namespace) -> int:
    pids = _state_dir() / "up.pids"
    if pids.exists():
        for pid in pids.read_text().split():
            try:
                os.kill(int(pid), signal.SIGTERM)
            except ProcessLookupError:
                pass
        pids.unlink()
    if not args.keep_broker:
        subprocess.run(["bash", str(KAFKA_SCRIPT), "stop"], check=False)
    return 0


# The Faust worker embeds on one thread beside its event loop (the semantic cache, drift's
# sampled prompts). A multi-threaded BLAS only makes those matmuls wait for a helper thread that
# competes with the loop for the same cores: under load an embedding took several times its
# ~13 ms of CPU. One BLAS thread, set before numpy is first imported; an operator's value wins.
_SINGLE_THREADED_BLAS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    for variable in _SINGLE_THREADED_BLAS:
        os.environ.setdefault(variable, "1")
    from sluicegate.streams.worker import run_worker

    sys.argv = [sys.argv[0], "worker"]  # faust.Worker reads argv
    run_worker(settings)
    return 0


def cmd_inference(settings: Settings, args: argparse.Namespace) -> int:
    from sluicegate.streams.worker import run_inference

    run_inference(settings)
    return 0


def cmd_bridge(settings: Settings, args: argparse.Namespace) -> int:
    from sluicegate.serving.server import run_bridge

    run_bridge(settings)
    return 0


def cmd_sink(settings: Settings, args: argparse.Namespace) -> int:
    from sluicegate.serving.analytics_sink import run_sink

    run_sink(settings)
    return 0


def cmd_trace_export(settings: Settings, args: argparse.Namespace) -> int:
    try:
        from sluicegate.serving.trace_exporter import run_trace_export
    except ImportError as error:  # the `otel` extra is not installed
        print(str(error), file=sys.stderr)
        return 2
    run_trace_export(settings)
    return 0


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if hasattr(value, "isoformat"):
        return str(value.isoformat())
    return str(value)


def _query(settings: Settings, query: str) -> tuple[list[str], list[Any]]:
    """Through the running sink's endpoint when it holds chDB; else open the store directly."""
    from sluicegate.connectors.analytics import open_analytics
    from sluicegate.serving.analytics_sink import query_running_sink

    answer = None if settings.analytics.url else query_running_sink(settings, query)
    if answer is None:
        store = open_analytics(settings.analytics)
        try:
            result = store.query(query, readonly=True)
        finally:
            store.close()
        answer = (result.columns, result.rows)
    return list(answer[0]), list(answer[1])


def cmd_sql(settings: Settings, args: argparse.Namespace) -> int:
    from sluicegate.errors import AnalyticsError

    try:
        columns, rows = _query(settings, args.query)
    except AnalyticsError as error:
        print(f"analytics: {error}", file=sys.stderr)
        return 1
    print("\t".join(columns))
    for row in rows:
        print("\t".join(_cell(value) for value in row))
    return 0


def cmd_trace(settings: Settings, args: argparse.Namespace) -> int:
    """The request's spans from the analytics store, as a waterfall."""
    from sluicegate.errors import AnalyticsError
    from sluicegate.waterfall import SpanRow, render_waterfall

    if not all(c.isalnum() or c == "-" for c in args.request_id):
        print("a request id is letters, digits and dashes", file=sys.stderr)
        return 2
    query = (
        "SELECT span_id, parent_span_id, name, toUnixTimestamp64Milli(start), "
        "toUnixTimestamp64Milli(end), status, attributes FROM spans FINAL "
        f"WHERE request_id = '{args.request_id.removeprefix('chatcmpl-')}' ORDER BY start"
    )
    try:
        _columns, rows = _query(settings, query)
    except AnalyticsError as error:
        print(f"analytics: {error}", file=sys.stderr)
        return 1
    spans = [
        SpanRow(
            str(r[0]),
            r[1] or None,
            str(r[2]),
            float(r[3]),
            float(r[4]),
            str(r[5]),
            dict(r[6]) if isinstance(r[6], dict) else {},
        )
        for r in rows
    ]
    if not spans:
        print(
            f"no spans for {args.request_id} (yet: the sink batches for about a second)",
            file=sys.stderr,
        )
        return 1
    print(render_waterfall(spans))
    return 0


def cmd_topics(settings: Settings, args: argparse.Namespace) -> int:
    from sluicegate.streams.topics import catalogue, ensure_topics

    created = set(ensure_topics(settings))
    for spec in catalogue(settings):
        mark = "created" if spec.name in created else "exists"
        print(
            f"{spec.name:32} {mark:8} key={spec.key:12} cleanup={spec.cleanup} "
            f"events={','.join(spec.events)}"
        )
    return 0


def _publish(settings: Settings, topic: str, key: str, event: Any) -> bool:
    """One event, journaled like the bridge does; False when it was not acknowledged."""
    from sluicegate.cli_kafka import publish_events
    from sluicegate.errors import BrokerError

    try:
        publish_events(settings, topic, [(key, event)])
    except BrokerError:
        return False
    return True


def cmd_catalogue(settings: Settings, args: argparse.Namespace) -> int:
    """`publish FILE`: validate, create the topics its pools need, make it live everywhere;
    `show`: the catalogue the processes use now."""
    from sluicegate.settings import Catalogue
    from sluicegate.streams.catalogue_view import KEY, CatalogueView, catalogue_event
    from sluicegate.streams.topics import ensure_topics

    if args.action == "publish":
        try:
            catalogue = Catalogue.from_file(Path(args.file))
        except ValueError as error:
            print(f"invalid catalogue: {error}", file=sys.stderr)
            return 2
        ensure_topics(settings.with_catalogue(catalogue))  # new pools get their topics first
        if not _publish(settings, "catalogue", KEY, catalogue_event(catalogue, source=args.file)):
            print("could not deliver the catalogue", file=sys.stderr)
            return 1
        print(
            json.dumps(
                {
                    "version": catalogue.version,
                    "deployments": len(catalogue.deployments),
                    "models": [m.name for m in catalogue.models],
                }
            )
        )
        return 0
    from sluicegate.connectors.schema_registry import build_serde

    current = [settings.catalogue]
    view = CatalogueView(settings=settings, serde=build_serde(settings))
    view.subscribe(current.append)
    view.start()
    view.close()
    print(json.dumps({"version": current[-1].version, **current[-1].model_dump(mode="json")}))
    return 0


def cmd_send(settings: Settings, args: argparse.Namespace) -> int:
    from sluicegate.processors.envelope import new_event_id, new_span_id, new_trace_id, now
    from sluicegate.serving.openai_format import InvalidRequest, parse_chat_request

    body = json.loads(Path(args.file).read_text())
    try:
        event = parse_chat_request(
            body,
            event_id=new_event_id(),
            occurred_at=now(),
            tenant_id=args.tenant,
            request_id=str(uuid.uuid4()),
            trace_id=new_trace_id(),
            span_id=new_span_id(),
            producer="cli",
        )
    except InvalidRequest as error:
        print(f"invalid request: {error.message}", file=sys.stderr)
        return 2
    if not _publish(settings, "requests", event.tenant_id, event):
        print("could not deliver the event", file=sys.stderr)
        return 1
    print(json.dumps({"request_id": event.request_id, "topic": settings.topic("requests")}))
    return 0


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def cmd_tail(settings: Settings, args: argparse.Namespace) -> int:
    from confluent_kafka import Consumer, TopicPartition

    from sluicegate.connectors.schema_registry import build_serde

    topic = args.topic if "." in args.topic else settings.topic(args.topic)
    serde = build_serde(settings)
    consumer = Consumer(
        {
            **settings.kafka.client_config(),
            "group.id": f"sluicegate-tail-{uuid.uuid4()}",
            "enable.auto.commit": False,
        }
    )
    metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
    if metadata is None or metadata.error is not None:
        print(f"no topic {topic}", file=sys.stderr)
        return 2
    start = -2 if args.from_beginning else -1  # OFFSET_BEGINNING / OFFSET_END
    consumer.assign([TopicPartition(topic, p, start) for p in metadata.partitions])
    shown = 0
    idle_since = time.monotonic()
    try:
        while args.limit is None or shown < args.limit:
            message = consumer.poll(0.5)
            if message is None:
                if args.idle_exit and time.monotonic() - idle_since > args.idle_exit:
                    break
                continue
            idle_since = time.monotonic()
            if message.error():
                continue
            try:
                event = serde.decode(message.value())
                record = {"_event": type(event).__name__, **event.model_dump(mode="json")}
            except Exception as error:
                record = {"_undecodable": str(error)}
            record["_offset"] = f"{message.topic()}[{message.partition()}]@{message.offset()}"
            print(json.dumps(record, default=_jsonable), flush=True)
            shown += 1
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="sluicegate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = root.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run everything on embedded defaults")
    up.add_argument("--no-broker", action="store_true", help="use SLUICEGATE_KAFKA__... as is")
    up.add_argument("--detach", action="store_true", help="return once ready; `down` stops")
    down = sub.add_parser("down", help="stop what `up` started")
    down.add_argument("--keep-broker", action="store_true")
    sub.add_parser("worker", help="run the Faust worker")
    sub.add_parser("inference", help="run the inference worker")
    trace = sub.add_parser("trace", help="a request's spans as a waterfall")
    trace.add_argument("request_id", help="request id (or the chatcmpl-… response id)")
    sub.add_parser("bridge", help="run the HTTP bridge")
    sub.add_parser("sink", help="run the analytics sink")
    sub.add_parser("trace-export", help="export the traces topic over OTLP (needs [otel])")
    sql = sub.add_parser("sql", help="query the analytics store (read-only)")
    sql.add_argument("query", help='e.g. "SELECT count() FROM requests FINAL"')
    sub.add_parser("topics", help="create missing topics, list the catalogue")
    send = sub.add_parser("send", help="publish a request event from a JSON body")
    send.add_argument("file")
    send.add_argument("--tenant", default="default")
    catalogue = sub.add_parser("catalogue", help="publish or show the live model catalogue")
    catalogue_sub = catalogue.add_subparsers(dest="action", required=True)
    catalogue_sub.add_parser(
        "publish", help="validate a YAML catalogue and make it live"
    ).add_argument("file")
    catalogue_sub.add_parser("show", help="print the catalogue in use")
    tail = sub.add_parser("tail", help="print a topic's events as JSON lines")
    tail.add_argument("topic", help="catalogue name (responses) or full name (sg.responses)")
    tail.add_argument("--from-beginning", action="store_true")
    tail.add_argument("--limit", type=int)
    tail.add_argument("--idle-exit", type=float, help="stop after this many idle seconds")
    COMMANDS.update(add_identity_parsers(sub))
    COMMANDS.update(add_rag_parsers(sub))
    COMMANDS.update(add_eval_parsers(sub))
    COMMANDS.update(add_prompt_parsers(sub))
    COMMANDS.update(add_serve_parsers(sub))
    return root


COMMANDS = {
    "up": cmd_up,
    "down": cmd_down,
    "worker": cmd_worker,
    "inference": cmd_inference,
    "trace": cmd_trace,
    "bridge": cmd_bridge,
    "sink": cmd_sink,
    "trace-export": cmd_trace_export,
    "sql": cmd_sql,
    "topics": cmd_topics,
    "send": cmd_send,
    "catalogue": cmd_catalogue,
    "tail": cmd_tail,
}


def _secrets_of(settings: Settings) -> set[str]:
    """Every credential this process knows: the settings' own and the providers' keys."""
    from sluicegate.errors import ConfigurationError
    from sluicegate.secrets import known_secrets

    found = known_secrets(settings)
    for deployment in settings.deployments:
        try:
            key = deployment.api_key
        except ConfigurationError:  # reported where the backend is built
            continue
        if key is not None:
            found |= known_secrets(key)
    return found


def main(argv: list[str] | None = None) -> int:
    from sluicegate.heap import tune_collector
    from sluicegate.secrets import install_log_redaction

    args = parser().parse_args(argv)
    settings = Settings()
    install_log_redaction(_secrets_of(settings))  # before any process logs a thing
    tune_collector(settings.runtime)
    return COMMANDS[args.command](settings, args)


if __name__ == "__main__":
    raise SystemExit(main())
