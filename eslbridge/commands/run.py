"""`eslbridge run`: the daemon in the foreground (systemd runs this)."""

from __future__ import annotations

import argparse
import logging

import psycopg

from eslbridge.commands.common import credentials_refused, db_error, journal_dir_problem
from eslbridge.config import Config, load_config
from eslbridge.errors import ConfigError
from eslbridge.ops.logs import first_line, setup_logging

log = logging.getLogger("eslbridge.daemon")


def check_start(config: Config) -> None:
    """Refuse to start (exit 78) on what a restart cannot fix: an unwritable journal directory, or a
    database that answers but refuses the credentials. An unreachable database is no reason to
    stop: the daemon journals and retries, as it does for outages at run time."""
    problem = journal_dir_problem(config.journal.dir)
    if problem:
        raise ConfigError(f"journal.dir: {problem}")
    db = config.database
    try:
        with psycopg.connect(db.url.reveal(), connect_timeout=max(1, int(db.connect_timeout))):
            pass
    except psycopg.OperationalError as exc:
        if credentials_refused(exc):
            raise db_error(exc) from None
        log.warning("database not reachable yet, journaling and retrying: %s", first_line(exc))


def _cmd_run(args: argparse.Namespace) -> int:
    from eslbridge.daemon import Daemon  # heavy imports only for this command

    config = load_config(args.config)
    setup_logging(config.logging.level, config.logging.format)
    check_start(config)
    return Daemon(config, args.config).run()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the daemon in the foreground (systemd runs this)",
                       description="Run the daemon in the foreground until SIGTERM; SIGHUP reloads logging and "
                       "the keyring. Exit 78 when the configuration or the database credentials are wrong.")
    p.set_defaults(func=_cmd_run)
