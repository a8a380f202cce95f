"""`eslbridge user limit USER --realm R [--max N [--window-minutes M] | --clear]` (DESIGN sections 3, 5).

Without an option it shows the user's call limit and the current window; ``--max`` sets it, ``--clear``
removes it (no limit: a NULL ``rate_limits.max_requests``). Changes are audited like every admin command.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import psycopg

from eslbridge.accounts import ratelimits
from eslbridge.commands.common import admin_connection
from eslbridge.errors import UsageError


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _print(address: str, limit: ratelimits.Limit) -> None:
    print(f"{address}: {limit.describe()}")
    if limit.window_start is None:
        print("current window: no call attempt counted yet")
    else:
        print(f"current window: {limit.request_count} attempt(s) since "
              f"{limit.window_start.isoformat(timespec='seconds')} ({limit.window_minutes} min window)")


def _limit(conn: psycopg.Connection, args: argparse.Namespace) -> int:
    if args.clear:
        limit = ratelimits.clear_limit(conn, args.user, args.realm)
    elif args.max is not None:
        limit = ratelimits.set_limit(conn, args.user, args.realm, args.max, args.window_minutes)
    else:
        limit = ratelimits.get_limit(conn, args.user, args.realm)
    _print(f"{args.user}@{args.realm.lower()}", limit)
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.window_minutes is not None and args.max is None:
        raise UsageError("--window-minutes goes with --max N")
    with admin_connection(args) as conn:
        return _limit(conn, args)


def register(usub: argparse._SubParsersAction,
             identity: Callable[[argparse.ArgumentParser], argparse.ArgumentParser]) -> None:
    """Add `limit` to the `user` subcommands (``identity`` adds USER and --realm)."""
    p = identity(usub.add_parser(
        "limit", help="show, set or clear a user's outbound call limit",
        description="Show, set or clear how many calls the user may place per time window through the "
                    "outbound socket (rate_limits). Without a limit (the default) calls are counted, not "
                    "refused."))
    what = p.add_mutually_exclusive_group()
    what.add_argument("--max", type=_whole_number, metavar="N",
                      help="allow at most N calls per window (0 refuses every call)")
    what.add_argument("--clear", action="store_true", help="remove the limit (no limit)")
    p.add_argument("--window-minutes", type=_whole_number, metavar="M",
                   help=f"window length in minutes, with --max (default: the current one, else "
                        f"{ratelimits.DEFAULT_WINDOW_MINUTES})")
    p.set_defaults(func=_run)
