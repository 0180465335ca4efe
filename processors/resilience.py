"""Circuit breakers, latency EWMAs and the retry/fallback decision, as pure synchronous code.

Time is always passed in (`at_ms` / `now_ms`, epoch millis) and randomness comes from an
injected `random.Random`, so a replay of the same events with the same seed takes the same
decisions and rebuilds the same state. Feed the tracker the events' own timestamps, never the
wall clock: the state must be a function of the outcome log alone.

Two halves:

* `HealthTracker` folds inference outcomes into per-deployment `DeploymentState`s (breaker state
  machine + EWMAs). A state is a small value that round-trips through a dict of JSON types, so
  it can live in a changelog-backed table keyed by deployment and survive restarts exactly.
  Its routing-relevant view is the shared `HealthSnapshot`.
* `AttemptPlanner` decides what happens after an `InferenceFailed`: retry the same deployment,
  fall back to the next usable one of routing's chain, or give up with an HTTP status. It only
  reads snapshots, so any process holding a copy of the health view can run it.

Breaker lifecycle: closed → (breaker_failures counted failures within breaker_window_s) → open
until `open_until_ms` → the first call after that is the probe: `probe_dispatched` turns the
breaker half-open and leases the probe slot (its `open_until_ms` is the lease expiry, so nobody
else calls meanwhile) → the probe's success closes it, its failure reopens it for a cool-down.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sluicegate.processors.health import BreakerState, HealthSnapshot
from sluicegate.schemas.models import InferenceFailed, InferenceTask
from sluicegate.settings import Deployment, ResilienceSettings

# The caller's request is at fault: the deployment answered, so its health is not in question.
# `unsupported`: this provider cannot take something the request uses (e.g. an image URL on
# Bedrock) — another deployment may, so it falls back, but it says nothing about health.
CALLER_FAULTS = frozenset({"bad_request", "context_too_long", "content_policy", "unsupported"})
# Another try of the same request on the same deployment may succeed.
RETRYABLE = frozenset({"rate_limited", "server_error", "timeout", "connection", "unavailable"})
# No deployment will accept this request as it is: neither retry nor fallback can help.
# `expired`: the deadline passed before the call (a backlog after an outage), so nothing can.
HOPELESS = frozenset({"bad_request", "content_policy", "expired"})
# Refused by the worker itself, never sent: they say nothing about the deployment's health.
NOT_CALLS = frozenset({"circuit_open", "expired"})

_HTTP_STATUS = {
    "unsupported": 400,
    "rate_limited": 429,
    "timeout": 504,
    "expired": 504,
    "context_too_long": 400,
    "content_policy": 400,
    "bad_request": 400,
}
_STATE_VERSION = 1


def counts_against_breaker(error_class: str) -> bool:
    """Everything but the caller's faults, including `auth` and classes not known yet.

    An unrecognised class is counted because erring towards opening a breaker only costs a
    fallback, while erring the other way keeps sending traffic into a broken deployment.
    """
    return error_class not in CALLER_FAULTS and error_class not in NOT_CALLS


def http_status_for(error_class: str) -> int:
    """The status a caller sees when the gateway gives up on this class of failure."""
    return _HTTP_STATUS.get(error_class, 502)


def may_call(snapshot: HealthSnapshot | None, now_ms: int) -> bool:
    """Whether a call may be sent to the deployment now; no snapshot means never seen: healthy."""
    return snapshot is None or snapshot.callable_at(now_ms)


def is_probe(snapshot: HealthSnapshot | None, now_ms: int) -> bool:
    """Whether a call sent now would be the breaker's half-open probe (so must be reported)."""
    return snapshot is not None and snapshot.breaker != "closed" and may_call(snapshot, now_ms)


def _ewma(previous: float | None, sample: float, alpha: float) -> float:
    return sample if previous is None else alpha * sample + (1 - alpha) * previous


