"""The targets of the failing-upstream benchmark (bench/gateway_failures.py): two fake upstreams
(`primary` fails a seeded random share of chat requests, `backup` never fails) and, in front of
them, sluicegate or the LiteLLM proxy configured with the same retry and fallback.

Built on bench/_targets.py (the same `Target`, broker, consumer-group wait, clean-up and LiteLLM
virtualenv) with the catalogue and the proxy config of this benchmark instead of one upstream.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._procs import Service, free_port, http_status, wait_http
from bench._targets import (
    CHAT,
    LITELLM_CONFIG,
    LITELLM_VENV,
    REPO_ROOT,
    Target,
    _wait_for_group,
    bench_settings,
    broker_pid,
    delete_kafka_state,
    ensure_broker,
    ensure_litellm,
    register_bench_key,
)

ALIAS = "gpt-bench"


@dataclass(frozen=True)
class Resilience:
    """The retry and fallback settings both gateways get (as far as each can express them)."""

    max_retries: int = 1  # retries on the same deployment before falling back
    backoff_base_s: float = 0.01
    backoff_max_s: float = 0.1
    breaker_failures: int = 10_000  # within breaker_window_s; sluicegate's default is 5
    breaker_window_s: float = 30.0
    breaker_cooldown_s: float = 30.0


def start_fake(name: str, log_dir: Path, *, fail_rate: float = 0.0, seed: int = 0) -> Target:
    """A zero-latency fake upstream; `fail_rate` > 0 makes it answer 500 at random."""
    port = free_port()
    argv = [sys.executable, "-m", "tests.fakes.openai_upstream", "--port", str(port)]
    argv += ["--delay-ms", "0", "--model", name]
    if fail_rate:
        argv += ["--fail-rate", str(fail_rate), "--fail-status", "500", "--seed", str(seed)]
    service = Service(name, argv, log_dir / f"{name}.log", cwd=REPO_ROOT).start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/v1/models", service, timeout_s=30)
    except BaseException:
        service.stop()
        raise
    return Target(name, f"{base}{CHAT}", {name: service})


def fake_base(upstream: Target) -> str:
    """`http://host:port/v1` of a fake upstream."""
    return upstream.url.removesuffix("/chat/completions")


def fake_stats(upstream: Target, *, reset: bool) -> dict[str, int]:
    """Chat requests and random failures the fake saw since its last reset (then reset it)."""
    import urllib.request

    root = upstream.url.removesuffix(CHAT)
    with urllib.request.urlopen(f"{root}/__fake__/stats", timeout=10) as response:
        stats: dict[str, int] = json.loads(response.read())
    if reset:
        http_status(f"{root}/__fake__/reset", method="POST", body=b"")
    return stats


# -- sluicegate ---------------------------------------------------------------------------


def start_sluicegate_failover(
    *,
    name: str,
    primary_base: str,
    backup_base: str,
    resilience: Resilience,
    bootstrap: str,
    log_dir: Path,
    run_id: str,
    inference_concurrency: int,
    request_timeout_s: float,
) -> tuple[Target, dict[str, Any]]:
    """Bridge + Faust worker + inference worker with alias `gpt-bench` → [primary, backup].

    Returns the target and the settings it runs with (JSON, for the report); the target's
    clean-up removes the run's topics and consumer groups.
    """
    from sluicegate.settings import Deployment, ModelAlias, ResilienceSettings

    ensure_broker(bootstrap)
    data_dir = Path(tempfile.mkdtemp(prefix=f"sgfail-{run_id}-"))

    def deployment(dep_name: str, base: str, priority: int) -> Deployment:
        return Deployment(
            name=dep_name,
            backend="openai",
            provider_model="fake",
            base_url=base,
            api_key_env="BENCH_KEY",
            priority=priority,
        )

    base = bench_settings(
        upstream_base=primary_base,
        bootstrap=bootstrap,
        run_id=run_id,
        inference_concurrency=inference_concurrency,
        request_timeout_s=request_timeout_s,
        data_dir=data_dir,
    )
    settings = base.model_copy(
        update=dict(
            resilience=ResilienceSettings(
                max_retries=resilience.max_retries,
                backoff_base_s=resilience.backoff_base_s,
                backoff_max_s=resilience.backoff_max_s,
                breaker_failures=resilience.breaker_failures,
                breaker_window_s=resilience.breaker_window_s,
                breaker_cooldown_s=resilience.breaker_cooldown_s,
            ),
            deployments=[
                deployment("primary", primary_base, 0),
                deployment("backup", backup_base, 1),
            ],
            models=[
                ModelAlias(
                    name=ALIAS,
                    deployments=["primary", "backup"],
                    strategy="priority",
                    description="primary fails at random, backup never",
                )
            ],
        )
    )
    env = {**os.environ, "BENCH_KEY": "sk-bench", **settings.to_env()}
    url = f"http://127.0.0.1:{settings.bridge.port}"
    target = Target(
        name,
        f"{url}{CHAT}",
        {},
        extra_pids={"kafka": broker_pid()},
        headers={"Authorization": f"Bearer {register_bench_key(settings)}"},
    )
    target.cleanup.append(lambda: shutil.rmtree(data_dir, ignore_errors=True))
    target.cleanup.append(lambda: delete_kafka_state(settings))
    try:
        cli = [sys.executable, "-m", "sluicegate.cli"]
        logs = {role: log_dir / f"{name}-{role}.log" for role in ("worker", "inference", "bridge")}
        worker = Service("worker", [*cli, "worker"], logs["worker"], env=env, cwd=REPO_ROOT)
        target.services["worker"] = worker.start()
        inference = Service(
            "inference", [*cli, "inference"], logs["inference"], env=env, cwd=REPO_ROOT
        )
        target.services["inference"] = inference.start()
        _wait_for_group(bootstrap, settings.worker.app_id, [worker], timeout_s=120)
        _wait_for_group(
            bootstrap, f"{settings.worker.app_id}-inference", [inference], timeout_s=120
        )
        bridge = Service("bridge", [*cli, "bridge"], logs["bridge"], env=env, cwd=REPO_ROOT)
        target.services = {"bridge": bridge.start(), **target.services}
        wait_http(f"{url}/readyz", bridge, timeout_s=60)
    except BaseException:
        target.stop()
        raise
    return target, {
        "topic_prefix": settings.kafka.topic_prefix,
        "resilience": settings.resilience.model_dump(mode="json"),
        "inference_concurrency": inference_concurrency,
        "request_timeout_s": request_timeout_s,
    }


# -- LiteLLM ------------------------------------------------------------------------------

# The same two upstreams as two model groups, the second the fallback of the first: the router
# retries the primary group `num_retries` times, then calls the fallback group. A single-
# deployment group is never put in cooldown by the router (its safety net), so, like sluicegate
# with a high breaker threshold, every request tries the primary first.
LITELLM_MODELS = """\
model_list:
  - model_name: {alias}
    litellm_params:
      model: openai/fake
      api_base: {primary}
      api_key: sk-bench
  - model_name: {alias}-backup
    litellm_params:
      model: openai/fake
      api_base: {backup}
      api_key: sk-bench
