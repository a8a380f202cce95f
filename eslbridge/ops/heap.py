"""Garbage collection in a long-lived server: what start-up built is kept out of the collections.

CPython's full collections walk every tracked object, and after start-up most of them (modules,
classes, functions, configuration: about 41,000 in the directory service alone) live as long as
the process. Each full collection then held the event loop for 25-50 ms (measured with
``gc.callbacks`` under bench.directory), a stall that every request arriving meanwhile waits out.
Frozen, they are skipped by every collection (and still freed by reference counting, should one
go); objects made later are collected as before.
"""

from __future__ import annotations

import gc


def freeze_startup() -> int:
    """Collect what start-up left behind, then freeze the survivors; returns how many are frozen."""
    gc.collect()  # garbage frozen now would never be freed
    gc.freeze()
    return gc.get_freeze_count()