@dataclass(frozen=True, slots=True)
class DeploymentState:
    """Everything the breaker and the EWMAs of one deployment remember; immutable.

    `failures_ms` holds the timestamps of the counted failures still inside the window (closed
    state only; never more than `breaker_failures` of them, so the record stays small).
    `open_until_ms` means "no call before": the end of the cool-down while open, the end of
    the probe's lease while half-open.
    """

    deployment: str
    breaker: BreakerState = "closed"
    failures_ms: tuple[int, ...] = ()
    open_until_ms: int | None = None
    latency_ewma_ms: float | None = None
    ttft_ewma_ms: float | None = None
    successes: int = 0
    failures: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON types only (str, int, float, None, list), for a JSON-serialised table value."""
        return {
            "v": _STATE_VERSION,
            "deployment": self.deployment,
            "breaker": self.breaker,
            "failures_ms": list(self.failures_ms),
            "open_until_ms": self.open_until_ms,
            "latency_ewma_ms": self.latency_ewma_ms,
            "ttft_ewma_ms": self.ttft_ewma_ms,
            "successes": self.successes,
            "failures": self.failures,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeploymentState:
        """Tolerates missing keys, so a value written by an older version still loads."""
        breaker = data.get("breaker", "closed")
        if breaker not in ("closed", "open", "half_open"):
            raise ValueError(f"unknown breaker state {breaker!r}")
        open_until = data.get("open_until_ms")
        latency = data.get("latency_ewma_ms")
        ttft = data.get("ttft_ewma_ms")
        return cls(
            deployment=str(data["deployment"]),
            breaker=breaker,
            failures_ms=tuple(int(t) for t in data.get("failures_ms", ())),
            open_until_ms=None if open_until is None else int(open_until),
            latency_ewma_ms=None if latency is None else float(latency),
            ttft_ewma_ms=None if ttft is None else float(ttft),
            successes=int(data.get("successes", 0)),
            failures=int(data.get("failures", 0)),
        )

    def snapshot(self, now_ms: int) -> HealthSnapshot:
        """The routing view. A half-open breaker whose probe lease ran out shows as open with
        its cool-down over: the probe is presumed lost and the next call is a fresh probe."""
        breaker = self.breaker
        if breaker == "half_open" and self.open_until_ms is not None:
            if now_ms >= self.open_until_ms:
                breaker = "open"
        return HealthSnapshot(
            deployment=self.deployment,
            breaker=breaker,
            open_until_ms=self.open_until_ms,
            latency_ewma_ms=self.latency_ewma_ms,
            ttft_ewma_ms=self.ttft_ewma_ms,
        )


@dataclass(frozen=True, slots=True)
class Observation:
    """What folding one outcome in did.

    `changed` is true when the breaker's state or its `open_until_ms` moved, i.e. when the
    routers' view must be republished (a DeploymentHealth event with `previous` and `reason`).
    EWMA-only updates leave it false so that a busy deployment does not flood the health topic.
    """

    state: DeploymentState
    snapshot: HealthSnapshot
    previous: BreakerState
    changed: bool
    reason: str


class HealthTracker:
    """Per-deployment breaker and EWMA state over a mapping of plain dicts.

    `store` may be any `MutableMapping[str, dict]`, e.g. a changelog-backed table keyed by
    deployment: every update assigns a fresh dict (never mutates one in place), which is what
    makes such a table log the change. Without a store, a private dict is used.
    """

    def __init__(
        self,
        settings: ResilienceSettings,
        store: MutableMapping[str, dict[str, Any]] | None = None,
    ) -> None:
        self._settings = settings
        self._store: MutableMapping[str, dict[str, Any]] = {} if store is None else store
        self._window_ms = round(settings.breaker_window_s * 1000)
        self._cooldown_ms = round(settings.breaker_cooldown_s * 1000)

    # -- state access -------------------------------------------------------------------------

    def state(self, deployment: str) -> DeploymentState:
        data = self._store.get(deployment)
        return DeploymentState(deployment) if data is None else DeploymentState.from_dict(data)

    def snapshot(self, deployment: str, now_ms: int) -> HealthSnapshot:
        return self.state(deployment).snapshot(now_ms)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Every deployment's state, for a whole-tracker checkpoint (the table is per key)."""
        return {name: dict(data) for name, data in self._store.items()}

    @classmethod
    def from_dict(
        cls, settings: ResilienceSettings, data: Mapping[str, Mapping[str, Any]]
    ) -> HealthTracker:
        store = {name: DeploymentState.from_dict(value).to_dict() for name, value in data.items()}
        return cls(settings, store)

    # -- outcomes -----------------------------------------------------------------------------

    def observe_success(
        self, deployment: str, latency_ms: float, ttft_ms: float | None, at_ms: int
    ) -> Observation:
        before = self.state(deployment)
        alpha = self._settings.latency_ewma_alpha
        after = replace(
            before,
            latency_ewma_ms=_ewma(before.latency_ewma_ms, latency_ms, alpha),
            ttft_ewma_ms=(
                before.ttft_ewma_ms
                if ttft_ms is None
                else _ewma(before.ttft_ewma_ms, ttft_ms, alpha)
            ),
            successes=before.successes + 1,
        )
        if before.breaker == "closed":
            # One success cancels the oldest failure: scattered errors among good calls never
            # add up to a trip, but a deployment failing most of its calls still trips. (A full
            # reset would let one failing every other call stay closed while a real outage
            # builds; never forgetting would trip on noise.)
            after = replace(after, failures_ms=before.failures_ms[1:])
            reason = "success"
        elif before.breaker == "open" and at_ms < (before.open_until_ms or 0):
            # A call sent before the trip that came back late: too stale to close on.
            reason = "late success while open; still cooling down"
        else:
            # The half-open probe, or a call after the cool-down nobody reported as the probe:
            # the deployment answered after the cool-down, which is all a probe has to prove.
            after = self._close(after)
            reason = "probe succeeded; closed"
        return self._commit(before, after, reason, at_ms)

    def observe_failure(self, deployment: str, error_class: str, at_ms: int) -> Observation:
        before = self.state(deployment)
        if not counts_against_breaker(error_class):
            after = before
            reason = f"{error_class} is the caller's fault; health unchanged"
            if before.breaker == "half_open":
                # The probe proved nothing either way: free the slot for another probe now.
                after = replace(before, open_until_ms=at_ms)
                reason = f"half-open probe ended in {error_class}, inconclusive; slot released"
            return self._commit(before, after, reason, at_ms)
        counted = replace(before, failures=before.failures + 1)
        if before.breaker == "closed":
            cutoff = max((at_ms, *before.failures_ms)) - self._window_ms
            recent = tuple(sorted(t for t in (*before.failures_ms, at_ms) if t > cutoff))
            limit = self._settings.breaker_failures
            if len(recent) >= limit:
                after = self._open(counted, at_ms)
                reason = (
                    f"{len(recent)} failures within {self._settings.breaker_window_s:g}s "
                    f"(last: {error_class}); open for {self._settings.breaker_cooldown_s:g}s"
                )
            else:
                after = replace(counted, failures_ms=recent)
                reason = f"{error_class}: {len(recent)}/{limit} failures in the window"
        elif before.breaker == "open" and (
            before.open_until_ms is not None and at_ms < before.open_until_ms
        ):
            # A call sent before the trip that failed late: the cool-down already accounts for
            # it, and extending it on stragglers would keep the breaker open for no new reason.
            after = counted
            reason = f"late {error_class} while open; cool-down unchanged"
        else:
            after = self._open(counted, at_ms)
            reason = f"probe failed with {error_class}; open again for another cool-down"
        return self._commit(before, after, reason, at_ms)

    def probe_dispatched(
        self, deployment: str, at_ms: int, lease_ms: int | None = None
    ) -> Observation:
        """Record that the half-open probe was sent, so no other call goes out until it ends.

        The lease (default: one cool-down) bounds how long a probe whose outcome is lost can
        hold the slot. A call to a closed breaker, or while the slot is taken, changes nothing.
        """
        before = self.state(deployment)
        if not is_probe(before.snapshot(at_ms), at_ms):
            return self._commit(before, before, "not a probe: nothing to record", at_ms)
        lease = self._cooldown_ms if lease_ms is None else lease_ms
        after = replace(before, breaker="half_open", open_until_ms=at_ms + lease)
        return self._commit(
            before, after, f"half-open probe sent; slot leased for {lease} ms", at_ms
        )

    # -- helpers ------------------------------------------------------------------------------

    def _open(self, state: DeploymentState, at_ms: int) -> DeploymentState:
        return replace(
            state, breaker="open", open_until_ms=at_ms + self._cooldown_ms, failures_ms=()
        )

    @staticmethod
    def _close(state: DeploymentState) -> DeploymentState:
        return replace(state, breaker="closed", open_until_ms=None, failures_ms=())

    def _commit(
        self, before: DeploymentState, after: DeploymentState, reason: str, at_ms: int
    ) -> Observation:
        if after != before:
            self._store[after.deployment] = after.to_dict()
        changed = (before.breaker, before.open_until_ms) != (after.breaker, after.open_until_ms)
        return Observation(
            state=after,
            snapshot=after.snapshot(at_ms),
            previous=before.breaker,
            changed=changed,
            reason=reason,
        )