router_settings:
  num_retries: {num_retries}
  retry_after: 0
  fallbacks: [{{"{alias}": ["{alias}-backup"]}}]
"""


def litellm_config(primary: str, backup: str, num_retries: int) -> str:
    """bench/_targets.py's proxy config (no callbacks, database or cost map) with our models."""
    models = LITELLM_MODELS.format(
        alias=ALIAS, primary=primary, backup=backup, num_retries=num_retries
    )
    rest = LITELLM_CONFIG[LITELLM_CONFIG.index("litellm_settings:") :]
    return models + rest


def litellm_backoff_env(resilience: Resilience | None) -> dict[str, str]:
    """LiteLLM's retry sleep is `INITIAL_RETRY_DELAY·2^n + JITTER·U(0,1)` (0.5 s + up to 0.75 s
    by default, litellm/utils.py `calculate_retry_after`); with INITIAL_RETRY_DELAY 0 and
    JITTER = sluicegate's backoff base, the first retry waits U(0, base) as sluicegate's does
    (full jitter). `None` keeps LiteLLM's defaults."""
    if resilience is None:
        return {}
    return {
        "INITIAL_RETRY_DELAY": "0",
        "JITTER": str(resilience.backoff_base_s),
        "MAX_RETRY_DELAY": str(resilience.backoff_max_s),
    }


def start_litellm_failover(
    *,
    name: str,
    primary_base: str,
    backup_base: str,
    num_retries: int,
    backoff_env: dict[str, str],
    log_dir: Path,
    version: str,
    workers: int,
    master_key: str,
) -> tuple[Target, dict[str, Any]]:
    litellm = ensure_litellm(version, log_dir)
    config = log_dir / f"{name}.yaml"
    config.write_text(litellm_config(primary_base, backup_base, num_retries))
    port = free_port()
    env = {
        "PATH": f"{LITELLM_VENV / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "LITELLM_MASTER_KEY": master_key,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        **backoff_env,
    }
    argv = [str(litellm), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--num_workers", str(workers)]
    service = Service("litellm", argv, log_dir / f"{name}.log", env=env, cwd=log_dir).start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/health/liveliness", service, timeout_s=180)
    except BaseException:
        service.stop()
        raise
    target = Target(name, f"{base}{CHAT}", {"litellm": service}, version=version)
    return target, {
        "workers": workers,
        "num_retries": num_retries,
        "backoff_env": backoff_env or "LiteLLM defaults",
        "config": config.read_text(),
    }
