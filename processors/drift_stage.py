"""Drift detection as a pipeline stage: cost entries, eval results and sampled prompt embeddings
in, DriftDetected events out, the monitor's state saved as it changes.

The agents (streams/app.py) only hand events over; everything they would otherwise decide is
here, so it is tested without a broker:

- which samples each event gives (`drift_samples.py`), and the findings of the windows they
  close or of their own anomaly scores, published at once;
- `tick(now_ms)`, for a timer: closes the windows that ended before the watermark (the clock
  minus `lateness_s`), so a tenant whose traffic stops still has its last window judged;
- persistence: the series changed since the last save are handed to `save(tenant, metric,
  state)` on every tick and whenever a window closes (the state is a few kB per series, too much
  to write per request), and `recover` takes them back after a restart or a rebalance.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from sluicegate.processors.drift import DriftFinding, DriftMonitor, drift_event
from sluicegate.processors.drift_samples import (
    DriftSample,
    PromptToEmbed,
    embedding_sample,
    metric_family,
    prompt_to_embed,
    samples_from_cost,
    samples_from_eval,
)
from sluicegate.processors.envelope import Emit
from sluicegate.schemas.models import CostEntry, EvalCaseResult, EvalRunCompleted, RequestReceived
from sluicegate.settings import DriftSettings

SaveState = Callable[[str, str, dict[str, Any]], None]


class DriftStage:
    """One worker's drift detection: a `DriftMonitor` fed from the pipeline's events."""

    def __init__(self, *, settings: DriftSettings, save: SaveState, seed: int = 0) -> None:
        self._settings = settings
        self._save = save
        self._lateness_ms = round(settings.lateness_s * 1000)
        self._embeds = (
            settings.enabled
            and "prompt_embedding" in settings.metrics
            and settings.embedding_sample_rate > 0
        )
        self.monitor = DriftMonitor(settings=settings, seed=seed)

    @property
    def wants_embeddings(self) -> bool:
        """Whether any prompt is ever sampled (``prompt_embedding`` on, a rate above 0)."""
        return self._embeds

    def on_cost(self, entry: CostEntry) -> list[Emit]:
        return self._observe(samples_from_cost(entry))

    def on_eval(self, event: EvalCaseResult | EvalRunCompleted) -> list[Emit]:
        """Eval scores; a run's summary (on the same topic) gives nothing."""
        if isinstance(event, EvalRunCompleted):
            return []
        return self._observe(samples_from_eval(event))

    def prompt_of(self, request: RequestReceived, emits: list[Emit]) -> PromptToEmbed | None:
        """The prompt to embed for a request admission let through, if it is in the sample."""
        if not self._embeds:
            return None
        return prompt_to_embed(request, emits, self._settings.embedding_sample_rate)

    def on_embedding(self, prompt: PromptToEmbed, vector: np.ndarray) -> list[Emit]:
        return self._observe([embedding_sample(prompt.tenant_id, vector, prompt.at_ms)])

    def tick(self, now_ms: int) -> list[Emit]:
        """Close the windows that ended before the watermark, then save what changed."""
        findings = self.monitor.close_due(now_ms - self._lateness_ms)
        self.save()
        return _events(findings)

    def save(self) -> int:
        """Hand every series changed since the last save to `save`; how many there were."""
        dirty = self.monitor.take_dirty()
        for tenant_id, metric in dirty:
            state = self.monitor.state_of(tenant_id, metric)
            if state is not None:
                self._save(tenant_id, metric, state)
        return len(dirty)

    def recover(
        self, saved: Iterable[tuple[str, str, dict[str, Any]]], owns: Callable[[str], bool]
    ) -> int:
        """Take back saved series after the table's recovery; how many were restored.

        Series the monitor already holds are kept as they are: after a rebalance its own state is
        newer than what was last saved. Series of tenants whose partition went to another worker
        (`owns` false) are dropped, so this worker stops judging and saving them; eval series are
        kept, since any worker may read a tenant's eval results (sg.evals is keyed by run).
        """
        held = set(self.monitor.series())
        restored = 0
        for tenant_id, metric, state in saved:
            if (tenant_id, metric) not in held and owns(tenant_id):
                self.monitor.restore(tenant_id, metric, state)
                restored += 1
        for tenant_id, metric in held:
            if not owns(tenant_id) and metric_family(metric) != "eval":
                self.monitor.forget(tenant_id, metric)
        return restored

    def _observe(self, samples: list[DriftSample]) -> list[Emit]:
        closed = self.monitor.windows_closed
        findings = [f for sample in samples for f in self.monitor.observe(sample)]
        if self.monitor.windows_closed != closed:
            self.save()  # a window closed: its reference moved, worth saving now
        return _events(findings)


def _events(findings: list[DriftFinding]) -> list[Emit]:
    return [drift_event(finding) for finding in findings]
