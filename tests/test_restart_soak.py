"""Restarts are invisible in the data (DESIGN section 9), under load, end to end.

The simulator plays calls at 200 calls/s and keeps a ledger of every call it played (every leg
UUID, the scenario, when its events were delivered, whether a FreeSWITCH restart dropped it). The
daemon is killed at random moments, with SIGKILL and with SIGTERM, and restarted after gaps from
0.1 s to 10 s (log-uniform); then two daemons run on the one node and are killed in turn; then
FreeSWITCH itself restarts (new Core-UUID) with calls up. The ledger is then compared with the
tables: every call the daemons could see has exactly one call_records row, none is left Active,
and a call whose events all arrived has its scenario's status.

The only calls allowed to be absent are those nothing could have recorded: every event of theirs
went to a daemon SIGKILLed less than GRACE seconds after it could first see them (its first row was
not committed yet), no other daemon was listening, and the call ended before a daemon connected
again (so no `show channels` snapshot could show it). They are counted and printed apart. When
each daemon connected is read from its /metrics while the test runs.

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

from tests.daemon_fixtures import Env, get, metrics_url, wait_for
from tests.test_daemon import Sim

RATE = 200
KILLS = 10
GAP_RANGE = (0.1, 10.0)  # seconds, drawn log-uniform: as many short gaps as long ones
# Gaps are drawn from GAP_RANGE, then scaled to fit the soak in its time bound.
GAP_SCALE = float(os.environ.get("ESLBRIDGE_SOAK_GAP_SCALE", "0.5"))
GRACE = 3.0  # seconds a SIGKILLed daemon is given to have committed a call's first row (a loaded host)
MIX = "bridged=5,busy=1,no_answer=1,cancel=1,reject=1,blind_transfer=1,originate=1"
# Each scenario's final status when every event arrived (what the correlator makes of the capture).
STATUS = {"bridged": "Completed", "busy": "Busy", "no_answer": "NoAnswer", "cancel": "Cancelled",
          "reject": "Rejected", "blind_transfer": "Completed", "originate": "Completed"}


@dataclass
class Instance:
    """One daemon process: when it started, connected to ESL (its `show channels` snapshot), was
    ready (ESL and PostgreSQL up), ended and how (None: ran to the end)."""

    name: str
    start: float
    connected: float = math.inf
    ready: float = math.inf
    end: float = math.inf
    sig: str | None = None


@dataclass
class Timeline:
    instances: list[Instance] = field(default_factory=list)
    log: list[str] = field(default_factory=list)


class Daemons:
    def __init__(self, daemon_env: Env, sim_port: int, rng: random.Random, timeline: Timeline) -> None:
        self.env, self.rng, self.timeline = daemon_env, rng, timeline
        self.configs = {name: daemon_env.config(sim_port, name=name) for name in ("a", "b")}
        self.procs: dict = {}

    def start(self, name: str, wait: bool = True) -> None:
        instance = Instance(name, time.time())
        self.timeline.instances.append(instance)
        self.procs[name] = (self.env.start(self.configs[name], name=name), instance)
        if wait:
            try:
                wait_for(lambda: self.healthy(name), 60, f"daemon {name} healthy")
            except AssertionError as e:
                raise AssertionError(f"{e}; its log ends:\n{self.env.log(name)[-3000:]}") from None

    def healthy(self, name: str) -> bool:
        """Poll the daemon's /metrics: note when its ESL link and then PostgreSQL came up."""
        _, instance = self.procs[name]
        if instance.ready == math.inf:
            text = get(metrics_url(self.configs[name], "/metrics"))[1]
            now = time.time()
            if instance.connected == math.inf and 'eslbridge_esl_connected{node="fs1"} 1.0' in text:
                instance.connected = now
            if instance.connected < math.inf and "eslbridge_db_up 1.0" in text:
                instance.ready = now
        return instance.ready < math.inf

    def live_for(self, seconds: float) -> None:
        """Let the daemons run (noting when each becomes healthy)."""
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            for name in self.procs:
                self.healthy(name)
            time.sleep(0.1)

    def kill(self, name: str, sig: signal.Signals, record: bool = True) -> None:
        proc, instance = self.procs.pop(name)
        instance.end = time.time()
        if record:
            instance.sig = sig.name
        proc.send_signal(sig)
        started = time.monotonic()
        code = proc.wait(30)
        if sig == signal.SIGTERM:
            # -15: SIGTERM came before the daemon set its handler (still importing; nothing to drain).
            assert code in (0, -signal.SIGTERM), f"daemon {name} exited {code} on SIGTERM"
            assert time.monotonic() - started < 11, "SIGTERM drain took longer than 10 s"

    def cycle(self, name: str, sig: signal.Signals) -> None:
        """Die by ``sig`` at a random moment (now and then while starting up, mostly while running),
        stay down for a gap, come back."""
        if self.rng.random() < 0.2:
            self.live_for(self.rng.uniform(0.2, 2.0) - (time.time() - self.procs[name][1].start))
        else:
            wait_for(lambda: self.healthy(name), 60, f"daemon {name} healthy")
            self.live_for(self.rng.uniform(0.2, 3.0))
        gap = math.exp(self.rng.uniform(*map(math.log, GAP_RANGE))) * GAP_SCALE
        self.kill(name, sig)
        time.sleep(gap)
        self.timeline.log.append(f"{name}: {sig.name}, down {gap:.2f} s")
        self.start(name, wait=False)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.kill(name, signal.SIGTERM, record=False)


