"""A throwaway PostgreSQL cluster for the tests and `eslbridge demo`: initdb + pg_ctl on a free port.

Runs the server as an unprivileged OS user when we are root (initdb refuses
root; CI runs as root): the `postgres` user that Debian's package creates.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg

from eslbridge.store.migrate import migrate


def find_pg_bin() -> Path:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if versions:
        return Path(versions[-1]).parent
    raise RuntimeError("PostgreSQL server binaries not found: install the `postgresql` package")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgCluster:
    """initdb'd cluster in a temporary directory; trust auth on loopback only.

    With ``standby_of``, a hot standby streaming from that (running) cluster instead: a base
    backup taken with ``pg_basebackup -R`` (initdb's default pg_hba.conf already lets loopback
    replication connections in, and ``wal_level`` defaults to ``replica``)."""

    def __init__(self, superuser: str = "postgres", durable: bool = False,
                 standby_of: PgCluster | None = None) -> None:
        self.bin = find_pg_bin()
        self.superuser = superuser
        self.port = free_port()
        self.host = "127.0.0.1"
        self.base = Path(tempfile.mkdtemp(prefix="eslbridge-pg-"))
        self.datadir = self.base / "data"
        self.logfile = self.base / "server.log"
        self._run_as = None
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            self._run_as = (user.pw_uid, user.pw_gid)
            os.chown(self.base, *self._run_as)
        if standby_of is None:
            self._pg(
                "initdb", "-D", str(self.datadir), "-U", superuser, "--auth=trust", "-E", "UTF8",
                "--locale=C", "--no-sync",
            )
        else:
            self._pg(
                "pg_basebackup", "-D", str(self.datadir), "-h", standby_of.host, "-p", str(standby_of.port),
                "-U", standby_of.superuser, "-R", "-X", "stream", "-c", "fast", "--no-sync",
            )
        # Appended settings win over the ones a base backup copied from its primary.
        with open(self.datadir / "postgresql.conf", "a") as conf:
            conf.write(
                f"port = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.base}'\n"
                "max_connections = 200\n"
            )
            if not durable:  # speed over durability: a test cluster never outlives the run (benchmarks pass True)
                conf.write("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n")

    def _pg(self, tool: str, *args: str) -> None:
        kwargs = {}
        if self._run_as:
            uid, gid = self._run_as

            def demote() -> None:
                os.setgid(gid)
                os.setuid(uid)

            kwargs["preexec_fn"] = demote
        subprocess.run([str(self.bin / tool), *args], check=True, capture_output=True, **kwargs)

    def start(self) -> None:
        self._pg("pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._pg("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.superuser}@{self.host}:{self.port}/{dbname}"

    def migrated_database(self, dbname: str) -> str:
        """Create ``dbname`` (a plain identifier) with every migration applied; its DSN."""
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{dbname}"')
        migrate(self.dsn(dbname))
        return self.dsn(dbname)
