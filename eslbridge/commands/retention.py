"""``eslbridge retention run [--dry-run]``: apply the retention windows now (DESIGN sections 3 and 4)."""

from __future__ import annotations

import argparse

from eslbridge.commands.common import admin_connection
from eslbridge.config import load_section
from eslbridge.ops.progress import Progress
from eslbridge.privacy.retention import RETENTION_TABLES, run_retention


def _run(args: argparse.Namespace) -> int:
    cfg = load_section("retention", args.config)
    bar = Progress("retention", RETENTION_TABLES, unit="tables")
    with admin_connection(args) as conn:
        report = run_retention(conn, cfg, dry_run=args.dry_run, progress=lambda table: bar.advance(note=table))
    bar.finish()
    if report.dry_run:
        print("dry run: nothing was removed")
    for line in report.lines():
        print(line)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("retention", help="data retention")
    r_sub = r.add_subparsers(dest="retention_command", metavar="SUBCOMMAND", required=True)
    p = r_sub.add_parser("run", help="remove what is past its retention window (the daemon also does this daily)")
    p.add_argument("--dry-run", action="store_true", help="only count what would be removed")
    p.set_defaults(func=_run)
