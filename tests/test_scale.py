"""DESIGN section 12's shapes with the real daemon and simulators as subprocesses: two daemons on
one node (one started late, one killed and restarted meanwhile), four nodes into one daemon, two
daemons of two nodes each into one PostgreSQL. Each is compared with the ledger the simulators
keep of every call they finished sending: each call exactly once, on its own node, finished."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import yaml

from tests.scale_fixtures import call_rows, ledger_calls, ledger_problems
from tests.test_daemon import ESL_PASSWORD, Env, Sim, get, metrics_url, secret, wait_for

MIX = "bridged=3,busy=1,reject=1,no_answer=1"


class LedgerSim(Sim):
    """A simulator that writes each call to its ledger once the call's last event is sent."""

    def __init__(self, tmp: Path, name: str, calls: int, rate: float, subscribers: int = 1) -> None:
        self.name = name
        self.ledger = tmp / f"ledger-{name}"
        super().__init__(tmp, "--ledger", str(self.ledger), "--wait-subscribers", str(subscribers),
                         "--calls", str(calls), "--rate", str(rate), "--speed", "10", "--mix", MIX,
                         "--seed", str(sum(map(ord, name))))
        self.calls = calls

    def sent(self) -> list[dict]:
        return ledger_calls(self.ledger)


def node_config(env: Env, sims: list[LedgerSim], name: str) -> Path:
    """A daemon's config reading every simulator of ``sims`` (node names from the simulators), with
    no ``outbound`` section (the socket app is off then)."""
    path = env.config(0, name=name)
    cfg = yaml.safe_load(path.read_text())
    del cfg["outbound"]
    pw = secret(env.tmp / "esl_pw", ESL_PASSWORD)
    cfg["freeswitch"] = [{"name": s.name, "host": "127.0.0.1", "port": s.port, "password_file": pw} for s in sims]
    path.write_text(yaml.safe_dump(cfg))
    return path


def assert_matches_ledgers(dsn: str, sims: list[LedgerSim]) -> None:
    ledgers = {sim.name: sim.sent() for sim in sims}
    for sim in sims:
        assert len(ledgers[sim.name]) == sim.calls, f"{sim.name}: the simulator did not finish"
    problems = ledger_problems(call_rows(dsn), ledgers)
    assert not problems, f"{len(problems)} differences, e.g. {problems[:5]}"
    with psycopg.connect(dsn) as conn:
        dupes = conn.execute("SELECT count(*) FROM (SELECT call_uuid, event_type, seq FROM call_events"
                             " GROUP BY 1, 2, 3 HAVING count(*) > 1) d").fetchone()[0]
    assert dupes == 0


def finished(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM call_records WHERE stage = 3").fetchone()[0]


def settle(dsn: str, total: int) -> None:
    wait_for(lambda: finished(dsn) >= total, 40, f"{total} finished records")
    time.sleep(1.0)  # nothing more may arrive: compare against the final set


def stop(procs) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    assert [proc.wait(15) for proc in procs] == [0] * len(procs)


@pytest.fixture
def env(tmp_path: Path, db_dsn: str) -> Iterator[Env]:
    e = Env(tmp_path, db_dsn)
    yield e
    e.stop_all()


def healthy(config: Path) -> bool:
    return get(metrics_url(config, "/healthz"))[0] == 200


def test_two_daemons_on_one_node_one_late_one_killed_and_restarted_each_call_once(env: Env, db_dsn: str) -> None:
    sim = LedgerSim(env.tmp, "fs1", calls=300, rate=50)
    try:
        config_a, config_b = node_config(env, [sim], "a"), node_config(env, [sim], "b")
        a = env.start(config_a, name="a")
        wait_for(lambda: len(sim.sent()) >= 40, 30, "calls recorded by the first daemon")
        b = env.start(config_b, name="b")  # late: adopts the calls already up from its snapshot
        wait_for(lambda: healthy(config_b) and len(sim.sent()) >= 110, 30, "the late daemon up")
        a.kill()  # kill -9 with calls in flight, then back on the same journal
        a.wait()
        a = env.start(config_a, name="a-restarted")
        wait_for(lambda: healthy(config_a), 30, "the restarted daemon up")
        sim.wait_line("played")
        settle(db_dsn, sim.calls)
        stop([a, b])
    finally:
        sim.stop()
    assert_matches_ledgers(db_dsn, [sim])


def test_four_nodes_into_one_daemon(env: Env, db_dsn: str) -> None:
    sims = [LedgerSim(env.tmp, f"fs{i}", calls=150, rate=40) for i in range(1, 5)]
    try:
        proc = env.start(node_config(env, sims, "a"))
        for sim in sims:
            sim.wait_line("played")
        settle(db_dsn, sum(s.calls for s in sims))
        stop([proc])
    finally:
        for sim in sims:
            sim.stop()
    assert_matches_ledgers(db_dsn, sims)


def test_two_daemons_of_two_nodes_each_into_one_postgresql(env: Env, db_dsn: str) -> None:
    sims = [LedgerSim(env.tmp, f"fs{i}", calls=150, rate=40) for i in range(1, 5)]
    try:
        procs = [env.start(node_config(env, sims[:2], "a"), name="a"),
                 env.start(node_config(env, sims[2:], "b"), name="b")]
        for sim in sims:
            sim.wait_line("played")
        settle(db_dsn, sum(s.calls for s in sims))
        stop(procs)
    finally:
        for sim in sims:
            sim.stop()
    assert_matches_ledgers(db_dsn, sims)
