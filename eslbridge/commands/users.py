"""`eslbridge user ...` and `eslbridge role ...` (DESIGN section 3).

Passwords come from one line of stdin (``--password-stdin``) or an interactive prompt typed
twice; never from the command line, where ``ps`` and shell history would show them.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable

import psycopg

from eslbridge.accounts import roles, users
from eslbridge.commands import limits
from eslbridge.commands.common import add_yes_option, admin_connection, confirm
from eslbridge.errors import UsageError


def read_password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        password = password.removesuffix("\r")
    else:
        if not sys.stdin.isatty():
            raise UsageError("stdin is not a terminal: pass the password on stdin with --password-stdin")
        password = getpass.getpass("Password: ")
        if getpass.getpass("Password (again): ") != password:
            raise UsageError("the passwords do not match")
    if not password:
        raise UsageError("empty password")
    return users.check_password(password)


def _with_db(action: Callable[[psycopg.Connection, argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        with admin_connection(args) as conn:
            return action(conn, args)

    return run


def _show(user: users.User) -> None:
    for label, value in [
        ("user", user.address), ("id", user.id), ("enabled", "yes" if user.enabled else "no"),
        ("role", user.role or "-"), ("display name", user.display_name or "-"), ("email", user.email or "-"),
        ("created", user.created_at.isoformat(timespec="seconds")),
        ("updated", user.updated_at.isoformat(timespec="seconds")),
        ("last login", user.last_login.isoformat(timespec="seconds") if user.last_login else "never"),
    ]:
        print(f"{label + ':':14}{value}")


# --- user ------------------------------------------------------------------------------------


def _user_add(conn: psycopg.Connection, args: argparse.Namespace) -> int:
    users.check_username(args.user)
    users.check_realm(args.realm)
    password = read_password(args.password_stdin)
    user = users.add_user(conn, args.user, args.realm, password, role=args.role, email=args.email,
                          display_name=args.display_name)
    print(f"created {user.address} (role {user.role})")
    return 0


def _user_passwd(conn: psycopg.Connection, args: argparse.Namespace) -> int:
    users.get_user(conn, users.check_username(args.user), users.check_realm(args.realm))  # fail before prompting
    users.set_password(conn, args.user, args.realm, read_password(args.password_stdin))
    print(f"password changed for {args.user}@{args.realm.lower()}")
    return 0


def _user_enable(conn: psycopg.Connection, args: argparse.Namespace) -> int:
    users.set_enabled(conn, args.user, args.realm, args.enable)
    print(f"{'enabled' if args.enable else 'disabled'} {args.user}@{args.realm.lower()}")
    return 0


def _user_set(conn: psycopg.Connection, args: argparse.Namespace) -> int:
    user = users.set_user(conn, args.user, args.realm, role=args.role, email=args.email,
                          display_name=args.display_name)
    _show(user)
    return 0


def _user_delete(conn: psycopg.Connection, args: argparse.Namespace) -> int:
    user = users.get_user(conn, users.check_username(args.user), users.check_realm(args.realm))
    confirm(args, f"deleting {user.address}", [
        f"user {user.address} (role {user.role or '-'}): its password and SIP credentials; it can no longer "
        "register or call", "its calls and CDRs stay, no longer linked to a user (`gdpr erase` removes those)"])
    users.delete_user(conn, args.user, args.realm)
    print(f"deleted {args.user}@{args.realm.lower()}")
    return 0


def _user_show(conn: psycopg.Connection, args: argparse.Namespace) -> int:
    _show(users.get_user(conn, users.check_username(args.user), users.check_realm(args.realm)))
    return 0


def _user_list(conn: psycopg.Connection, args: argparse.Namespace) -> int:
    found = users.list_users(conn, users.check_realm(args.realm) if args.realm else None)
    for user in found:
        print(f"{user.address:40} {'enabled ' if user.enabled else 'disabled'} {user.role or '-'}")
    print(f"{len(found)} user{'s' if len(found) != 1 else ''}", file=sys.stderr)
    return 0


# --- role ------------------------------------------------------------------------------------


def _role_list(conn: psycopg.Connection, args: argparse.Namespace) -> int:
    for role in roles.list_roles(conn):
        flag = " (system)" if role.is_system else ""
        print(f"{role.name}{flag}: {', '.join(role.permissions) or '-'}")
    return 0


def _role_add(conn: psycopg.Connection, args: argparse.Namespace) -> int:
    role = roles.add_role(conn, args.name, args.permission or (), description=args.description)
    print(f"created role {role.name}: {', '.join(role.permissions) or '-'}")
    return 0


def _role_change(conn: psycopg.Connection, args: argparse.Namespace) -> int:
    change = roles.grant if args.grant else roles.revoke
    role = change(conn, args.name, args.permissions)
    print(f"role {role.name}: {', '.join(role.permissions) or '-'}")
    return 0


def _role_delete(conn: psycopg.Connection, args: argparse.Namespace) -> int:
    role = roles.deletable_role(conn, args.name)
    confirm(args, f"deleting role {role.name}", [
        f"role {role.name} ({', '.join(role.permissions) or 'no permissions'})",
        f"{roles.role_users(conn, role.name)} user(s) holding it are left without a role (no permissions)"])
    members = roles.delete_role(conn, role.name)
    print(f"deleted role {role.name}; {members} user(s) now have no role")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    user = sub.add_parser("user", help="SIP users (the directory FreeSWITCH authenticates against)")
    usub = user.add_subparsers(dest="user_command", metavar="SUBCOMMAND", required=True)

    def identity(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("user", metavar="USER", help="SIP user name")
        p.add_argument("--realm", required=True, help="SIP realm (domain)")
        return p

    add = identity(usub.add_parser("add", help="create a user (password from stdin or a prompt)"))
    add.add_argument("--password-stdin", action="store_true", help="read the password as one line from stdin")
    add.add_argument("--role", default="user", help="role name (default: user)")
    add.add_argument("--email", metavar="E", help="e-mail address")
    add.add_argument("--display-name", metavar="N", help="name shown as caller ID (effective_caller_id_name)")
    add.set_defaults(func=_with_db(_user_add))
    change = identity(usub.add_parser("set", help="change a user's role, e-mail or display name"))
    change.add_argument("--role", metavar="NAME", help="new role name")
    change.add_argument("--email", metavar="E", help='new e-mail address ("" clears it)')
    change.add_argument("--display-name", metavar="N", help='new display name ("" clears it)')
    change.set_defaults(func=_with_db(_user_set))
    passwd = identity(usub.add_parser("passwd", help="set a user's password"))
    passwd.add_argument("--password-stdin", action="store_true", help="read the password as one line from stdin")
    passwd.set_defaults(func=_with_db(_user_passwd))
    identity(usub.add_parser("enable", help="allow the user to register and call")).set_defaults(
        func=_with_db(_user_enable), enable=True)
    identity(usub.add_parser("disable", help="refuse the user's registrations and calls")).set_defaults(
        func=_with_db(_user_enable), enable=False)
    delete = identity(usub.add_parser("delete", help="delete a user (asks first, unless --yes)"))
    add_yes_option(delete)
    delete.set_defaults(func=_with_db(_user_delete))
    identity(usub.add_parser("show", help="show one user")).set_defaults(func=_with_db(_user_show))
    limits.register(usub, identity)
    lst = usub.add_parser("list", help="list users")
    lst.add_argument("--realm", help="only this realm")
    lst.set_defaults(func=_with_db(_user_list))

    role = sub.add_parser("role", help="roles and their permissions")
    rsub = role.add_subparsers(dest="role_command", metavar="SUBCOMMAND", required=True)
    rsub.add_parser("list", help="list roles and permissions").set_defaults(func=_with_db(_role_list))
    radd = rsub.add_parser("add", help="create a role")
    radd.add_argument("name", metavar="NAME", help="role name")
    radd.add_argument("--description", help="what the role is for")
    radd.add_argument("--permission", action="append", metavar="PERM", help="a permission (repeatable)")
    radd.set_defaults(func=_with_db(_role_add))
    for name, is_grant in (("grant", True), ("revoke", False)):
        p = rsub.add_parser(name, help=f"{name} permissions {'to' if is_grant else 'from'} a role")
        p.add_argument("name", metavar="ROLE", help="role name")
        p.add_argument("permissions", metavar="PERM", nargs="+", help="permissions (see `eslbridge role list`)")
        p.set_defaults(func=_with_db(_role_change), grant=is_grant)
    rdel = rsub.add_parser("delete", help="delete a role that is not a system role (asks first, unless --yes)")
    rdel.add_argument("name", metavar="NAME", help="role name")
    add_yes_option(rdel)
    rdel.set_defaults(func=_with_db(_role_delete))
