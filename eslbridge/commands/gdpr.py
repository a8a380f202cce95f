"""``eslbridge gdpr export|erase USER --realm R``: one person's data, decrypted or erased (DESIGN section 8)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from eslbridge.commands.common import add_keyring_option, add_yes_option, admin_connection, confirm, keyring_path
from eslbridge.errors import EslBridgeError
from eslbridge.keys.keyring import Keyring
from eslbridge.privacy import gdpr


def _subject(args: argparse.Namespace, conn, keyring: Keyring) -> gdpr.Subject:
    subject = gdpr.find_subject(conn, keyring, args.user, args.realm)
    if subject.user_id is None:
        print(f"note: {subject.username}@{subject.realm} is not a user; only calls found by the blind index count",
              file=sys.stderr)
    return subject


def _write_private(path: Path, text: str) -> None:
    """The export holds personal data in clear: mode 0600, and never over an existing file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise EslBridgeError(f"{path}: already exists; refusing to overwrite it") from None
    except OSError as e:
        raise EslBridgeError(f"{path}: cannot create ({e.strerror})") from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def _export(args: argparse.Namespace) -> int:
    keyring = Keyring.load(keyring_path(args))
    with admin_connection(args) as conn:
        data = gdpr.export_subject(conn, keyring, _subject(args, conn, keyring))
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    if args.out:
        _write_private(Path(args.out), text)
        print(f"wrote {args.out}: {len(data['calls'])} calls, {len(data['call_records'])} call records, "
              f"{len(data['call_events'])} call events, {len(data['audit_logs'])} audit entries", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _print_counts(counts: dict[str, int]) -> None:
    for name, n in counts.items():
        print(f"  {name:<22} {n}")


def _erase(args: argparse.Namespace) -> int:
    keyring = Keyring.load(keyring_path(args))
    with admin_connection(args) as conn:
        subject = _subject(args, conn, keyring)
        preview = gdpr.erase_counts(conn, subject)
        if args.dry_run:
            print(f"dry run: erasing {subject.username}@{subject.realm} would remove:")
            _print_counts(preview)
            return 0
        confirm(args, f"erasing {subject.username}@{subject.realm}",
                [f"{name:<22} {n}" for name, n in preview.items()])
        counts = gdpr.erase_subject(conn, subject)
    print(f"erased {subject.username}@{subject.realm}:")
    _print_counts(counts)
    print("the daemon's journal may still hold this person's last seconds of calls: run the erase again in a "
          "minute; it finds nothing when all is gone")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser("gdpr", help="GDPR: export or erase one person's data")
    g_sub = g.add_subparsers(dest="gdpr_command", metavar="SUBCOMMAND", required=True)
    for name, func, text in (("export", _export, "JSON of everything held about USER@REALM, decrypted"),
                             ("erase", _erase, "erase USER@REALM's data everywhere (docs/AUDITORS.md)")):
        p = g_sub.add_parser(name, help=text)
        p.add_argument("user", metavar="USER", help="SIP user name (or a number that is not a user)")
        p.add_argument("--realm", required=True, metavar="R", help="SIP realm (domain)")
        add_keyring_option(p)
        if name == "export":
            p.add_argument("--out", metavar="FILE", help="write here (mode 0600, never overwritten) instead of stdout")
        else:
            p.add_argument("--dry-run", action="store_true", help="only count what would be erased; change nothing")
            add_yes_option(p)
        p.set_defaults(func=func)
