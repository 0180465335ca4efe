"""The chaos soak's verifier (bench/soak/verify.py): counts from the log and client records."""

from __future__ import annotations

import pytest

from bench.soak.verify import (
    ClientAttempt,
    Final,
    Journaled,
    Kill,
    attribute_duplicates,
    attribute_lost,
    latency_summary,
    render_table,
    stream_replays,
    verify,
)

pytestmark = pytest.mark.unit


def journaled(*ids: str, key: str | None = None) -> list[Journaled]:
    return [
        Journaled(request_id=rid, idempotency_key=key or f"k-{rid}", offset=i)
        for i, rid in enumerate(ids)
    ]


def answer(rid: str, text: str = "echo: hi", offset: int = 0, finish: str = "stop") -> Final:
    return Final(request_id=rid, kind="answer", content=text, finish_reason=finish, offset=offset)


def rejection(rid: str, code: str = "timeout", status: int = 504, offset: int = 0) -> Final:
    return Final(request_id=rid, kind="rejection", code=code, http_status=status, offset=offset)


def ok(key: str, rid: str | None, *, content_ok: bool = True, status: int = 200) -> ClientAttempt:
    return ClientAttempt(
        key=key,
        attempt=1,
        bridge="a",
        status=status,
        request_id=rid,
        content_ok=content_ok if 200 <= status < 300 else None,
    )


def test_every_request_answered_once_meets_the_goal() -> None:
    report = verify(
        journaled("r1", "r2"),
        [answer("r1"), answer("r2", offset=1)],
        [ok("k-r1", "r1"), ok("k-r2", "r2")],
    )
    assert (report.journaled, report.answered, report.lost, report.duplicated) == (2, 2, 0, 0)
    assert report.unjournaled_2xx == 0 and report.goal_met
    assert report.client["keys_with_2xx"] == 2 and report.client["corrupted_2xx"] == 0


def test_journaled_without_a_final_result_is_lost() -> None:
    report = verify(journaled("r1", "r2"), [answer("r1")])
    assert report.lost == 1 and report.lost_ids == ["r2"] and report.examples["lost"] == ["r2"]
    assert not report.goal_met


def test_rejections_are_explicit_failures_counted_by_status_and_code() -> None:
    report = verify(
        journaled("r1", "r2", "r3"),
        [rejection("r1"), rejection("r2", "server_error", 502), answer("r3")],
    )
    assert (report.answered, report.failed_explicitly, report.lost) == (1, 2, 0)
    assert report.rejection_codes == {"504 timeout": 1, "502 server_error": 1}
    assert report.goal_met  # an explicit failure is an answer: the caller was told


def test_identical_duplicates_are_told_apart_from_conflicting_ones() -> None:
    finals = [
        answer("same", offset=1),
        answer("same", offset=7),  # a task that ran twice
        answer("diff", "echo: a", offset=2),
        answer("diff", "echo: b", offset=9),
        answer("mixed", offset=3),
        rejection("mixed", offset=4),
        rejection("twice", offset=5),
        rejection("twice", offset=6),
    ]
    report = verify(journaled("same", "diff", "mixed", "twice"), finals)
    assert report.duplicated == 4
    assert report.duplicated_identical == 2  # "same" and "twice"
    assert report.duplicated_conflicting == 2  # "diff" and "mixed"
    assert report.extra_finals == 4
    assert sorted(report.duplicated_ids) == ["diff", "mixed", "same", "twice"]
    assert not report.goal_met


def test_the_first_final_result_decides_answered_or_failed() -> None:
    # The bridge answers with whatever arrives first; the log's order is the partition's order.
    report = verify(journaled("r1"), [answer("r1", offset=8), rejection("r1", offset=3)])
    assert (report.answered, report.failed_explicitly) == (0, 1)


def test_a_2xx_for_a_request_that_is_not_journaled_is_flagged() -> None:
    report = verify(
        journaled("r1"), [answer("r1")], [ok("k-r1", "r1"), ok("k-x", "ghost"), ok("k-y", None)]
    )
    assert report.unjournaled_2xx == 2
    assert report.examples["unjournaled_2xx"] == ["k-x -> ghost", "k-y -> None"]
    assert not report.goal_met


