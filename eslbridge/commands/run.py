"""`eslbridge run`: the daemon in the foreground (systemd runs this)."""

from __future__ import annotations

import argparse

from eslbridge.config import load_config
from eslbridge.logsetup import setup_logging


def _cmd_run(args: argparse.Namespace) -> int:
    from eslbridge.daemon import Daemon  # heavy imports only for this command

    config = load_config(args.config)
    setup_logging(config.logging.level, config.logging.format)
    return Daemon(config, args.config).run()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the daemon in the foreground (systemd runs this)")
    p.set_defaults(func=_cmd_run)
