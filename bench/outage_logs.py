"""Log lines the daemon writes while PostgreSQL is down: start it against a private cluster and the
simulator, stop PostgreSQL, count the lines (by kind) written during the outage.

    python -m bench.outage_logs [--seconds 60]
"""

from __future__ import annotations

import argparse
import collections
import re
import tempfile
import time
from pathlib import Path

import psycopg

from eslbridge.sim.localpg import PgCluster
from eslbridge.store.migrate import migrate
from tests.test_daemon import Env, Sim

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\S+ ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long PostgreSQL stays down")
    args = parser.parse_args()
    cluster = PgCluster()
    cluster.start()
    tmp = Path(tempfile.mkdtemp(prefix="eslbridge-outage-"))
    env = sim = None
    try:
        with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE outage")
        migrate(cluster.dsn("outage"))
        env = Env(tmp, cluster.dsn("outage"))
        sim = Sim(tmp, "--wait-subscribers", "1", "--calls", "100000", "--rate", "20", "--speed", "4")
        env.start(env.config(sim.port))
        time.sleep(8)
        before = len(env.log().splitlines())
        cluster.stop()
        time.sleep(args.seconds)
        lines = env.log().splitlines()[before:]
    finally:
        if env:
            env.stop_all()
        if sim:
            sim.stop()
        cluster.destroy()
    kinds = collections.Counter(TIMESTAMP.sub("", line)[:72] for line in lines)
    print(f"{len(lines)} log lines in {args.seconds:.0f} s of database outage")
    for kind, n in kinds.most_common(10):
        print(f"{n:6}  {kind}")


if __name__ == "__main__":
    main()
