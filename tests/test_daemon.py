"""The whole daemon as a subprocess against the simulator and the real PostgreSQL (issue 7)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import yaml

from eslbridge.keyring import Keyring, generate_keyring
from eslbridge.localpg import free_port
from eslbridge.users import add_user

ROOT = Path(__file__).resolve().parents[1]
ESL_PASSWORD = "sim-secret-Pw1"
STATUSES_BY_SCENARIO = {"bridged": "Completed", "busy": "Busy", "auth_call": "Completed"}


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def secret(path: Path, value: str) -> str:
    path.write_text(value + "\n")
    path.chmod(0o600)
    return str(path)


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


class NotifySocket:
    """A systemd NOTIFY_SOCKET stand-in: a datagram socket we read sd_notify messages from."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="esln-", dir="/tmp")  # AF_UNIX paths are short
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages: list[str] = []

    def wait(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in m for m in self.messages):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {text!r} in sd_notify messages {self.messages}")
            self.sock.settimeout(left)
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue

    def close(self) -> None:
        self.sock.close()
        os.unlink(self.path)
        os.rmdir(self.dir)


class Env:
    """Config, keyring and secrets for daemons of one test; starts them as subprocesses."""

    def __init__(self, tmp: Path, dsn: str) -> None:
        self.tmp, self.dsn = tmp, dsn
        self.keyring_file = tmp / "keys" / "keyring.yaml"
        generate_keyring(self.keyring_file)
        self.procs: list[subprocess.Popen] = []

    def config(self, sim_port: int, name: str = "a", **overrides: object) -> Path:
        cfg = {
            "freeswitch": [{"name": "fs1", "host": "127.0.0.1", "port": sim_port,
                            "password_file": secret(self.tmp / "esl_pw", ESL_PASSWORD)}],
            "outbound": {"listen": f"127.0.0.1:{free_port()}"},
            "database": {"url": self.dsn, "min_connections": 1, "max_connections": 4},
            "directory": {"listen": f"127.0.0.1:{free_port()}", "username": "freeswitch",
                          "password_file": secret(self.tmp / "dir_pw", "dir-secret")},
            "encryption": {"keyring_file": str(self.keyring_file)},
            "journal": {"dir": str(self.tmp / f"journal-{name}")},
            "metrics": {"listen": f"127.0.0.1:{free_port()}"},
            "logging": {"level": "info"},
        }
        for key, value in overrides.items():
            cfg[key] = value
        path = self.tmp / f"eslbridge-{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    def start(self, config: Path, notify: NotifySocket | None = None, name: str = "a") -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_SOCKET", "WATCHDOG"))}
        if notify:
            env.update(NOTIFY_SOCKET=notify.path, WATCHDOG_USEC="1000000")
        log = open(self.tmp / f"daemon-{name}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen([sys.executable, "-m", "eslbridge", "--config", str(config), "run"],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        log.close()
        self.procs.append(proc)
        return proc

    def log(self, name: str = "a") -> str:
        return (self.tmp / f"daemon-{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def env(tmp_path: Path, db_dsn: str) -> Iterator[Env]:
    e = Env(tmp_path, db_dsn)
    yield e
    e.stop_all()


def metrics_url(config: Path, path: str) -> str:
    listen = yaml.safe_load(config.read_text())["metrics"]["listen"]
    return f"http://{listen}{path}"


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:  # not listening yet
        return 0, ""


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
