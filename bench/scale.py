"""Scale shapes (DESIGN section 12, docs/SCALING.md): real daemons and simulated FreeSWITCH nodes as
processes, all writing one private PostgreSQL (fsync, synchronous_commit and full_page_writes on).

    python -m bench.scale                          # every shape, 2,000 calls per node offered at 400/s
    python -m bench.scale --shapes 1x1,1x4 --calls 5000 --rate 1000

Shapes: ``DxN`` is D daemons with N nodes each (``1x1``, ``1x4``, ``2x2``); ``2on1`` is two daemons
on the same node (the high-availability pair: every call written by both, each row once).
Each simulator plays its calls 100x faster than real time (a two-leg call lasts well under a
second) with the mix below, and keeps a ledger of the calls it finished sending; the run ends
when the database holds every one of them finished, and is checked against the ledgers.

Printed per shape: calls/s (finished calls / the span from the first call's start to the last
row's update, both PostgreSQL timestamps), the CPU each daemon and all simulators used while
the calls landed (% of one core, from /proc/PID/stat; and the daemons' CPU time per call, the
figure that least depends on what else runs), the machine's busy and stolen share, and whether
every call landed exactly once. The machine's other work shows in all of them: rerun on a quiet host.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import yaml

from bench.host import cpu_ticks, steal_percent
from eslbridge.keys.keyring import generate_keyring
from eslbridge.sim.localpg import PgCluster, free_port
from eslbridge.store.migrate import migrate
from tests.scale_fixtures import call_rows, ledger_calls, ledger_problems

ROOT = Path(__file__).resolve().parents[1]
MIX = "bridged=3,busy=1,reject=1,no_answer=1"
ESL_PASSWORD = "bench-esl-secret"
TICK = os.sysconf("SC_CLK_TCK")


def secret(path: Path, value: str) -> str:
    path.write_text(value + "\n")
    path.chmod(0o600)
    return str(path)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


class Shape:
    def __init__(self, text: str) -> None:
        self.text = text
        if text == "2on1":
            self.daemons, self.nodes, self.shared = 2, 1, True
        else:
            daemons, _, nodes = text.partition("x")
            self.daemons, self.nodes, self.shared = int(daemons), int(nodes), False

    @property
    def sims(self) -> int:
        return self.nodes if self.shared else self.daemons * self.nodes


def start_sim(tmp: Path, name: str, calls: int, rate: float, subscribers: int) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "eslbridge.sim", "--listen", "127.0.0.1:0", "--heartbeat", "1",
         "--password-file", secret(tmp / "esl_pw", ESL_PASSWORD), "--ledger", str(tmp / f"ledger-{name}"),
         "--wait-subscribers", str(subscribers), "--calls", str(calls), "--rate", str(rate), "--speed", "100",
         "--mix", MIX], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    line = proc.stdout.readline()
    if not line.startswith("listening "):
        raise RuntimeError(f"simulator did not start: {line!r}")
    return proc, int(line.rsplit(":", 1)[1])


def daemon_config(tmp: Path, dsn: str, name: str, nodes: list[tuple[str, int]]) -> Path:
    cfg = {
        "freeswitch": [{"name": node, "host": "127.0.0.1", "port": port,
                        "password_file": secret(tmp / "esl_pw", ESL_PASSWORD)} for node, port in nodes],
        "database": {"url": dsn, "min_connections": 1, "max_connections": 4},
        "directory": {"listen": f"127.0.0.1:{free_port()}", "password_file": secret(tmp / "dir_pw", "bench-dir")},
        "encryption": {"keyring_file": str(tmp / "keys" / "keyring.yaml")},
        "journal": {"dir": str(tmp / f"journal-{name}")},
        "metrics": {"listen": f"127.0.0.1:{free_port()}"},
        "logging": {"level": "warning"},
    }
    path = tmp / f"eslbridge-{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_shape(shape: Shape, cluster: PgCluster, calls: int, rate: float) -> dict:
    dbname = f"scale_{shape.text.replace('x', '_')}"
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {dbname}")
        conn.execute(f"CREATE DATABASE {dbname}")
    dsn = cluster.dsn(dbname)
    migrate(dsn)
    tmp = Path(tempfile.mkdtemp(prefix=f"eslbridge-scale-{shape.text}-"))
    generate_keyring(tmp / "keys" / "keyring.yaml")
    subscribers = shape.daemons if shape.shared else 1
    sims = [start_sim(tmp, f"fs{i + 1}", calls, rate, subscribers) for i in range(shape.sims)]
    nodes = [(f"fs{i + 1}", port) for i, (_, port) in enumerate(sims)]
    daemons: list[subprocess.Popen] = []
    total = calls * shape.sims
    try:
        for d in range(shape.daemons):
            mine = nodes if shape.shared else nodes[d * shape.nodes:(d + 1) * shape.nodes]
            log = open(tmp / f"daemon-{d}.log", "ab")  # noqa: SIM115 - closed with the process
            daemons.append(subprocess.Popen(
                [sys.executable, "-m", "eslbridge", "--config", str(daemon_config(tmp, dsn, f"d{d}", mine)), "run"],
                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT))
            log.close()
        with psycopg.connect(dsn, autocommit=True) as conn:
            while not conn.execute("SELECT count(*) FROM call_records").fetchone()[0]:
                _check_alive(daemons, tmp)
                time.sleep(0.02)
            cpu0, ticks0, idle0, wall0 = ([cpu_seconds(p.pid) for p in daemons], cpu_ticks(), idle_ticks(),
                                          time.monotonic())
            sim0 = sum(cpu_seconds(p.pid) for p, _ in sims)
            deadline = time.monotonic() + 300 + 10 * total / rate  # a loaded host is slow, not wrong
            done = 0
            while time.monotonic() < deadline:
                done = conn.execute("SELECT count(*) FROM call_records WHERE stage = 3").fetchone()[0]
                if done >= total:
                    break
                _check_alive(daemons, tmp)
                time.sleep(0.05)
            cpu1, ticks1, idle1 = [cpu_seconds(p.pid) for p in daemons], cpu_ticks(), idle_ticks()
            wall = time.monotonic() - wall0
            sims_cpu = 100 * (sum(cpu_seconds(p.pid) for p, _ in sims) - sim0) / wall
            span = conn.execute("SELECT extract(epoch FROM max(updated_at) - min(start_time)) FROM call_records"
                                ).fetchone()[0]
    finally:
        for proc in daemons:
            proc.send_signal(signal.SIGTERM)
        for proc in daemons:
            proc.wait(20)
        for proc, _ in sims:
            proc.terminate()
            proc.wait(10)
    ledgers = {f"fs{i + 1}": ledger_calls(tmp / f"ledger-fs{i + 1}") for i in range(shape.sims)}
    shutil.rmtree(tmp)  # the keyring and the journals go with it
    exact = not ledger_problems(call_rows(dsn), ledgers)
    busy = 100 - 100 * (idle1 - idle0) / max(1, ticks1[1] - ticks0[1])
    return {
        "shape": shape.text, "calls": done, "span": float(span), "rate": done / float(span),
        "cpu": [100 * (b - a) / wall for a, b in zip(cpu0, cpu1, strict=True)], "sims_cpu": sims_cpu,
        "cpu_ms": 1000 * (sum(cpu1) - sum(cpu0)) / max(1, done),
        "busy": busy, "steal": steal_percent(ticks0, ticks1), "exact": exact, "total": total,
    }


def _check_alive(daemons: list[subprocess.Popen], tmp: Path) -> None:
    for d, proc in enumerate(daemons):
        if proc.poll() is not None:
            tail = (tmp / f"daemon-{d}.log").read_text(errors="replace").strip().splitlines()[-1:]
            raise RuntimeError(f"daemon {d} exited with {proc.returncode}: {' '.join(tail)}")


def idle_ticks() -> int:
    """Idle + iowait ticks since boot over all CPUs (cpu_ticks gives the steal and the total)."""
    with contextlib.suppress(OSError), open("/proc/stat") as stat:
        values = [int(n) for n in stat.readline().split()[1:]]
        return values[3] + values[4]
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="1x1,1x4,2x2,2on1", help="comma-separated: DxN or 2on1")
    parser.add_argument("--calls", type=int, default=2000, help="calls per simulated node")
    parser.add_argument("--rate", type=float, default=400.0, help="calls/s offered by each node")
    args = parser.parse_args()
    cluster = PgCluster(durable=True)
    cluster.start()
    try:
        for text in args.shapes.split(","):
            r = run_shape(Shape(text), cluster, args.calls, args.rate)
            cpu = " + ".join(f"{c:.0f}%" for c in r["cpu"])
            print(f"{r['shape']:>5}: {r['calls']} calls in {r['span']:.1f} s = {r['rate']:.0f} calls/s; "
                  f"daemon CPU {cpu} of a core ({r['cpu_ms']:.2f} ms per call), simulators {r['sims_cpu']:.0f}%; "
                  f"machine busy {r['busy']:.0f}%, steal {r['steal']:.0f}%; "
                  + (f"exactly once vs ledgers: {'yes' if r['exact'] else 'NO'}" if r["calls"] == r["total"]
                     else f"INCOMPLETE: {r['calls']} of {r['total']} finished in time"), flush=True)
    finally:
        cluster.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
