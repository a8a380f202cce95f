"""The live-call cap end to end: the daemon (a subprocess) against the simulator and PostgreSQL."""

from __future__ import annotations

import signal

import psycopg
import yaml

from tests.daemon_fixtures import Env, get, metrics_url, wait_for
from tests.test_daemon import Sim


def test_calls_over_the_cap_are_closed_counted_and_logged_once(env: Env, db_dsn: str) -> None:
    n, cap = 30, 5
    sim = Sim(env.tmp, "--wait-subscribers", "1", "--calls", str(n), "--rate", "50", "--mix", "bridged=1")
    config = env.config(sim.port)
    cfg = yaml.safe_load(config.read_text())
    cfg["freeswitch"][0]["max_live_calls"] = cap
    config.write_text(yaml.safe_dump(cfg))
    try:
        proc = env.start(config)
        sim.wait_line("played")  # 30 calls of 4 s each, started within 0.6 s: up to 30 at once
        wait_for(lambda: 'eslbridge_calls_evicted_total{node="fs1"}' in get(metrics_url(config, "/metrics"))[1],
                 30, "the eviction metric")

        def closed() -> int:
            with psycopg.connect(db_dsn) as conn:
                return conn.execute("SELECT count(*) FROM call_records WHERE status <> 'Active'").fetchone()[0]
        wait_for(lambda: closed() == n, 30, f"{n} closed rows")
        metrics = get(metrics_url(config, "/metrics"))[1]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        sim.stop()
    evicted = next(float(line.split()[-1]) for line in metrics.splitlines()
                   if line.startswith('eslbridge_calls_evicted_total{node="fs1"}'))
    assert 'eslbridge_active_calls{node="fs1"} 0.0' in metrics
    with psycopg.connect(db_dsn) as conn:
        rows = conn.execute("SELECT call_uuid, status, reconciled, end_time >= start_time FROM call_records").fetchall()
        reasons = conn.execute("SELECT count(*) FROM call_events WHERE event_type = 'reconciled'"
                               " AND event_data->>'reason' LIKE 'closed by the live-call cap%'").fetchone()[0]
    assert len(rows) == len({r[0] for r in rows}) == n  # one row per call, the evicted ones too
    assert evicted == sum(1 for r in rows if r[2]) == reasons >= n - cap - 5  # (calls ending free room)
    assert all(r[3] for r in rows) and not any(r[1] == "Active" for r in rows)
    said = [line for line in env.log().splitlines() if "closed the oldest as reconciled" in line]
    assert len(said) == 1, said  # rate-limited: one line for the burst
