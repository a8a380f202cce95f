"""python -m eslbridge.esl: connect to one FreeSWITCH node and count what arrives (a diagnostic).

The password comes from --password-file or $ESLBRIDGE_ESL_PASSWORD, never from the command line.
Exit codes as the daemon's: 78 when FreeSWITCH refuses the password.
"""

from __future__ import annotations

import argparse
import os
import sys

import gevent

from eslbridge.errors import EXIT_USAGE, EslBridgeError
from eslbridge.esl.inbound import InboundClient


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eslbridge.esl", description="Count ESL events from one node.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8021)
    p.add_argument("--node", default="fs1")
    p.add_argument("--format", choices=("json", "plain"), default="json")
    p.add_argument("--password-file")
    p.add_argument("--count", type=int, default=0, help="exit after this many events (0: run until killed)")
    p.add_argument("--seconds", type=float, default=0.0, help="exit after this long (0: no limit)")
    args = p.parse_args(argv)
    if args.password_file:
        with open(args.password_file, encoding="utf-8") as fh:
            password = fh.read().strip()
    elif "ESLBRIDGE_ESL_PASSWORD" in os.environ:
        password = os.environ["ESLBRIDGE_ESL_PASSWORD"]
    else:
        print("no password: use --password-file or $ESLBRIDGE_ESL_PASSWORD", file=sys.stderr)
        return EXIT_USAGE
    done = gevent.event.Event()
    seen = [0]

    def consume(node: str, event: dict) -> None:
        seen[0] += 1
        if args.count and seen[0] >= args.count:
            done.set()

    client = InboundClient(args.host, args.port, password, args.node, args.format, consume,
                           lambda node, rows: print(f"snapshot: {len(rows)} channels", flush=True),
                           on_fatal=lambda node, exc: done.set())
    client.start()
    done.wait(args.seconds or None)
    client.stop()
    print(f"events: {dict(client.stats.events_in)} parse errors: {dict(client.stats.parse_errors)}", flush=True)
    try:
        client.wait(0)
    except EslBridgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
