"""The durability promise, short: kill -9 of the Faust worker and then of the inference worker
during a burst through two bridges, then the chaos soak's verifier reads the log back.

This is `python -m bench.soak` itself (bench/soak/, docs/delivery.md) on the test broker
(`--bootstrap`: topics and groups of the run's own, deleted afterwards), scripted to kill
exactly those two processes: 450 requests at 10/s, 30% streamed, every 2xx compared with the
exact answer the fake upstream gives. The verifier's goal — 0 lost, 0 duplicated, 0 2xx for a
request that is not journaled — is the assertion. Both workers run with static group membership
(`worker.group_instance_id`), so each restarted worker takes its partitions back at once instead
of after the dead one's session timeout (45-60 s, which a dynamic member waits out).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(420)]

REPO_ROOT = Path(__file__).resolve().parents[2]
SESSION_TIMEOUTS_S = 45.0  # librdkafka's session.timeout.ms; Faust's is 60 s


def test_kill9_of_each_worker_during_a_burst_loses_and_duplicates_nothing(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    command = [
        *(sys.executable, "-m", "bench.soak", "--bootstrap", kafka_bootstrap),
        *("--rate", "10", "--minutes", "0.75", "--seed", "3"),
        *("--sequence", "worker,inference", "--chaos-start", "8", "--chaos-tail", "10"),
        *("--gap", "5", "5", "--pause", "1", "1", "--settle", "90"),
        *("--results-dir", str(tmp_path)),
    ]
    done = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=390, check=False
    )
    results = sorted(tmp_path.glob("soak-*.json"))
    assert results, f"no soak result:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    result = json.loads(results[-1].read_text())
    report = result["report"]
    assert result["meta"]["kills"] == {"worker": 1, "inference": 1}, done.stdout[-3000:]
    assert (report["lost"], report["duplicated"], report["unjournaled_2xx"]) == (0, 0, 0), result[
        "table"
    ]
    assert report["answered"] == report["journaled"] >= 450
    assert report["client"]["corrupted_2xx"] == 0
    assert done.returncode == 0, result["table"]
    # Static membership: each restarted worker had partitions again well before the dead
    # member's session could have timed out.
    for kill in result["kills"]:
        assert kill["ready_at"] - kill["at"] < SESSION_TIMEOUTS_S, result["kills"]
