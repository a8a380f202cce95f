"""``eslbridge keys generate|rotate|status|retire|blind-index``: the encryption keyring (DESIGN sections 3 and 8).

Also home of the two things every admin command of this family needs: the keyring path
(``--keyring`` or ``encryption.keyring_file``) and an autocommit connection to the database
(``ESLBRIDGE_DATABASE_URL`` or ``database.url``).
"""

from __future__ import annotations

import argparse
import sys

from eslbridge.accounts.audit import audit
from eslbridge.commands.common import add_keyring_option, admin_connection, keyring_path
from eslbridge.errors import EslBridgeError, UsageError
from eslbridge.keys.keyring import Keyring, generate_keyring
from eslbridge.ops.progress import Progress
from eslbridge.privacy import rotation


def _generate(args: argparse.Namespace) -> int:
    path = keyring_path(args)
    generate_keyring(path)
    print(f"created keyring {path} (key 1 active, blind-index key); keep a copy of its directory offline")
    try:
        with admin_connection(args) as conn:
            audit(conn, "keys.generate", "keyring", str(path))
    except EslBridgeError as exc:
        # A keyring is made before the database exists (install order); the file is the record then.
        print(f"warning: not recorded in audit_logs ({exc})", file=sys.stderr)
    return 0


def _print_usage(usage: dict[str, dict[int, int]], keyring: Keyring) -> None:
    for table, counts in usage.items():
        shown = ", ".join(f"key {k}: {n}" for k, n in counts.items()) or "no rows"
        print(f"{table:<13} {shown}")
    stale = {k for counts in usage.values() for k in counts if k != keyring.active_id}
    if stale:
        print(f"rows under key(s) {sorted(stale)} remain: run eslbridge keys rotate --resume "
              "(after systemctl reload eslbridge, if the daemon still writes with an old key)")


def _rotate(args: argparse.Namespace) -> int:
    path = keyring_path(args)
    with admin_connection(args) as conn:
        if not args.resume:
            previous, new_id = rotation.new_active_key(path)
            audit(conn, "keys.rotate", "keyring", str(path), {"previous_active": previous, "active": new_id})
            print(f"key {new_id} is now active (was {previous}); run systemctl reload eslbridge so the daemon "
                  "writes with it")
        keyring = Keyring.load(path)
        print(f"re-encrypting rows under other keys with key {keyring.active_id}, {args.batch_size} rows per batch",
              flush=True)
        stale = sum(n for counts in rotation.key_usage(conn).values() for k, n in counts.items()
                    if k != keyring.active_id)
        bar = Progress("re-encrypted rows", stale, stream=sys.stdout)
        done = rotation.reencrypt(conn, keyring, args.batch_size,
                                  lambda table, batch, _: bar.advance(batch, note=f"[{table}]"))
        bar.finish()
        usage = rotation.key_usage(conn)
        audit(conn, "keys.reencrypt", "keyring", str(path),
              {"active": keyring.active_id, "reencrypted": done, "rows_per_key": usage})
        print("done: " + ", ".join(f"{n} rows in {t}" for t, n in done.items()))
        _print_usage(usage, keyring)
    return 0


def _status(args: argparse.Namespace) -> int:
    path = keyring_path(args)
    keyring = Keyring.load(path)
    with admin_connection(args) as conn:
        usage = rotation.key_usage(conn)
        audit(conn, "keys.status", "keyring", str(path), {"rows_per_key": usage})
    print(f"keyring {path}: keys {', '.join(map(str, keyring.key_ids))}; active {keyring.active_id}")
    _print_usage(usage, keyring)
    unknown = {k for counts in usage.values() for k in counts} - set(keyring.key_ids)
    if unknown:
        print(f"error: rows use key(s) {sorted(unknown)} that the keyring does not hold", file=sys.stderr)
        return 1
    return 0


def _retire(args: argparse.Namespace) -> int:
    path = keyring_path(args)
    with admin_connection(args) as conn, conn.transaction():
        key_file = rotation.retire_key(conn, path, args.key_id)
        audit(conn, "keys.retire", "keyring", str(path), {"key_id": args.key_id})
    print(f"key {args.key_id} removed from {path}; its file {key_file} is left in place: archive it offline if "
          "backups from before the rotation must stay readable, then delete it")
    return 0


def _blind_index(args: argparse.Namespace) -> int:
    # The value comes from stdin: a phone number on the command line would land in shell history.
    value = sys.stdin.readline().strip()
    try:
        digest = Keyring.load(keyring_path(args)).blind_index(args.kind, value)
    except ValueError as e:
        raise UsageError(f"cannot index {args.kind} value: {e}") from None
    with admin_connection(args) as conn:
        audit(conn, "keys.blind_index", "keyring", None, {"kind": args.kind})
    print(digest.hex())
    return 0


def _batch_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= value <= 100_000:
        raise argparse.ArgumentTypeError("must be between 1 and 100000")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    keys = sub.add_parser("keys", help="encryption keyring: generate, rotate, status, retire, blind-index")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="SUBCOMMAND", required=True)

    p = keys_sub.add_parser("generate", help="create the keyring (refuses to overwrite one)")
    add_keyring_option(p)
    p.set_defaults(func=_generate)

    p = keys_sub.add_parser("rotate", help="make a new active key and re-encrypt every row with it")
    add_keyring_option(p)
    p.add_argument("--resume", action="store_true",
                   help="no new key: finish re-encrypting rows under old keys (after a crash or a reload)")
    p.add_argument("--batch-size", type=_batch_size, default=rotation.DEFAULT_BATCH, metavar="N",
                   help=f"rows per transaction (default {rotation.DEFAULT_BATCH})")
    p.set_defaults(func=_rotate)

    p = keys_sub.add_parser("status", help="keys in the keyring and rows per key id")
    add_keyring_option(p)
    p.set_defaults(func=_status)

    p = keys_sub.add_parser("retire", help="remove an old key from the keyring once no row uses it")
    add_keyring_option(p)
    p.add_argument("key_id", type=int, metavar="ID", help="the key id to remove (see `eslbridge keys status`)")
    p.set_defaults(func=_retire)

    p = keys_sub.add_parser("blind-index", help="the *_hash of a value read from stdin, for searching (AUDITORS.md)")
    add_keyring_option(p)
    p.add_argument("kind", choices=("number", "uri", "ip", "call_id"),
                   help="how the value is normalised before hashing")
    p.set_defaults(func=_blind_index)
