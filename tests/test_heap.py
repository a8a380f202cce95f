"""freeze_startup (eslbridge/ops/heap.py): start-up's survivors leave the collections, its garbage does not stay."""

from __future__ import annotations

import gc
import weakref

from eslbridge.ops.heap import freeze_startup


class _Node:
    pass


def test_survivors_are_frozen_and_garbage_is_collected_first() -> None:
    garbage = _Node()
    garbage.me = garbage  # a cycle nothing refers to: only a collection frees it
    dead = weakref.ref(garbage)
    del garbage
    kept = _Node()
    kept.me = kept
    try:
        frozen = freeze_startup()
        assert dead() is None, "garbage frozen at start-up would never be freed"
        assert frozen == gc.get_freeze_count() > 0
        assert gc.is_tracked(kept)
        # Frozen objects are in no generation: no collection walks them any more.
        assert not any(obj is kept for obj in gc.get_objects())
        gc.collect()
        assert kept.me is kept
    finally:
        gc.unfreeze()
    assert any(obj is kept for obj in gc.get_objects())
