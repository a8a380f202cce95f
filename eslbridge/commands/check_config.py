"""``eslbridge check-config``: validate the config, the keyring, and reach the database and every
FreeSWITCH node, one line per check. Exit 0 all ok, 78 config or credentials wrong, 1 unreachable."""

from __future__ import annotations

import argparse
import socket
from collections.abc import Callable

import psycopg

from eslbridge.commands.common import credentials_refused, journal_dir_problem
from eslbridge.config import Config, NodeConfig, load_config
from eslbridge.errors import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, ConfigError, EslBridgeError
from eslbridge.ops.logs import first_line

ESL_TIMEOUT = 5.0

class CheckFailed(Exception):
    """A failed check; ``exit_code`` says whether settings (78) or reachability (1) is at fault."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def check_keyring(config: Config) -> str:
    from eslbridge.keys.keyring import Keyring  # lazily: check-config must report a broken config first

    keyring = Keyring.load(config.encryption.keyring_file)
    return f"active key {keyring.active_id}, keys {', '.join(map(str, keyring.key_ids))}"


def check_database(config: Config) -> str:
    from eslbridge.store.migrate import status

    db = config.database
    try:
        with psycopg.connect(db.url.reveal(), connect_timeout=max(1, int(db.connect_timeout))) as conn:
            conn.execute("SELECT 1")
            current = status(conn)
    except psycopg.OperationalError as exc:
        code = EXIT_CONFIG if credentials_refused(exc) else EXIT_FAILURE
        raise CheckFailed(f"{first_line(exc)} (url from {db.url.source})", code) from None
    except psycopg.Error as exc:
        raise CheckFailed(f"query failed: {first_line(exc)}") from None
    if not current.applied:
        raise CheckFailed("no migrations applied: run `eslbridge migrate`")
    if current.pending or current.changed:
        problems = [f"pending: {', '.join(current.pending)}"] if current.pending else []
        problems += [f"changed since applied: {', '.join(current.changed)}"] if current.changed else []
        raise CheckFailed("; ".join(problems) + " (run `eslbridge migrate`)")
    return f"{len(current.applied)} migrations applied"


def check_journal(config: Config) -> str:
    problem = journal_dir_problem(config.journal.dir)
    if problem:
        raise CheckFailed(f"{problem}: the daemon keeps unwritten records there", EXIT_CONFIG)
    return "writable"


class Degraded(Exception):
    """Something works less well than configured, and the daemon copes: said, never fatal."""


_REPLICA_STATE = """SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text,
                           pg_last_wal_replay_lsn() - '0/0'::pg_lsn,
                           extract(epoch FROM now() - pg_last_xact_replay_timestamp())"""


def check_replica(config: Config) -> str:
    """``database.replica_url``: reachable, a standby, and how far it is behind the primary."""
    db = config.database
    timeout = max(1, int(db.connect_timeout))
    try:
        with psycopg.connect(db.replica_url.reveal(), connect_timeout=timeout) as conn:
            standby, replayed, replayed_bytes, last_replay_age = conn.execute(_REPLICA_STATE).fetchone()
    except psycopg.OperationalError as exc:
        if credentials_refused(exc):
            raise CheckFailed(f"{first_line(exc)} (url from {db.replica_url.source})", EXIT_CONFIG) from None
        raise Degraded(f"unreachable ({first_line(exc)}): directory lookups will read the primary") from None
    if not standby:
        raise Degraded("reachable but not a standby: directory lookups will read the primary")
    try:
        with psycopg.connect(db.url.reveal(), connect_timeout=timeout) as conn:
            primary_at = conn.execute("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn").fetchone()[0]
    except psycopg.Error:
        behind = "primary unreachable"
    else:
        behind = f"{max(0, int(primary_at - replayed_bytes))} bytes behind the primary"
    age = "never" if last_replay_age is None else f"{float(last_replay_age):.1f} s ago"
    detail = (f"standby, replayed up to {replayed}, {behind}, last transaction replayed {age}; "
              f"lookups fall back to the primary beyond {db.replica_max_lag:g} s of lag")
    return detail


def check_esl(node: NodeConfig, timeout: float = ESL_TIMEOUT) -> str:
    """Connect, expect the ``auth/request`` banner, ``auth``, expect ``+OK accepted`` (what the daemon
    requires), ``exit``."""
    from eslbridge.esl import protocol
    from eslbridge.esl.framing import FrameParser

    password = node.password.reveal()
    try:
        with socket.create_connection((node.host, node.port), timeout=timeout) as sock:
            parser = FrameParser()
            exchange: protocol.Exchange[str] = protocol.Exchange()
            frames: list = []

            def next_frame(what: str):
                while not frames:
                    data = sock.recv(65536)
                    if not data:
                        raise CheckFailed(f"connection closed while waiting for {what}")
                    frames.extend(parser.feed(data))
                return frames.pop(0)

            banner = next_frame("the auth/request banner")
            if exchange.receive(banner).kind is not protocol.Kind.BANNER:
                raise CheckFailed(f"not an event socket: first frame is {banner.content_type!r}")
            sock.sendall(exchange.command(f"auth {password}", "auth"))
            reply = next_frame("the auth reply")
            if exchange.receive(reply).kind is not protocol.Kind.REPLY or not protocol.authenticated(reply):
                text = reply.headers.get("Reply-Text", "")
                raise CheckFailed(f"authentication rejected ({text or reply.content_type}; "
                                  f"password from {node.password.source})", EXIT_CONFIG)
            sock.sendall(exchange.command("exit", "exit"))
            next_frame("the exit reply")  # leave politely: FreeSWITCH answers, then hangs up
    except TimeoutError:
        raise CheckFailed(f"no answer within {timeout:g} s") from None
    except OSError as exc:
        raise CheckFailed(exc.strerror or str(exc)) from None
    return "authenticated"


def _run(label: str, check: Callable[[], str]) -> int:
    try:
        detail = check()
    except Degraded as exc:
        print(f"{label}: degraded: {exc}")
        return EXIT_OK
    except CheckFailed as exc:
        print(f"{label}: FAIL: {exc}")
        return exc.exit_code
    except EslBridgeError as exc:
        print(f"{label}: FAIL: {exc}")
        return exc.exit_code
    print(f"{label}: ok ({detail})")
    return EXIT_OK


def run_checks(config_path: str | None) -> int:
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(f"config: FAIL: {exc}")
        return EXIT_CONFIG
    print(f"config {config.path}: ok")
    results = [
        _run(f"keyring {config.encryption.keyring_file}", lambda: check_keyring(config)),
        _run(f"journal {config.journal.dir}", lambda: check_journal(config)),
        _run("database", lambda: check_database(config)),
    ]
    if config.database.replica_url is not None:
        results.append(_run("replica (database.replica_url)", lambda: check_replica(config)))
    for node in config.freeswitch:
        results.append(_run(f"esl {node.name} ({node.host}:{node.port})", lambda n=node: check_esl(n)))
    # Wrong settings outrank unreachable peers: systemd must not restart into the same mistake.
    if EXIT_CONFIG in results:
        return EXIT_CONFIG
    return EXIT_FAILURE if EXIT_FAILURE in results else EXIT_OK


def _cmd(args: argparse.Namespace) -> int:
    return run_checks(args.config)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "check-config",
        help="validate the config and keyring, reach the database and FreeSWITCH",
        description="Validate the config and keyring, connect to PostgreSQL (and check migrations) and "
        "authenticate to every FreeSWITCH event socket. Exit 0 ok, 78 config or credentials wrong, 1 unreachable.",
    )
    parser.set_defaults(func=_cmd)
