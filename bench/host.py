"""What the hypervisor took from this VM during a measurement (``steal`` in /proc/stat).

On this VM the share varies from run to run (0 to 27 % was seen), and every latency percentile
moves with it, so the benchmarks print it beside their p99s."""

from __future__ import annotations


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