# -- the next-attempt decision ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Retry:
    """Try the same deployment again, not before `not_before_ms`."""

    deployment: str
    delay_s: float
    reason: str
    not_before_ms: int
    probe: bool = False  # the call is the half-open probe: report it with `probe_dispatched`


@dataclass(frozen=True, slots=True)
class Fallback:
    """Send the request to `deployment` now; `remaining_chain` is what is left after it."""

    deployment: str
    remaining_chain: tuple[str, ...]
    reason: str
    probe: bool = False


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Answer the caller with an error: `message` is for the caller, `reason` for the trace."""

    error_class: str
    http_status: int
    message: str
    reason: str = ""


Decision = Retry | Fallback | GiveUp


class AttemptPlanner:
    """Retry, fall back or give up after a failed attempt; reads health, never writes it.

    Plan with snapshots taken *after* the failure was folded into the tracker, so a failure
    that just opened the breaker already steers the decision away from that deployment.
    """

    def __init__(self, settings: ResilienceSettings, rng: random.Random) -> None:
        self._settings = settings
        self._rng = rng

    def backoff_s(self, retry_number: int) -> float:
        """Full jitter: uniform over [0, min(max, base·2^(n-1))] for the n-th retry.

        Full rather than equal jitter because synchronized retries from many requests that
        failed together are what turns a blip into a thundering herd.
        """
        s = self._settings
        cap = min(s.backoff_max_s, s.backoff_base_s * 2 ** max(retry_number - 1, 0))
        return self._rng.uniform(0.0, cap)

    def plan(
        self,
        *,
        deployment: str,
        error_class: str,
        retriable: bool,
        retry_after_s: float | None,
        deployment_attempts: int,
        fallbacks: Sequence[str],
        deployments: Mapping[str, Deployment],
        health: Mapping[str, HealthSnapshot],
        now_ms: int,
        deadline_ms: int | None,
        message: str = "",
    ) -> Decision:
        """Decide the next step for a request whose attempt on `deployment` just failed.

        `deployment_attempts` counts the attempts made on it, the failed one included.
        `retriable=False` (the backend's own verdict) vetoes a retry on the same deployment but
        not a fallback: another deployment is another backend.
        """
        detail = f"{deployment}: {error_class}" + (f" ({message})" if message else "")
        if error_class in HOPELESS:
            return GiveUp(
                error_class,
                http_status_for(error_class),
                message or error_class,
                f"{detail}; the request's fault, neither retry nor fallback can help",
            )
        if deadline_ms is not None and now_ms >= deadline_ms:
            return self._timeout(message, f"{detail}; the deadline has passed")

        fallback = self._fallback(deployment, error_class, fallbacks, deployments, health, now_ms)
        late_retry: str | None = None
        if error_class in RETRYABLE and retriable:
            retry = self._retry(
                deployment, error_class, retry_after_s, deployment_attempts, health, now_ms
            )
            if isinstance(retry, Retry):
                if deadline_ms is not None and retry.not_before_ms >= deadline_ms:
                    late_retry = f"a retry in {retry.delay_s:.3f}s would land past the deadline"
                    skip_reason = late_retry
                elif (
                    retry_after_s is not None
                    and retry_after_s > self._settings.backoff_max_s
                    and isinstance(fallback, Fallback)
                ):
                    # Waiting longer than we would ever back off holds the request hostage to
                    # one provider while another deployment could answer now.
                    skip_reason = (
                        f"Retry-After {retry_after_s:g}s exceeds the "
                        f"{self._settings.backoff_max_s:g}s backoff cap"
                    )
                else:
                    return retry
            else:
                skip_reason = retry
        elif error_class in RETRYABLE:
            skip_reason = "the backend marked it not retriable"
        else:
            skip_reason = f"{error_class} is not retried on the same deployment"

        if isinstance(fallback, Fallback):
            return replace(fallback, reason=f"{detail}; {skip_reason}; {fallback.reason}")
        if late_retry is not None:
            return self._timeout(message, f"{detail}; {late_retry}; {fallback}")
        return GiveUp(
            error_class,
            http_status_for(error_class),
            message or error_class,
            f"{detail}; {skip_reason}; {fallback}",
        )

    def plan_failure(
        self,
        task: InferenceTask,
        failed: InferenceFailed,
        *,
        deployments: Mapping[str, Deployment],
        health: Mapping[str, HealthSnapshot],
        now_ms: int,
    ) -> Decision:
        """`plan` with its inputs read from the failed attempt's task and failure event.

        The failure names the outcome; only the task knows the chain, the deadline and how many
        attempts this deployment has had, so both are needed.
        """
        return self.plan(
            deployment=failed.deployment,
            error_class=failed.error_class,
            retriable=failed.retriable,
            retry_after_s=failed.retry_after_s,
            deployment_attempts=task.deployment_attempt,
            fallbacks=task.fallbacks,
            deployments=deployments,
            health=health,
            now_ms=now_ms,
            deadline_ms=task.deadline_ms,
            message=failed.message,
        )

    def _retry(
        self,
        deployment: str,
        error_class: str,
        retry_after_s: float | None,
        attempts: int,
        health: Mapping[str, HealthSnapshot],
        now_ms: int,
    ) -> Retry | str:
        """A Retry, or why there is none."""
        s = self._settings
        if attempts > s.max_retries:
            return f"retries exhausted ({attempts - 1}/{s.max_retries})"
        delay_s = self.backoff_s(attempts)
        if retry_after_s is not None:
            delay_s = max(delay_s, retry_after_s)
        not_before_ms = now_ms + round(delay_s * 1000)
        snapshot = health.get(deployment)
        if not may_call(snapshot, not_before_ms):
            return "its breaker is open"
        return Retry(
            deployment,
            delay_s,
            f"{error_class}: retry {attempts}/{s.max_retries} on {deployment} in {delay_s:.3f}s"
            + (f" (Retry-After {retry_after_s:g}s)" if retry_after_s is not None else ""),
            not_before_ms,
            probe=is_probe(snapshot, not_before_ms),
        )

    @staticmethod
    def _fallback(
        failed: str,
        error_class: str,
        chain: Sequence[str],
        deployments: Mapping[str, Deployment],
        health: Mapping[str, HealthSnapshot],
        now_ms: int,
    ) -> Fallback | str:
        """The first usable deployment of the chain, or why there is none."""
        need_window: int | None = None
        if error_class == "context_too_long":
            known = deployments.get(failed)
            need_window = 0 if known is None else known.context_window
        skipped: list[str] = []
        for index, name in enumerate(chain):
            if name == failed:
                skipped.append(f"{name} (just failed)")
                continue
            target = deployments.get(name)
            if target is None:
                skipped.append(f"{name} (not in the catalogue)")
                continue
            if need_window is not None and target.context_window <= need_window:
                skipped.append(f"{name} (context {target.context_window} ≤ {need_window})")
                continue
            snapshot = health.get(name)
            if not may_call(snapshot, now_ms):
                skipped.append(f"{name} (breaker {snapshot.breaker if snapshot else '?'})")
                continue
            reason = f"falling back to {name}"
            if skipped:
                reason += f", skipping {', '.join(skipped)}"
            return Fallback(
                name, tuple(chain[index + 1 :]), reason, probe=is_probe(snapshot, now_ms)
            )
        if skipped:
            return f"no usable fallback ({', '.join(skipped)})"
        return "no fallback left"

    @staticmethod
    def _timeout(message: str, reason: str) -> GiveUp:
        return GiveUp(
            "timeout",
            http_status_for("timeout"),
            message or "the request's deadline passed",
            reason,
        )