def unobservable(call: dict, timeline: Timeline) -> bool:
    """No daemon could have recorded the call: every daemon that got one of its events, or that
    connected while FreeSWITCH still had it (its `show channels` shows it), was SIGKILLed less than
    GRACE seconds after that (its first row was not committed yet)."""
    for inst in timeline.instances:
        seen_from = math.inf
        if call["first"] <= inst.end and call["last"] >= inst.connected:
            seen_from = max(call["first"], inst.connected)  # events delivered to it
        elif call["first"] <= inst.connected <= min(call["ended"], inst.end):
            seen_from = inst.connected  # up in its snapshot
        if seen_from == math.inf:
            continue
        if inst.sig != "SIGKILL" or inst.end - seen_from >= GRACE:
            return False
    return True


def compare(ledger: list[dict], rows: list[tuple], timeline: Timeline) -> dict:
    owner = {leg: i for i, call in enumerate(ledger) for leg in call["uuids"]}
    per_call: dict[int, list[tuple]] = {}
    figures = Counter()
    examples: list[str] = []
    for row in rows:
        i = owner.get(row[0])
        if i is None:
            figures["rows_not_in_ledger"] += 1
            continue
        per_call.setdefault(i, []).append(row)
        if row[1] == "Active":
            figures["stuck"] += 1
    t0 = min((inst.start for inst in timeline.instances), default=0.0)

    def describe(call: dict, found: list[tuple]) -> str:
        rel = {k: round(call[k] - t0, 2) for k in ("first", "last", "ended")}
        return (f"{call['scenario']} call (legs {call['uuids']}; delivered {call['delivered']}/{call['events']}"
                f" events, times {rel}, complete {call['complete']}): rows "
                f"{[(r[0], r[3].isoformat(), r[1], 'reconciled' if r[2] else 'exact') for r in found]}")

    for i, call in enumerate(ledger):
        if not call["delivered"]:
            continue
        figures["calls_seen"] += 1
        found = per_call.get(i, [])
        if len(found) > 1:
            figures["duplicates"] += len(found) - 1
            if len(examples) < 12:
                examples.append("duplicate: " + describe(call, found))
        if not found:
            if unobservable(call, timeline):
                figures["unobservable"] += 1
            else:
                figures["missing"] += 1
                if len(examples) < 12:
                    examples.append("missing: " + describe(call, found))
            continue
        status, reconciled = found[0][1:3]
        if status == "Active":
            continue  # counted as stuck
        if not reconciled and call["complete"] and status != STATUS[call["scenario"]]:
            figures["wrong_status"] += 1
            if len(examples) < 12:
                examples.append(f"status {status}, expected {STATUS[call['scenario']]}: " + describe(call, found))
        figures["reconciled"] += bool(reconciled)
    figures["rows"] = len(rows)
    figures["calls_played"] = len(ledger)
    return {"figures": dict(figures), "examples": examples}


def test_restarts_kill_9_sigterm_two_daemons_and_a_freeswitch_restart_leave_one_final_row_per_call(
        env: Env, db_dsn: str) -> None:
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
        daemons.start("b", wait=False)
        for _ in range(4):
            daemons.cycle(rng.choice("ab"), rng.choice([signal.SIGKILL, signal.SIGTERM]))
        # FreeSWITCH restarts with calls up (new Core-UUID; its calls end without events).
        for name in "ab":
            wait_for(lambda n=name: daemons.healthy(n), 60, f"daemon {name} healthy")
        daemons.live_for(rng.uniform(0.5, 2.0))
        sim.proc.send_signal(signal.SIGUSR1)
        timeline.log.append("FreeSWITCH restarted")
        daemons.live_for(3.0)
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
        rows = conn.execute("SELECT call_uuid, status, reconciled, start_time FROM call_records").fetchall()
        event_dupes = conn.execute("SELECT count(*) FROM (SELECT call_uuid, event_type, seq FROM call_events"
                                   " GROUP BY 1, 2, 3 HAVING count(*) > 1) d").fetchone()[0]
        calls_dupes = conn.execute("SELECT count(*) FROM (SELECT call_uuid FROM calls GROUP BY 1"
                                   " HAVING count(*) > 1) d").fetchone()[0]
        # Every call, those whose events all went unheard (seen only in snapshots) included.
        record_dupes = conn.execute("SELECT count(*) FROM (SELECT call_uuid FROM call_records GROUP BY 1"
                                    " HAVING count(*) > 1) d").fetchone()[0]
    (env.tmp / "soak-rows.json").write_text(json.dumps(
        {"rows": [[r[0], r[1], r[2], r[3].isoformat()] for r in rows],
         "instances": [vars(i) for i in timeline.instances]}, default=str))  # for a look after a failure
    result = compare(ledger, rows, timeline)
    figures = result["figures"]
    print("soak schedule:", "; ".join(timeline.log))
    t0 = timeline.instances[0].start
    print("soak daemons (start, connected, ready, end in s; how):", "; ".join(
        f"{i.name} {i.start - t0:.2f} {i.connected - t0:.2f} {i.ready - t0:.2f} {i.end - t0:.2f}"
        f" {i.sig or 'to the end'}"
        for i in timeline.instances))
    print(f"soak figures after {played_for:.0f} s of calls: {json.dumps(figures, sort_keys=True)}; "
          f"call_events duplicates {event_dupes}, calls duplicates {calls_dupes},"
          f" call_records duplicates (any call) {record_dupes}")
    for example in result["examples"]:
        print("  ", example)
    assert figures.get("calls_seen", 0) > RATE * 20, "the soak played too few calls to mean anything"
    assert (figures.get("duplicates", 0), figures.get("stuck", 0), figures.get("missing", 0),
            figures.get("wrong_status", 0), figures.get("rows_not_in_ledger", 0)) == (0, 0, 0, 0, 0), result
    assert (event_dupes, calls_dupes, record_dupes) == (0, 0, 0)
