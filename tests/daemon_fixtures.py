"""The daemon as a subprocess (`python -m eslbridge --config FILE run`) for tests that run it whole.

Used against the simulator (tests/test_daemon.py) and against a real FreeSWITCH (tests/freeswitch/).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from eslbridge.keys.keyring import generate_keyring
from eslbridge.sim.localpg import free_port

ROOT = Path(__file__).resolve().parents[1]
ESL_PASSWORD = "sim-secret-Pw1"


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

    def config(self, esl_port: int, name: str = "a", event_format: str = "json", **overrides: object) -> Path:
        cfg = {
            "freeswitch": [{"name": "fs1", "host": "127.0.0.1", "port": esl_port, "event_format": event_format,
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


