"""Command line entry point (DESIGN section 3).

Each feature module owns its subcommands: it exposes
``register(subparsers) -> None`` and sets ``func`` (``args -> int``) on the
parsers it adds. This file only assembles them and maps errors to exit codes,
so adding a command never means editing another feature's code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from eslbridge import __version__
from eslbridge.errors import EXIT_FAILURE, EslBridgeError
from eslbridge.logsetup import setup_logging

# Modules that contribute subcommands, in the order `--help` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "eslbridge.commands.run",
    "eslbridge.store.migrate",
    "eslbridge.commands.check_config",
    "eslbridge.commands.users",
    "eslbridge.commands.gdpr",
    "eslbridge.commands.keys",
    "eslbridge.commands.retention",
    "eslbridge.commands.demo",
)

# Commands that run gevent servers: gevent must patch the standard library before
# psycopg and friends are imported, so this happens before the parser is built.
GEVENT_COMMANDS = frozenset({"run", "demo"})


def _command_name(argv: list[str]) -> str | None:
    """The subcommand, found without importing the feature modules."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--config":
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eslbridge",
        description="FreeSWITCH ESL to PostgreSQL bridge: encrypted CDRs and SIP directory.",
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="config file (default: $ESLBRIDGE_CONFIG, then /etc/eslbridge/eslbridge.yaml)",
    )
    parser.add_argument("--version", action="version", version=f"eslbridge {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if _command_name(argv) in GEVENT_COMMANDS:
        from gevent import monkey

        monkey.patch_all()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    if not logging.getLogger().handlers:  # `run` and `demo` set up their own from the config
        setup_logging("info", "text", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except EslBridgeError as exc:
        print(f"eslbridge {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
