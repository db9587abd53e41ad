"""The cyclic garbage collector, set for a long-running server (ADR 0031).

With CPython's defaults (thresholds 700, 10, 10) a loaded ``ledger serve`` ran a full
(generation 2) collection about once a second, each walking the ~90,000 objects the app
made at start-up and pausing the event loop for ~10-60 ms: that was the ingest p99 (issue 11).
The young collections ran ~140 times a second because 64 requests in flight keep a few
hundred objects alive at any moment; their survivors, objects of requests still in flight,
were promoted and brought the next full collection closer.

:func:`settle` runs once a process has started its services, before it serves:

- ``gc.freeze()`` moves everything alive then (modules, the app, pools, routes, compiled
  msgspec/SQL state) to the permanent generation, which no later collection walks;
- the first threshold goes from 700 to ``YOUNG_THRESHOLD``: a request's objects are almost
  all freed by reference counting when it ends, so allocations minus deallocations reach it
  about once a second under load instead of every 7 ms, and little is promoted.

Cyclic garbage is still collected (by the same generations, less often); only cycles among
the frozen start-up objects are never freed, and those live as long as the process anyway.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000
_settled = False


def settle() -> None:
    """Collect what start-up left behind, freeze the rest, then collect the young less often.

    Call it once the process's long-lived objects exist (the app's lifespan, after its
    services started; a worker process after its start-up). Only the first call in a process
    acts: a test session builds hundreds of apps, and freezing each one's leftovers would
    keep them forever.
    """
    global _settled
    if _settled:
        return
    _settled = True
    gc.collect()
    gc.freeze()
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, YOUNG_THRESHOLD), middle, old)
