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
from collections.abc import Iterator

from eslbridge import __version__
from eslbridge.errors import EXIT_FAILURE, EXIT_USAGE, EslBridgeError
from eslbridge.ops.logs import setup_logging

# Modules that contribute subcommands, in the order `--help` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "eslbridge.commands.run",
    "eslbridge.commands.migrate",
    "eslbridge.commands.check_config",
    "eslbridge.commands.users",
    "eslbridge.commands.gdpr",
    "eslbridge.commands.keys",
    "eslbridge.commands.retention",
    "eslbridge.commands.journal",
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
        elif arg in ("--config", "--keyring"):
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eslbridge",
        description="FreeSWITCH ESL to PostgreSQL bridge: encrypted CDRs and SIP directory.",
        epilog="Exit codes: 0 ok, 1 runtime failure (e.g. database unreachable), 2 usage, "
        "78 configuration or credentials wrong (systemd does not restart on 78).",
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
    for command in _commands(parser):
        # Also after the command; SUPPRESS keeps a value given before it.
        command.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                             help="config file (default: $ESLBRIDGE_CONFIG, then /etc/eslbridge/eslbridge.yaml)")
    return parser


def _commands(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """Every (sub)command parser below ``parser``; each gets its help line as description if it has none."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, command in action.choices.items():
                if not command.description and helps.get(name):
                    command.description = helps[name][0].upper() + helps[name][1:] + "."
                yield command
                yield from _commands(command)


def _error_line(exc: BaseException) -> EslBridgeError:
    """Whatever escaped a command, as the one line an operator sees (never a traceback)."""
    import psycopg

    from eslbridge.commands.common import db_error

    if isinstance(exc, EslBridgeError):
        return exc
    if isinstance(exc, psycopg.Error):
        return db_error(exc)
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return EslBridgeError(f"{where}{exc.strerror or exc}")
    return EslBridgeError(f"unexpected {type(exc).__name__}: {exc} (please report this)")


def _command_path(args: argparse.Namespace) -> str:
    """``user delete`` for ``eslbridge user delete ...``: the (sub)command names, outermost first."""
    return " ".join(v for k, v in vars(args).items() if k == "command" or (k.endswith("_command") and v))


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
    except KeyboardInterrupt:
        return EXIT_FAILURE
    except EOFError:  # a confirmation prompt whose stdin closed
        print(f"eslbridge {_command_path(args)}: no answer: nothing was changed", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        error = _error_line(exc)
        message = " ".join(str(error).split("\n"))
        print(f"eslbridge {_command_path(args)}: {message}", file=sys.stderr)
        return error.exit_code


if __name__ == "__main__":
    sys.exit(main())
