"""Python's cyclic garbage collector, set for processes that answer requests for hours.

A full (generation 2) collection walks every tracked object. Once started, a sluicegate process
holds a few hundred thousand of them (imported modules, models, the Faust app), and under 150
req/s each full collection paused its event loop for 50-100 ms, several times a minute, in the
bridge, the Faust worker and the inference worker alike: most of the p99 at that rate. Objects
alive at the end of start-up live as long as the process, so `gc.freeze()` moves them to a
permanent generation that collections skip; later collections walk only what requests allocate.
A larger young-generation threshold runs the collector less often; request objects are freed by
reference counting, not by it.
"""

from __future__ import annotations

import gc
import logging

from sluicegate.settings import RuntimeSettings

log = logging.getLogger(__name__)


def tune_collector(settings: RuntimeSettings) -> None:
    """Set the collection thresholds; at process start, before the heap grows."""
    if settings.gc_gen0_threshold:
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(settings.gc_gen0_threshold, gen1, gen2)


def freeze_startup_heap(settings: RuntimeSettings) -> None:
    """Collect once, then exempt every surviving object from later collections.

    Call it when the process is ready to serve; calling it again later (a second ready point)
    freezes what start-up added since. Frozen garbage is never freed, which is why this runs only
    after start-up, whose objects are not garbage.
    """
    if not settings.gc_freeze:
        return
    gc.collect()
    gc.freeze()
    log.info("gc: %d start-up objects frozen", gc.get_freeze_count())
