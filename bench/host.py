"""What the hypervisor took from this VM during a measurement (``steal`` in /proc/stat), and how
long a server under test waited for a CPU (``run_queue_wait``).

On this VM the share varies from run to run (0 to 27 % was seen), and every latency percentile
moves with it, so the benchmarks print it beside their p99s. A server pinned to one core also
waits whenever another process (PostgreSQL, other work on the host) holds that core: a p99 of a
few milliseconds is mostly such waits, so the directory benchmark prints them too."""

from __future__ import annotations

import os
from pathlib import Path


def cpu_ticks() -> tuple[int, int]:
    """(stolen, total) CPU ticks since boot over all CPUs; (0, 0) where /proc/stat is missing."""
    try:
        with open("/proc/stat") as stat:
            ticks = [int(n) for n in stat.readline().split()[1:]]
    except OSError:
        return 0, 0
    return (ticks[7] if len(ticks) > 7 else 0), sum(ticks[:8])


def steal_percent(before: tuple[int, int], after: tuple[int, int]) -> float:
    """The share of all CPU time between two ``cpu_ticks()`` readings that the host stole, in %."""
    return 100 * (after[0] - before[0]) / max(1, after[1] - before[1])


def run_queue_wait(pid: int) -> float:
    """Seconds the threads of process ``pid`` have spent runnable but not running, since they
    started (``/proc/PID/task/*/schedstat``, second field); 0.0 where that is not available."""
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            total += int(stat.read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return total / 1e9


def _proc_cpu(pid: int, children: bool = False) -> float:
    """CPU seconds of process ``pid`` (user + system; with ``children``, also its reaped children's)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    ticks = [int(f) for f in fields[11:15]]  # utime stime cutime cstime
    return sum(ticks if children else ticks[:2]) / os.sysconf("SC_CLK_TCK")


def server_cpu(postmaster_pid: int) -> float:
    """CPU seconds a PostgreSQL server has used so far: the postmaster, its live children (backends,
    walwriter, checkpointer, ...) and the ones that exited (the postmaster reaps them)."""
    total = _proc_cpu(postmaster_pid, children=True)
    for task in Path(f"/proc/{postmaster_pid}/task").glob("*/children"):
        try:
            total += sum(_proc_cpu(int(pid)) for pid in task.read_text().split())
        except OSError:
            continue
    return total
