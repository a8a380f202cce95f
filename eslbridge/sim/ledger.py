"""What the simulator played, one JSON line per call, for tests that compare it with the tables.

A line is written when the call's last event was emitted, or when a FreeSWITCH restart dropped it:
``{"scenario", "uuids" (every leg), "delivered" (events sent to at least one subscribed client),
"events", "first"/"last" (epoch seconds of the first and last delivered event), "ended" (when its last
event was due or the restart dropped it), "complete" (False: dropped by a restart)}``.
"""

from __future__ import annotations

import json
import time
from typing import IO

from eslbridge.sim.templates import Ctx


class Ledger:
    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._calls: dict[int, dict] = {}  # id(ctx) -> the call's entry

    def planned(self, scenario: str, ctx: Ctx) -> None:
        self._calls[id(ctx)] = {"scenario": scenario, "ctx": ctx, "delivered": 0, "events": 0,
                                "first": None, "last": None}

    def emitted(self, ctx: Ctx, delivered: bool) -> None:
        entry = self._calls.get(id(ctx))
        if entry is None:
            return
        entry["events"] += 1
        if delivered:
            now = time.time()
            entry["delivered"] += 1
            entry["first"] = entry["first"] or now
            entry["last"] = now

    def done(self, ctx: Ctx, complete: bool = True) -> None:
        entry = self._calls.pop(id(ctx), None)
        if entry is None:
            return
        entry["uuids"] = sorted(entry.pop("ctx").uuids.values())
        entry["complete"] = complete
        entry["ended"] = time.time()
        self._out.write(json.dumps(entry) + "\n")
        self._out.flush()
