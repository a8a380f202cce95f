"""The FreeSWITCH tier: one real FreeSWITCH per session, the daemon under test beside it, sipp for calls.

FreeSWITCH comes from $ESLBRIDGE_FREESWITCH (default: ../shared/freeswitch beside the checkout), a
folder with `start RUNDIR name=value...` and `stop RUNDIR` (tests/freeswitch/README.md). Each test
gets a fresh database and its own daemon (`python -m eslbridge --config FILE run`) on the ports the
session gave FreeSWITCH's mod_xml_curl and dialplan, so one FreeSWITCH serves every test.
"""

from __future__ import annotations

import itertools
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from eslbridge.accounts.users import add_user
from eslbridge.sim.localpg import free_port
from tests.daemon_fixtures import ESL_PASSWORD, ROOT, Env, get, metrics_url, secret, wait_for
from tests.freeswitch.sipp import SIPP, Sipp

FS_HOME = Path(os.environ.get("ESLBRIDGE_FREESWITCH") or ROOT.parent / "shared" / "freeswitch")
NODE = "fs1"
DIRECTORY_USER = "freeswitch"
DIRECTORY_PASSWORD = "fs-tier-directory-Pw1"
DOMAIN = "127.0.0.1"  # the realm FreeSWITCH challenges with: the From domain of the sipp scenarios
_users = itertools.count(1)


class FreeSwitch:
    """A FreeSWITCH started through FS_HOME's `start` in a RUNDIR of this session."""

    def __init__(self, home: Path, rundir: Path, certs: Path) -> None:
        self.home, self.rundir, self.certs = home, rundir, certs
        self.esl_port, self.internal_port, self.external_port = free_port(), free_port(), free_port()
        self.directory_port, self.outbound_port = free_port(), free_port()
        # Below Linux's ephemeral range: the free ports above are taken from it, RTP must not collide.
        self.rtp_start = random.randrange(16000, 31000, 1000)
        self.extensions: dict[str, str] = {}
        self.pid: int | None = None
        self.log = rundir.parent / "start.log"

    @property
    def internal(self) -> str:
        return f"127.0.0.1:{self.internal_port}"

    @property
    def external(self) -> str:
        return f"127.0.0.1:{self.external_port}"

    def start(self) -> None:
        args = [f"esl_port={self.esl_port}", f"esl_password={ESL_PASSWORD}",
                f"internal_sip_port={self.internal_port}", f"external_sip_port={self.external_port}",
                f"rtp_start_port={self.rtp_start}", f"rtp_end_port={self.rtp_start + 999}",
                f"xml_curl_url=http://127.0.0.1:{self.directory_port}/directory",
                f"xml_curl_credentials={DIRECTORY_USER}:{DIRECTORY_PASSWORD}", "loglevel=info"]
        env = dict(os.environ, FS_CERTS_CACHE=str(self.certs))
        with open(self.log, "ab") as log:
            done = subprocess.run(["bash", str(self.home / "start"), str(self.rundir), *args], stdout=subprocess.PIPE,
                                  stderr=log, env=env, timeout=120)
        if done.returncode != 0:
            pytest.fail(f"FreeSWITCH from {self.home} did not start (exit {done.returncode}); "
                        f"its output: {self.log.read_text(errors='replace')[-1500:]}", pytrace=False)
        self.pid = int(done.stdout.split()[-1])  # `start` prints the PID last
        for name, xml in self.extensions.items():  # `start` copies a fresh conf/ every time
            self._write_extension(name, xml)
        if self.extensions:
            self.api("reloadxml")

    def stop(self) -> None:
        subprocess.run(["bash", str(self.home / "stop"), str(self.rundir)], timeout=60, check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def kill(self) -> None:
        """A crash: SIGKILL, so FreeSWITCH says nothing more to anyone (no BYE, no last events)."""
        os.kill(self.pid, signal.SIGKILL)
        wait_for(lambda: not Path(f"/proc/{self.pid}").exists() or _zombie(self.pid), 20, "FreeSWITCH to die")

    def api(self, command: str) -> str:
        done = subprocess.run([str(self.rundir / "fs_cli"), "-x", command], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=30)
        return done.stdout

    def _write_extension(self, name: str, xml: str) -> None:
        for context in ("default", "public"):
            (self.rundir / "conf" / "dialplan" / context / f"50_{name}.xml").write_text(xml)

    def add_extension(self, name: str, xml: str) -> None:
        """An <include> of extensions into both test contexts, kept across restarts."""
        self.extensions[name] = xml
        self._write_extension(name, xml)
        assert "+OK" in self.api("reloadxml")

    def channels(self) -> int:
        match = re.search(r"(\d+) total", self.api("show channels count"))
        return int(match.group(1)) if match else -1

    def sessions(self) -> int:
        """Sessions, counted by `status`: also those not in `show channels`, such as the one a
        challenged INVITE leaves in CS_NEW until FreeSWITCH abandons it (10 s later)."""
        match = re.search(r"(\d+) session\(s\) - peak", self.api("status"))
        return int(match.group(1)) if match else -1

    def wait_idle(self, timeout: float = 20) -> None:
        """No channel or session left from an earlier test (its daemon would have seen them; this one
        must not)."""
        deadline = time.monotonic() + timeout
        while self.channels() != 0 or self.sessions() != 0:
            if time.monotonic() > deadline:
                self.api("hupall NORMAL_CLEARING")
                wait_for(lambda: self.channels() == 0 and self.sessions() == 0, 15, "FreeSWITCH to drop its channels")
                return
            time.sleep(0.2)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except OSError:
        return True


FIGURES: list[str] = []


def pytest_terminal_summary(terminalreporter) -> None:
    """Figures the tier measured (reconnect time, load), shown at the end of the run."""
    if FIGURES:
        terminalreporter.section("FreeSWITCH tier figures")
        for line in FIGURES:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def freeswitch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FreeSwitch]:
    if not (FS_HOME / "start").is_file() or not (FS_HOME / "stop").is_file():
        pytest.fail(f"no FreeSWITCH for the FreeSWITCH tier at {FS_HOME}: set ESLBRIDGE_FREESWITCH to a folder with "
                    "`start RUNDIR name=value...` and `stop RUNDIR` (see tests/freeswitch/README.md)", pytrace=False)
    if not shutil.which(SIPP):
        pytest.fail("sipp is not installed (Debian: apt-get install sip-tester)", pytrace=False)
    base = tmp_path_factory.mktemp("freeswitch")
    (base / "certs").mkdir()
    fs = FreeSwitch(FS_HOME, base / "run", base / "certs")
    fs.start()
    yield fs
    fs.stop()