def test_non_2xx_answers_need_not_be_journaled() -> None:
    attempts = [ok("k1", None, status=503), ok("k1", None, status=0), ok("k1", "r1")]
    report = verify(journaled("r1", key="k1"), [answer("r1")], attempts)
    assert report.unjournaled_2xx == 0
    assert report.client["statuses"] == {"200": 1, "503": 1, "no answer": 1}
    assert report.client["retried_keys"] == 1 and report.client["keys_without_2xx"] == 0


def test_client_side_anomalies() -> None:
    attempts = [
        ok("k-r1", "r1", content_ok=False),  # a 2xx whose text is not the expected answer
        ok("k-r2", "r2"),  # told success while the log says it failed
        ok("k-r3", None, status=504),  # never got a 2xx
    ]
    report = verify(
        journaled("r1", "r2", "r3"), [answer("r1"), rejection("r2"), answer("r3")], attempts
    )
    assert report.client["corrupted_2xx"] == 1
    assert report.client["client_log_mismatch"] == 1
    assert report.client["keys_without_2xx"] == 1
    assert report.examples["keys_without_2xx"] == ["k-r3"]


def test_finals_for_unknown_requests_are_orphans() -> None:
    report = verify(journaled("r1"), [answer("r1"), answer("nobody"), answer("nobody")])
    assert report.orphan_finals == 2 and report.duplicated == 0


def test_keys_journaled_again_under_a_new_request_id() -> None:
    journal = [
        Journaled("r1", "k"),
        Journaled("r2", "k"),  # a retry another bridge did not recognize
        Journaled("r3", "j"),
    ]
    report = verify(journal, [answer("r1"), answer("r2"), rejection("r3")])
    assert report.idempotency == {
        "keys": 2,
        "keys_journaled_more_than_once": 1,
        "keys_answered_more_than_once": 1,
    }
    assert report.duplicated == 0  # one final result per request_id


def test_duplicates_are_attributed_to_the_stage_that_ran_twice_and_the_kill_before() -> None:
    finals = [
        answer("a", offset=1),
        answer("b", offset=2),
        answer("a", offset=5),
        answer("b", offset=6),
    ]
    times = {(-1, 1): 1_000, (-1, 2): 1_100, (-1, 5): 70_000, (-1, 6): 3_000}
    tasks = [("a", 1, 0), ("a", 1, 65_000), ("b", 1, 0)]  # a's task twice: admission re-ran
    kills = [Kill(at=2.0, role="inference", pid=1), Kill(at=60.0, role="worker", pid=2)]
    got = attribute_duplicates(["a", "b"], finals, times, tasks, kills)
    assert got["stage"] == {"admission": 1, "inference": 1}
    assert got["after_kill"] == {"worker": 1, "inference": 1}


def test_lost_requests_are_attributed_to_the_kill_before_their_journaling() -> None:
    kills = [Kill(at=10.0, role="broker", pid=1)]
    assert attribute_lost(["x", "y"], {"x": 5_000, "y": 12_000}, kills) == {
        "no kill before it": 1,
        "broker": 1,
    }


def test_latency_split_and_table() -> None:
    attempts = [
        ClientAttempt("k1", 1, "a", 200, "r1", latency_s=0.05),
        ClientAttempt("k2", 1, "a", 200, "r2", latency_s=0.07),
        ClientAttempt("k3", 1, "a", 200, "r3", latency_s=30.0, during_chaos=True),
        ClientAttempt("k4", 1, "a", 503, None, latency_s=0.01, during_chaos=True),
    ]
    latency = latency_summary(attempts)
    assert latency["calm"]["n"] == 2 and latency["calm"]["max_s"] == 0.07
    assert latency["chaos"] == {"n": 1, "p50_s": 30.0, "p99_s": 30.0, "max_s": 30.0}
    report = verify(
        journaled("r1", "r2", "r3"), [answer("r1"), answer("r2"), answer("r3")], attempts
    )
    table = render_table(
        report, {"rate": 5, "minutes": 1, "seed": 2, "kills": {"broker": 1}, "latency": latency}
    )
    assert "| journaled requests | 3 |" in table
    assert "| kills | broker 1 |" in table
    assert "| goal (0 lost, 0 duplicated, 0 unjournaled 2xx) | met |" in table
    assert report.as_dict()["goal_met"] is True


def test_stream_replays_count_chunks_written_again() -> None:
    chunks = [("a", 0), ("a", 1), ("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1)]
    assert stream_replays(chunks) == {"chunks_written_again": 2, "requests_streamed_again": 1}
    assert stream_replays([]) == {"chunks_written_again": 0, "requests_streamed_again": 0}
