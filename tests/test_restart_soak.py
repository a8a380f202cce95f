"""Restarts are invisible in the data (DESIGN section 9), under load, end to end.

The simulator plays calls at 200 calls/s and keeps a ledger of every call it played (every leg
UUID, the scenario, when its events were delivered, whether a FreeSWITCH restart dropped it). The
daemon is killed at random moments, with SIGKILL and with SIGTERM, and restarted after gaps from
0.1 s to 10 s (log-uniform); then two daemons run on the one node and are killed in turn; then
FreeSWITCH itself restarts (new Core-UUID) with calls up. The ledger is then compared with the
tables: every call the daemons could see has exactly one call_records row, none is left Active,
and a call whose events all arrived has its scenario's status.

The only calls allowed to be absent are those nothing could have recorded: every event of theirs
went to a daemon SIGKILLed less than IN_FLIGHT seconds later (before its writer committed the first
row), no other daemon was listening, and the call ended before a daemon connected again (so no
`show channels` snapshot could show it). They are counted and printed apart.

The schedule is random; its seed is printed (ESLBRIDGE_SOAK_SEED=... replays it).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field

import psycopg

from tests.test_daemon import Env, Sim, env, get, metrics_url, wait_for  # noqa: F401

RATE = 200
KILLS = 10
GAP_RANGE = (0.1, 10.0)  # seconds, drawn log-uniform: as many short gaps as long ones
GAP_SCALE = float(os.environ.get("ESLBRIDGE_SOAK_GAP_SCALE", "1.0"))  # < 1 fits a slower host in the bound
IN_FLIGHT = 1.0  # seconds a first row may take to commit (flush interval, batch, a loaded host)
MIX = "bridged=5,busy=1,no_answer=1,cancel=1,reject=1,blind_transfer=1,originate=1"
# Each scenario's final status when every event arrived (what the correlator makes of the capture).
STATUS = {"bridged": "Completed", "busy": "Busy", "no_answer": "NoAnswer", "cancel": "Cancelled",
          "reject": "Rejected", "blind_transfer": "Completed", "originate": "Completed"}


@dataclass
class Timeline:
    """When each daemon was killed (and how), and when daemons were connected again."""

    kills: list[tuple[float, str, str, bool]] = field(default_factory=list)  # (t, name, signal, another was up)
    ready: list[float] = field(default_factory=list)  # a daemon became healthy
    log: list[str] = field(default_factory=list)


class Daemons:
    def __init__(self, daemon_env: Env, sim_port: int, rng: random.Random, timeline: Timeline) -> None:
        self.env, self.rng, self.timeline = daemon_env, rng, timeline
        self.configs = {name: daemon_env.config(sim_port, name=name) for name in ("a", "b")}
        self.procs: dict = {}

    def start(self, name: str) -> None:
        self.procs[name] = self.env.start(self.configs[name], name=name)
        url = metrics_url(self.configs[name], "/healthz")
        wait_for(lambda: get(url)[0] == 200, 60, f"daemon {name} healthy")
        self.timeline.ready.append(time.time())

    def kill(self, name: str, sig: signal.Signals) -> None:
        proc = self.procs.pop(name)
        others_up = bool(self.procs)
        self.timeline.kills.append((time.time(), name, sig.name, others_up))
        proc.send_signal(sig)
        started = time.monotonic()
        code = proc.wait(30)
        if sig == signal.SIGTERM:
            assert code == 0, f"daemon {name} exited {code} on SIGTERM"
            assert time.monotonic() - started < 11, "SIGTERM drain took longer than 10 s"

    def cycle(self, name: str, sig: signal.Signals) -> None:
        """Run a while, die by ``sig``, stay down for a gap, come back."""
        run = self.rng.uniform(0.2, 3.0)
        gap = math.exp(self.rng.uniform(*map(math.log, GAP_RANGE))) * GAP_SCALE
        time.sleep(run)
        self.kill(name, sig)
        time.sleep(gap)
        self.timeline.log.append(f"{name}: {sig.name} after {run:.1f} s, down {gap:.2f} s")
        self.start(name)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.kill(name, signal.SIGTERM)


def unobservable(call: dict, timeline: Timeline) -> bool:
    """Every delivered event of the call went to a daemon SIGKILLed before it could commit a row,
    with no other daemon listening, and the call was over before any daemon was back."""
    for t, _, sig, others_up in timeline.kills:
        if sig == "SIGKILL" and not others_up and t - IN_FLIGHT <= call["first"] and call["last"] <= t:
            back = min((r for r in timeline.ready if r > t), default=math.inf)
            return call["ended"] < back
    return False


def compare(ledger: list[dict], rows: list[tuple], timeline: Timeline) -> dict:
    owner = {leg: i for i, call in enumerate(ledger) for leg in call["uuids"]}
    per_call: Counter = Counter()
    figures = Counter()
    wrong: list[str] = []
    by_call: dict[int, tuple] = {}
    for row in rows:
        call_uuid, status, reconciled = row[0], row[1], row[2]
        i = owner.get(call_uuid)
        if i is None:
            figures["rows_not_in_ledger"] += 1
            continue
        per_call[i] += 1
        by_call[i] = row
        if status == "Active":
            figures["stuck"] += 1
    for i, call in enumerate(ledger):
        if not call["delivered"]:
            continue
        figures["calls_seen"] += 1
        n = per_call[i]
        if n > 1:
            figures["duplicates"] += n - 1
        if n == 0:
            if unobservable(call, timeline):
                figures["unobservable"] += 1
            else:
                figures["missing"] += 1
                if len(wrong) < 10:
                    wrong.append(f"missing {call['scenario']} call {call['uuids']}")
            continue
        call_uuid, status, reconciled = by_call[i][:3]
        if status == "Active":
            continue  # counted as stuck
        whole = call["complete"] and call["delivered"] == call["events"]
        if not reconciled and call["complete"] and status != STATUS[call["scenario"]]:
            figures["wrong_status"] += 1
            if len(wrong) < 10:
                wrong.append(f"{call['scenario']} call {call_uuid}: {status}, expected {STATUS[call['scenario']]}"
                             f" (all events delivered: {whole})")
        figures["reconciled"] += bool(reconciled)
    figures["rows"] = len(rows)
    figures["calls_played"] = len(ledger)
    return {"figures": dict(figures), "examples": wrong}


def test_restarts_kill_9_sigterm_two_daemons_and_a_freeswitch_restart_leave_one_final_row_per_call(
        env: Env, db_dsn: str) -> None:  # noqa: F811
    seed = int(os.environ.get("ESLBRIDGE_SOAK_SEED") or random.SystemRandom().randrange(1 << 32))
    print(f"\nsoak seed {seed} (ESLBRIDGE_SOAK_SEED={seed} replays this schedule)")
    rng = random.Random(seed)
    ledger_path = env.tmp / "ledger.jsonl"
    sim = Sim(env.tmp, "--wait-subscribers", "1", "--rate", str(RATE), "--calls", "1000000", "--mix", MIX,
              "--seed", str(seed), "--ledger", str(ledger_path))
    timeline = Timeline()
    daemons = Daemons(env, sim.port, rng, timeline)
    began = time.monotonic()
    try:
        daemons.start("a")
        # One daemon, killed ten times, half with SIGKILL and half with SIGTERM, in random order.
        sigs = [signal.SIGKILL, signal.SIGTERM] * (KILLS // 2)
        rng.shuffle(sigs)
        for sig in sigs:
            daemons.cycle("a", sig)
        # Two daemons on the one node, the second started late; each killed in turn.
        daemons.start("b")
        for _ in range(4):
            daemons.cycle(rng.choice("ab"), rng.choice([signal.SIGKILL, signal.SIGTERM]))
        # FreeSWITCH restarts with calls up (new Core-UUID; its calls end without events).
        time.sleep(rng.uniform(0.5, 2.0))
        sim.proc.send_signal(signal.SIGUSR1)
        timeline.log.append("FreeSWITCH restarted")
        time.sleep(3.0)
        sim.proc.send_signal(signal.SIGUSR2)  # no new calls; those up play to their end
        sim.wait_line("played", 60)
        played_for = time.monotonic() - began

        def settled() -> bool:
            with psycopg.connect(db_dsn) as conn:
                return conn.execute("SELECT count(*) FROM call_records WHERE status = 'Active'").fetchone()[0] == 0
        with contextlib.suppress(AssertionError):  # if not, counted below as stuck rows
            wait_for(settled, 30, "no Active rows")
        daemons.stop_all()
    finally:
        sim.stop()
    ledger = [json.loads(line) for line in ledger_path.read_text().splitlines()]
    with psycopg.connect(db_dsn) as conn:
        rows = conn.execute("SELECT call_uuid, status, reconciled FROM call_records").fetchall()
        event_dupes = conn.execute("SELECT count(*) FROM (SELECT call_uuid, event_type, seq FROM call_events"
                                   " GROUP BY 1, 2, 3 HAVING count(*) > 1) d").fetchone()[0]
        calls_dupes = conn.execute("SELECT count(*) FROM (SELECT call_uuid FROM calls GROUP BY 1"
                                   " HAVING count(*) > 1) d").fetchone()[0]
    result = compare(ledger, rows, timeline)
    figures = result["figures"]
    print("soak schedule:", "; ".join(timeline.log))
    print(f"soak figures after {played_for:.0f} s of calls: {json.dumps(figures, sort_keys=True)}; "
          f"call_events duplicates {event_dupes}, calls duplicates {calls_dupes}")
    for example in result["examples"]:
        print("  ", example)
    assert figures.get("calls_seen", 0) > RATE * 20, "the soak played too few calls to mean anything"
    assert (figures.get("duplicates", 0), figures.get("stuck", 0), figures.get("missing", 0),
            figures.get("wrong_status", 0), figures.get("rows_not_in_ledger", 0)) == (0, 0, 0, 0, 0), result
    assert (event_dupes, calls_dupes) == (0, 0)
