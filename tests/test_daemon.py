"""The whole daemon as a subprocess against the simulator and the real PostgreSQL."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from eslbridge.accounts.users import add_user
from eslbridge.keys.keyring import Keyring
from eslbridge.sim.localpg import free_port
from tests.daemon_fixtures import ESL_PASSWORD, ROOT, Env, NotifySocket, get, metrics_url, secret, wait_for

STATUSES_BY_SCENARIO = {"bridged": "Completed", "busy": "Busy", "auth_call": "Completed"}


class Sim:
    """`python -m eslbridge.sim` in a subprocess; its first line names the port."""

    def __init__(self, tmp: Path, *args: str, password: str = ESL_PASSWORD) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "eslbridge.sim", "--listen", "127.0.0.1:0", "--heartbeat", "1",
             "--password-file", secret(tmp / f"sim_pw_{time.monotonic_ns()}", password), *args],
            stdout=subprocess.PIPE, text=True, cwd=ROOT)
        line = self.proc.stdout.readline()
        assert line.startswith("listening "), line
        self.port = int(line.rsplit(":", 1)[1])

    def wait_line(self, prefix: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith(prefix):
                return line
            if not line and self.proc.poll() is not None:
                break
        raise AssertionError(f"simulator never printed {prefix!r}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def finished_records(dsn: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT call_uuid, status, sip_response_code, disconnect_reason, direction, user_id, caller, callee,"
            " enc_key_id FROM call_records WHERE stage = 3").fetchall()


def test_calls_land_everywhere_with_metrics_health_and_sd_notify(env: Env, db_dsn: str) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        user_id = add_user(conn, "1000", "127.0.0.1", "pw-1000-secret", rounds=4).id
    sim = Sim(env.tmp, "--wait-subscribers", "1", "--calls", "30", "--rate", "60", "--speed", "8",
              "--mix", "bridged=1,busy=1,auth_call=1,register=1", "--seed", "11")
    notify = NotifySocket()
    config = env.config(sim.port)
    try:
        proc = env.start(config, notify)
        notify.wait("READY=1")
        assert get(metrics_url(config, "/healthz")) == (200, "ok\n")
        notify.wait("WATCHDOG=1")
        sim.wait_line("played")
        records = wait_for(lambda: len(rows := finished_records(db_dsn)) >= 20 and rows, 30, "finished records")
        time.sleep(1.0)  # nothing more may arrive: compare against the final set
        records = finished_records(db_dsn)
        keyring = Keyring.load(env.keyring_file)
        with psycopg.connect(db_dsn) as conn:
            n_calls = conn.execute("SELECT count(*) FROM call_records").fetchone()[0]
            calls_rows = conn.execute("SELECT user_id, status, destination_number_enc, enc_key_id FROM calls"
                                      ).fetchall()
            events = conn.execute("SELECT count(DISTINCT call_uuid) FROM call_events").fetchone()[0]
            last_login = conn.execute("SELECT last_login FROM users WHERE id = %s", (user_id,)).fetchone()[0]
        status, body = get(metrics_url(config, "/metrics"))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        notify.wait("STOPPING=1")
    finally:
        notify.close()
        sim.stop()

    assert n_calls == len(records) > 0  # every call finished, none stuck Active
    by_status: dict[str, list] = {}
    for r in records:
        by_status.setdefault(r[1], []).append(r)
    assert set(by_status) <= {"Completed", "Busy"} and by_status.get("Completed") and by_status.get("Busy")
    assert all(r[2] == 486 and r[3] == "USER_BUSY" for r in by_status["Busy"])
    assert all(r[2] == 200 and r[3] == "NORMAL_CLEARING" for r in by_status["Completed"])
    local = [r for r in records if r[5] is not None]
    assert local and all(r[4] == "Outbound" and r[5] == user_id for r in local)
    assert all(keyring.decrypt(r[6], r[8]).startswith("sip:") for r in records)
    assert len(calls_rows) == len(local) and all(c[0] == user_id and c[1] == "completed" for c in calls_rows)
    assert all(keyring.decrypt(c[2], c[3]) == "tone" for c in calls_rows)
    assert events == n_calls
    assert last_login is not None  # the register scenario's sofia::register
    assert status == 200
    assert 'eslbridge_esl_events_total{event="CHANNEL_HANGUP_COMPLETE",node="fs1"}' in body
    assert "eslbridge_esl_connected" in body and "eslbridge_db_up 1.0" in body


def test_sigterm_under_load_loses_nothing(env: Env, db_dsn: str) -> None:
    n = 400
    sim = Sim(env.tmp, "--wait-subscribers", "1", "--calls", str(n), "--rate", "2000", "--speed", "100",
              "--mix", "bridged=3,busy=1,reject=1")
    config = env.config(sim.port)
    try:
        proc = env.start(config)
        sim.wait_line("played")
        proc.send_signal(signal.SIGTERM)  # while events and records are still queued
        started = time.monotonic()
        assert proc.wait(15) == 0
        assert time.monotonic() - started < 11, "drain took longer than 10 s"
        # Whatever did not reach PostgreSQL is in the journal: the next start replays it.
        proc = env.start(config, name="b")
        wait_for(lambda: get(metrics_url(config, "/healthz"))[0] == 200, 30, "the restarted daemon")
        wait_for(lambda: len(finished_records(db_dsn)) >= n, 30, f"{n} finished records")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        sim.stop()
    records = finished_records(db_dsn)
    assert len(records) == len({r[0] for r in records}) == n


def test_sighup_applies_new_log_level(env: Env) -> None:
    sim = Sim(env.tmp)
    config = env.config(sim.port, logging={"level": "warning"})
    try:
        proc = env.start(config)
        wait_for(lambda: get(metrics_url(config, "/healthz"))[0] == 200, 30, "healthy daemon")
        assert "reloaded configuration" not in env.log()
        config.write_text(config.read_text().replace("level: warning", "level: info"))
        proc.send_signal(signal.SIGHUP)
        # The reload line is logged at INFO: it only shows if the new level took effect.
        wait_for(lambda: "reloaded configuration" in env.log(), 15, "the reload log line")
        assert proc.poll() is None and get(metrics_url(config, "/healthz"))[0] == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        sim.stop()


def test_wrong_esl_password_exits_78(env: Env) -> None:
    sim = Sim(env.tmp, password="the-real-one")
    try:
        proc = env.start(env.config(sim.port))
        assert proc.wait(30) == 78
    finally:
        sim.stop()
    log = env.log()
    assert "fs1" in log and ESL_PASSWORD not in log and "the-real-one" not in log


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"freeswitch": [{"name": "fs1", "port": "abc"}]}, "freeswitch[0].port"),
        ({"journal": {"dir": "/tmp", "max_byte": 5}}, "journal.max_byte"),
        ({"encryption": {"keyring_file": "/nonexistent/keyring.yaml"}}, "/nonexistent/keyring.yaml"),
    ],
)
def test_bad_config_exits_78_naming_the_key(env: Env, override: dict, named: str) -> None:
    proc = env.start(env.config(free_port(), **override))
    assert proc.wait(30) == 78
    assert named in env.log()


def test_two_daemons_on_one_freeswitch_write_each_record_once(env: Env, db_dsn: str) -> None:
    n = 60
    sim = Sim(env.tmp, "--wait-subscribers", "2", "--calls", str(n), "--rate", "100", "--speed", "20",
              "--mix", "bridged=1,busy=1,reject=1")
    try:
        procs = [env.start(env.config(sim.port, name=x), name=x) for x in ("a", "b")]
        sim.wait_line("played")
        wait_for(lambda: len(finished_records(db_dsn)) >= n, 30, f"{n} finished records")
        time.sleep(1.0)
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        assert [proc.wait(15) for proc in procs] == [0, 0]
    finally:
        sim.stop()
    records = finished_records(db_dsn)
    assert len(records) == len({r[0] for r in records}) == n
    with psycopg.connect(db_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM call_records").fetchone()[0] == n
        dupes = conn.execute("SELECT count(*) FROM (SELECT call_uuid, event_type, seq FROM call_events"
                             " GROUP BY 1, 2, 3 HAVING count(*) > 1) d").fetchone()[0]
    assert dupes == 0
