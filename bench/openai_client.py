"""Client CPU per call of the two adapters of `backend: openai`: aiohttp and the `openai` SDK.

    python -m bench.openai_client [--calls 2000] [--concurrency 8] [--warmup 100]

Why: the inference worker's CPU goes to its upstream client first; this is the number that chose
`client: aiohttp` as the default (docs/architecture.md). The fake upstream
(tests/fakes/openai_upstream.py, zero delay) runs in a process of its own, so `getrusage` of this
process is the client alone: the adapter, its HTTP stack and the event loop.

For each adapter, built by `build_backend` as a deployment with that `client` gets it: `--warmup`
calls, then `--calls` non-streaming calls with `--concurrency` in flight, then the same for
streams (each read to its last Delta). Printed per call: CPU ms (user + system of this process)
and wall ms (elapsed / calls). Numbers are printed, never asserted; on a busy machine the CPU
figure holds better than the wall one.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench._procs import Service, free_port, wait_http
from sluicegate.connectors.inference import build_backend
from sluicegate.connectors.ports import InferenceBackend
from sluicegate.schemas.models import ChatMessage, InferenceTask, SamplingParams
from sluicegate.settings import Deployment

REPO_ROOT = Path(__file__).resolve().parent.parent
CLIENTS = ("aiohttp", "sdk")
# A short chat turn: the streamed answer echoes it, one SSE chunk per word (17 events in all:
# the role, 14 words, the finish and the usage).
PROMPT = "Where is my parcel with order number 4711, it was due last Tuesday?"


@dataclass(frozen=True, slots=True)
class Result:
    client: str
    mode: str
    calls: int
    cpu_s: float
    wall_s: float

    def line(self) -> str:
        cpu_ms = 1000 * self.cpu_s / self.calls
        wall_ms = 1000 * self.wall_s / self.calls
        return (
            f"{self.client:<8} {self.mode:<9} {self.calls:>6} calls  "
            f"cpu {cpu_ms:6.3f} ms/call  wall {wall_ms:6.3f} ms/call  "
            f"({self.calls / self.wall_s:,.0f} calls/s)"
        )


def make_task() -> InferenceTask:
    return InferenceTask(
        event_id=str(uuid.uuid4()),
        occurred_at=datetime.now(UTC),
        tenant_id="bench",
        request_id=str(uuid.uuid4()),
        trace_id="0" * 32,
        span_id="0" * 16,
        producer="bench",
        model="m",
        deployment="d",
        provider_model="fake-model",
        pool="default",
        messages=[ChatMessage(role="user", content=PROMPT)],
        params=SamplingParams(max_tokens=64, temperature=0.2),
    )


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def one_call(backend: InferenceBackend, task: InferenceTask) -> None:
    await backend.complete(task)


async def one_stream(backend: InferenceBackend, task: InferenceTask) -> None:
    async for _delta in backend.stream(task):
        pass


async def run(
    call: Callable[[InferenceBackend, InferenceTask], Awaitable[None]],
    backend: InferenceBackend,
    calls: int,
    concurrency: int,
) -> tuple[float, float]:
    """(CPU s, wall s) of `calls` calls, `concurrency` at a time."""
    task = make_task()
    remaining = calls

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call(backend, task)

    cpu0, wall0 = cpu_s(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return cpu_s() - cpu0, time.perf_counter() - wall0


async def measure(base_url: str, client: str, args: argparse.Namespace) -> list[Result]:
    deployment = Deployment(
        name="bench",
        backend="openai",
        provider_model="fake-model",
        base_url=base_url,
        client=client,
    )
    backend = build_backend(deployment)
    results = []
    try:
        for mode, call in (("complete", one_call), ("stream", one_stream)):
            await run(call, backend, args.warmup, args.concurrency)
            cpu, wall = await run(call, backend, args.calls, args.concurrency)
            results.append(Result(client, mode, args.calls, cpu, wall))
            print(results[-1].line(), flush=True)
    finally:
        await backend.aclose()
    return results


def start_upstream(log_dir: Path) -> tuple[Service, str]:
    port = free_port()
    argv = [sys.executable, "-m", "tests.fakes.openai_upstream", "--port", str(port)]
    service = Service(
        "upstream", [*argv, "--delay-ms", "0"], log_dir / "upstream.log", cwd=REPO_ROOT
    ).start()
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models", service, timeout_s=30)
    except BaseException:
        service.stop()
        raise
    return service, f"http://127.0.0.1:{port}/v1"


def summary(results: list[Result]) -> None:
    by = {(r.client, r.mode): r for r in results}
    for mode in ("complete", "stream"):
        lean, sdk = by.get(("aiohttp", mode)), by.get(("sdk", mode))
        if lean and sdk:
            saved = 1000 * (sdk.cpu_s / sdk.calls - lean.cpu_s / lean.calls)
            print(
                f"{mode}: the SDK costs {sdk.cpu_s / lean.cpu_s:.1f}x the CPU of aiohttp "
                f"({saved:.3f} ms more per call)"
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="measured calls per mode")
    parser.add_argument("--concurrency", type=int, default=8, help="calls in flight")
    parser.add_argument("--warmup", type=int, default=100, help="calls before measuring")
    parser.add_argument("--clients", nargs="+", choices=CLIENTS, default=list(CLIENTS))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-openai-client-") as tmp:
        upstream, base_url = start_upstream(Path(tmp))
        try:
            print(
                f"fake upstream {base_url} (own process); {args.calls} calls per mode, "
                f"{args.concurrency} in flight, after {args.warmup} warm-up calls",
                flush=True,
            )
            results = []
            for client in args.clients:
                results += asyncio.run(measure(base_url, client, args))
            summary(results)
        finally:
            upstream.stop()


if __name__ == "__main__":
    main()
