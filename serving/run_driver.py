"""Drive a run's requests through the live pipeline and collect their answers.

Eval runs and replays journal their requests on sg.requests like the bridge does (idempotent,
acks=all, keyed by tenant), with their `run_id` and no `reply_to`: no bridge waits for them.
The driver keeps at most `max_in_flight` of them in the pipeline (bounded parallelism, so a
run never floods the workers that serve live traffic) and follows sg.responses and sg.cost
from the offsets they had before the first publish, keeping the events of its own run: the
final answer (ResponseReady or RequestRejected) and the CostEntry of each request. A request
with no answer within `timeout_s` is reported as timed out, never waited for forever.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from confluent_kafka import Consumer, Producer, TopicPartition

from sluicegate.errors import BrokerError
from sluicegate.schemas.models import CostEntry, RequestReceived, RequestRejected, ResponseReady
from sluicegate.schemas.serde import AvroSerde
from sluicegate.serving.kafka_io import fetch_ready
from sluicegate.settings import Settings

log = logging.getLogger(__name__)
COST_GRACE_S = 5.0  # a CostEntry may land a little after its answer


@dataclass
class CaseOutcome:
    """One request of a run: what was sent, what came back, what it cost."""

    request: RequestReceived
    answer: ResponseReady | RequestRejected | None = None  # None: no answer in time
    cost: CostEntry | None = None
    sent_at: float = 0.0
    answered_s: float | None = None  # seconds from publish to answer

    @property
    def output(self) -> str | None:
        if isinstance(self.answer, ResponseReady):
            return self.answer.message.content or self.answer.message.tool_calls_json or ""
        return None

    @property
    def error(self) -> str | None:
        if isinstance(self.answer, RequestRejected):
            return f"{self.answer.code}: {self.answer.message}"
        if self.answer is None:
            return "timeout: no answer in time"
        return None

    @property
    def cost_usd(self) -> float:
        return self.cost.usd if self.cost is not None else 0.0

    @property
    def latency_ms(self) -> float | None:
        if isinstance(self.answer, ResponseReady):
            return self.answer.latency_ms
        return None


class RunDriver:
    def __init__(
        self,
        settings: Settings,
        serde: AvroSerde,
        *,
        max_in_flight: int,
        timeout_s: float,
    ) -> None:
        self._settings = settings
        self._serde = serde
        self._max_in_flight = max_in_flight
        self._timeout_s = timeout_s

    def run(
        self,
        requests: Iterable[RequestReceived],
        *,
        on_done: Callable[[CaseOutcome], None] | None = None,
    ) -> list[CaseOutcome]:
        """Publish every request (at most `max_in_flight` unanswered at once) and return one
        outcome per request, in the order given."""
        queue = deque(requests)
        outcomes = [CaseOutcome(request) for request in queue]
        by_id = {outcome.request.request_id: outcome for outcome in outcomes}
        if len(by_id) != len(outcomes):
            raise ValueError("a run's requests must have distinct request ids")
        run_ids = {outcome.request.run_id for outcome in outcomes}
        if None in run_ids:
            raise ValueError("a run's requests must carry a run_id")
        consumer = self._follow()
        producer = Producer(
            {
                **self._settings.kafka.client_config(),
                "enable.idempotence": True,
                "acks": "all",
                "partitioner": "murmur2_random",
                "linger.ms": 2,
            }
        )
        failures: list[str] = []
        pending = deque(outcomes)
        in_flight: dict[str, CaseOutcome] = {}
        awaiting_cost: dict[str, float] = {}  # request_id → give up at
        requests_topic = self._settings.topic("requests")

        def delivered(error: object, _message: object) -> None:
            if error is not None:
                failures.append(str(error))

        try:
            while pending or in_flight or awaiting_cost:
                while pending and len(in_flight) < self._max_in_flight:
                    outcome = pending.popleft()
                    request = outcome.request
                    producer.produce(
                        requests_topic,
                        key=request.tenant_id.encode(),
                        value=self._serde.encode(request),
                        on_delivery=delivered,
                    )
                    outcome.sent_at = time.monotonic()
                    in_flight[request.request_id] = outcome
                producer.poll(0)
                if failures:
                    raise BrokerError(f"{requests_topic}: requests not journaled: {failures}")
                for message in fetch_ready(consumer, wait_s=0.05, max_records=500, who="run"):
                    self._take(message.value(), by_id, in_flight, awaiting_cost, run_ids, on_done)
                clock = time.monotonic()
                for request_id, outcome in list(in_flight.items()):
                    if clock - outcome.sent_at > self._timeout_s:
                        del in_flight[request_id]
                        if on_done is not None:
                            on_done(outcome)
                for request_id, give_up in list(awaiting_cost.items()):
                    if clock > give_up:
                        del awaiting_cost[request_id]
            if producer.flush(30) != 0 or failures:
                raise BrokerError(f"{requests_topic}: requests not journaled: {failures}")
        finally:
            consumer.close()
        return outcomes

    def _take(
        self,
        value: bytes | None,
        by_id: dict[str, CaseOutcome],
        in_flight: dict[str, CaseOutcome],
        awaiting_cost: dict[str, float],
        run_ids: set[str | None],
        on_done: Callable[[CaseOutcome], None] | None,
    ) -> None:
        if value is None:
            return
        try:
            event = self._serde.decode(value)
        except Exception as error:  # one undecodable record must not end a run
            log.warning("run: skipped an undecodable record: %s", error)
            return
        if getattr(event, "run_id", None) not in run_ids:
            return  # live traffic or another run
        outcome = by_id.get(event.request_id)
        if outcome is None:
            return
        if isinstance(event, CostEntry):
            outcome.cost = event
            awaiting_cost.pop(event.request_id, None)
            return
        if not isinstance(event, ResponseReady | RequestRejected) or outcome.answer is not None:
            return  # a duplicate final answer (at-least-once) counts once
        outcome.answer = event
        outcome.answered_s = time.monotonic() - outcome.sent_at
        if in_flight.pop(event.request_id, None) is not None and on_done is not None:
            on_done(outcome)
        if isinstance(event, ResponseReady) and outcome.cost is None and not event.cache_hit:
            awaiting_cost[event.request_id] = time.monotonic() + COST_GRACE_S

    def _follow(self) -> Consumer:
        """A consumer on sg.responses and sg.cost at their current ends: everything of the run
        is published after this point."""
        consumer = Consumer(
            {
                **self._settings.kafka.client_config(),
                "group.id": f"sluicegate-run-{uuid.uuid4()}",
                "enable.auto.commit": False,
                "enable.partition.eof": False,
                "fetch.wait.max.ms": 10,
            }
        )
        assignment = []
        for name in ("responses", "cost"):
            topic = self._settings.topic(name)
            metadata = consumer.list_topics(topic, timeout=30).topics[topic]
            if metadata.error is not None:
                consumer.close()
                raise BrokerError(f"{topic}: {metadata.error}")
            for partition in metadata.partitions:
                _low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=30
                )
                assignment.append(TopicPartition(topic, partition, high))
        consumer.assign(assignment)
        return consumer
