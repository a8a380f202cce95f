"""``eslbridge journal quarantine list|retry``: records PostgreSQL refused, kept by the writer.

``list`` shows each quarantined record (call UUID, stage, start, the SQLSTATE it was refused with;
never a personal value). ``retry`` writes them again, the way the writer does, once the cause is
fixed; those still refused stay quarantined. Run it as the service's user (the files are 0600).
"""

from __future__ import annotations

import argparse

import psycopg

from eslbridge.calls.records import RecordUpdate
from eslbridge.commands.common import add_keyring_option, admin_connection, keyring_path
from eslbridge.config import load_section
from eslbridge.keys.keyring import Keyring
from eslbridge.store.quarantine import Quarantine
from eslbridge.store.rows import FieldEncoder, batch_rows
from eslbridge.store.upsert import DEFAULT_METHOD, METHODS


def _quarantine(args: argparse.Namespace) -> tuple[Quarantine, Keyring]:
    keyring = Keyring.load(keyring_path(args))
    directory = load_section("journal", args.config).dir / "quarantine"
    return Quarantine(directory, keyring.journal_sealer()), keyring


def _list(args: argparse.Namespace) -> int:
    quarantine, _ = _quarantine(args)
    items = quarantine.items()
    for item in items:
        rec = item.update.record
        print(f"{item.seq}\t{rec.call_uuid}\t{item.update.stage.name}\t{rec.start_time.isoformat()}\t{item.reason}")
    print(f"{len(items)} quarantined record(s)")
    return 0


def _retry(args: argparse.Namespace) -> int:
    quarantine, keyring = _quarantine(args)
    encoder, method = FieldEncoder(keyring), METHODS[DEFAULT_METHOD]
    with admin_connection(args) as conn:
        method.prepare(conn)

        def write(update: RecordUpdate) -> str | None:
            try:
                method.write(conn, batch_rows([update], encoder))
            except psycopg.OperationalError:
                raise
            except (psycopg.Error, ValueError, TypeError) as e:
                return getattr(e, "sqlstate", None) or type(e).__name__
            return None

        stored, refused = quarantine.retry(write)
    print(f"{stored} record(s) stored, {refused} still refused (kept in the quarantine)")
    return 0 if not refused else 1


def register(sub: argparse._SubParsersAction) -> None:
    j = sub.add_parser("journal", help="the on-disk journal")
    j_sub = j.add_subparsers(dest="journal_command", metavar="SUBCOMMAND", required=True)
    q = j_sub.add_parser("quarantine", help="records PostgreSQL refused, kept instead of dropped")
    q_sub = q.add_subparsers(dest="quarantine_command", metavar="ACTION", required=True)
    for name, text, func in (
        ("list", "list the quarantined records (no personal values)", _list),
        ("retry", "write the quarantined records again; those still refused stay", _retry),
    ):
        add_keyring_option(q_sub.add_parser(name, help=text))
        q_sub.choices[name].set_defaults(func=func)