@dataclass
class Bridge:
    """The daemon under test, its config and its database."""

    env: Env
    config: Path
    dsn: str
    fs: FreeSwitch
    proc: subprocess.Popen | None = None

    def start(self, name: str = "a") -> None:
        self.proc = self.env.start(self.config, name=name)
        wait_for(lambda: self.connected() or self.proc.poll() is not None, 30, "the daemon's ESL link")
        assert self.proc.poll() is None, f"the daemon exited {self.proc.returncode}: {self.env.log(name)[-1500:]}"

    def connected(self) -> bool:
        status, body = get(metrics_url(self.config, "/metrics"))
        return status == 200 and f'eslbridge_esl_connected{{node="{NODE}"}} 1.0' in body

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(20)

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "eslbridge", "--config", str(self.config), *args],
                              input=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              cwd=ROOT, timeout=60)

    def sipp(self, scenario: str, *args: str, target: str | None = None) -> Sipp:
        return Sipp(self.env.tmp, scenario, *args, target=target)

    def new_user(self, password: str, role: str = "user") -> str:
        """A user that exists only in eslbridge's users table (never one of the static 1000-1019)."""
        name = f"u{os.getpid() % 1000:03d}{next(_users):03d}"
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            add_user(conn, name, DOMAIN, password, role=role, rounds=4)
        return name


@pytest.fixture
def event_format() -> str:
    """The daemon's ESL event format: its default, unless a module parametrizes this fixture."""
    return "json"


@pytest.fixture
def bridge(freeswitch: FreeSwitch, env: Env, db_dsn: str, event_format: str) -> Iterator[Bridge]:
    freeswitch.wait_idle()
    config = env.config(
        freeswitch.esl_port,
        event_format=event_format,
        directory={"listen": f"127.0.0.1:{freeswitch.directory_port}", "username": DIRECTORY_USER,
                   "password_file": secret(env.tmp / "fs_directory_pw", DIRECTORY_PASSWORD)},
        outbound={"listen": f"127.0.0.1:{freeswitch.outbound_port}"},
    )
    b = Bridge(env, config, db_dsn, freeswitch)
    b.start()
    yield b
    b.stop()
