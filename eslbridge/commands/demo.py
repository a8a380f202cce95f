"""`eslbridge demo`: a self-contained run that shows what eslbridge does (README quick start)."""

from __future__ import annotations

import argparse


def _cmd_demo(args: argparse.Namespace) -> int:
    from eslbridge.demo import run_demo  # starts servers: gevent is patched by the CLI first

    return run_demo(seconds=args.seconds, rate=args.rate)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="private PostgreSQL + simulated FreeSWITCH + daemon; prints what landed")
    p.add_argument("--seconds", type=float, default=8.0, help="how long calls are started for (default 8)")
    p.add_argument("--rate", type=float, default=25.0, help="new calls per second (default 25)")
    p.set_defaults(func=_cmd_demo)
