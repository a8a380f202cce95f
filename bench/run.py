"""Every benchmark of the project, then one table of DESIGN section 11's figures with anchors and ratios.

Each benchmark runs as its own process (`python -m bench.NAME`), prints its own report, and ends
with a `bench-result: {json}` line that this runner collects. Anchors are measured in the same run
(stock greenswitch and Genesis, the raw socket read, one INSERT per leg, one SELECT per request),
never copied from elsewhere.

    python -m bench.run [--quick] [--writes-seconds 60]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(name: str, args: list[str]) -> dict:
    print(f"\n=== python -m bench.{name} {' '.join(args)}", flush=True)
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", f"bench.{name}", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    result: dict = {}
    for line in proc.stdout:
        if line.startswith("bench-result: "):
            result.update(json.loads(line.split(": ", 1)[1]))
        else:
            print("  " + line.rstrip(), flush=True)
    code = proc.wait()
    print(f"=== {name}: exit {code}, {time.monotonic() - started:.0f} s", flush=True)
    return result


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f}{unit}" if abs(value) >= 100 else f"{value:,.1f}{unit}"


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "n/a"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (a smoke test of the benchmarks)")
    parser.add_argument("--writes-seconds", type=float, default=20.0, help="sustained write run (DESIGN: 60)")
    args = parser.parse_args()
    q = args.quick
    r = {
        "crypto": run("crypto", ["--n", "2000" if q else "20000"]),
        "memory": run("memory", ["--calls", "30000" if q else "300000", "--active", "2000" if q else "10000"]),
        "correlate": run("correlate", ["--calls", "2000" if q else "20000"]),
        "intake": run("intake", ["--events", "20000", "--stock-events", "3000", "--genesis-events", "2000",
                                 "--correlated-events", "6000"] if q else ["--events", "200000"]),
        "directory": run("directory", ["--seconds", "3" if q else "10"]),
        "writes": run("writes", ["--seconds", "5" if q else f"{args.writes_seconds:g}"]),
    }
    i, c, d, w, m, k = (r["intake"], r["correlate"], r["directory"], r["writes"], r["memory"], r["crypto"])
    ij, ip = i.get("json", {}), i.get("plain", {})
    dc, du, db, fl = d.get("cached", {}), d.get("uncached", {}), d.get("baseline", {}), d.get("floor_p99", {})
    rows = [
        ("ESL intake + correlation, json, events/CPU-s", fmt(i.get("correlated_cpu_eps")),
         ">= 50,000; >= 10x greenswitch", f"greenswitch plain {fmt(ij.get('stock_cpu_eps'))}",
         ratio(i.get("correlated_cpu_eps"), ij.get("stock_cpu_eps"))),
        ("  same, against Genesis", "", ">= 3x Genesis", f"Genesis plain {fmt(ij.get('genesis_cpu_eps'))}",
         ratio(i.get("correlated_cpu_eps"), ij.get("genesis_cpu_eps"))),
        ("  same, wall clock events/s", fmt(i.get("correlated_eps")), "",
         f"raw read {fmt(ij.get('raw_eps'))}", ratio(i.get("correlated_eps"), ij.get("raw_eps"))),
        ("ESL intake alone, json, events/CPU-s", fmt(ij.get("ours_cpu_eps")), "(part of the first row)",
         f"greenswitch plain {fmt(ij.get('stock_cpu_eps'))}", ratio(ij.get("ours_cpu_eps"), ij.get("stock_cpu_eps"))),
        ("ESL intake alone, plain, events/CPU-s", fmt(ip.get("ours_cpu_eps")), ">= 5x greenswitch",
         f"greenswitch {fmt(ip.get('stock_cpu_eps'))}", ratio(ip.get("ours_cpu_eps"), ip.get("stock_cpu_eps"))),
        ("  plain, wall clock events/s", fmt(ip.get("ours_eps")), "",
         f"raw read {fmt(ip.get('raw_eps'))}", ratio(ip.get("ours_eps"), ip.get("raw_eps"))),
        ("  host load average (2 cores)", fmt(i.get("load")), "", "", ""),
        ("correlator alone, minimal / ALL events, events/s",
         f"{fmt(c.get('minimal_eps'))} / {fmt(c.get('all_eps'))}", "(part of the first row)", "", ""),
        ("into PostgreSQL, sustained calls/s", fmt(w.get("sustained_cps")), ">= 1,000 for 60 s",
         f"INSERT per leg {fmt(w.get('baseline_cps'))}", ratio(w.get("sustained_cps"), w.get("baseline_cps"))),
        ("  records lost", fmt(w.get("lost")), "0", "", ""),
        ("  p99 hangup-to-commit, ms", fmt(w.get("p99_ms")), "<= 500", f"host steal {fmt(w.get('steal'))} %", ""),
        ("directory cached, req/s", fmt(dc.get("rps")), ">= 5,000",
         f"SELECT per request {fmt(db.get('rps'))}", ratio(dc.get("rps"), db.get("rps"))),
        ("directory uncached, req/s", fmt(du.get("rps")), ">= 1,500",
         f"SELECT per request {fmt(db.get('rps'))}", ratio(du.get("rps"), db.get("rps"))),
        ("directory p99 cached / uncached, ms", f"{fmt(dc.get('p99'))} / {fmt(du.get('p99'))}", "<= 5",
         f"floor {fmt(fl.get('5000'))} / {fmt(fl.get('1500'))}", ""),
        ("  CPU stolen by the host meanwhile, %", f"{fmt(dc.get('steal'))} / {fmt(du.get('steal'))}", "", "", ""),
        ("memory per active call, bytes", fmt(m.get("bytes_per_active_call")), "<= 5,120", "", ""),
        (f"RSS growth, 2nd half of {fmt(m.get('calls'))} calls, MiB", fmt(m.get("rss_growth_second_half_mib")),
         "flat", "", ""),
        ("encrypt a phone number, us", fmt(k.get("encrypt_number_us")), "microseconds",
         f"S2K per message {fmt(k.get('naive_s2k_us'))}", ratio(k.get("naive_s2k_us"), k.get("encrypt_number_us"))),
    ]
    headers = ("figure (DESIGN section 11)", "measured", "target", "anchor (same run)", "ratio")
    widths = [max(len(str(row[n])) for row in [headers, *rows]) for n in range(len(headers))]
    print()
    for n, row in enumerate([headers, *rows]):
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
