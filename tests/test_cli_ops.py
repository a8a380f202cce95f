"""The command line as an operator meets it (DESIGN section 3): `--config` anywhere, `user set`,
`role delete`, confirmations, `gdpr erase --dry-run`, exit codes, one-line errors, no tracebacks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from eslbridge.accounts import roles, users
from eslbridge.cli import build_parser, main
from eslbridge.errors import EXIT_CONFIG, EXIT_FAILURE, EXIT_USAGE
from eslbridge.sim.localpg import free_port
from tests.test_config_check import FakeEventSocket, write_config
from tests.user_rows import user_id

ROOT = Path(__file__).resolve().parents[1]


def process(*argv: str, env: dict[str, str] | None = None, stdin: str = "", timeout: float = 60
            ) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("ESLBRIDGE_", "CREDENTIALS_DIRECTORY"))}
    full.update(env or {}, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "eslbridge", *argv], input=stdin, text=True, capture_output=True,
                          env=full, cwd=ROOT, timeout=timeout)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("eslbridge ")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_every_command_and_option_has_a_description_and_help() -> None:
    import argparse

    from eslbridge.cli import _commands

    parser = build_parser()
    commands = list(_commands(parser))
    assert len(commands) > 25
    for command in commands:
        assert command.description, command.prog
        for action in command._actions:
            assert action.help or isinstance(action, argparse._SubParsersAction), (command.prog, action.dest)


def test_config_is_accepted_after_the_command(tmp_path, db_dsn, monkeypatch, capsys) -> None:
    monkeypatch.delenv("ESLBRIDGE_DATABASE_URL", raising=False)
    server = FakeEventSocket("ClueCon")
    try:
        path = write_config(tmp_path, db_dsn, server.port)
        assert main(["check-config", "--config", str(path)]) == 0
        assert main(["user", "list", "--config", str(path)]) == 0
        assert main(["--config", str(path), "user", "list", "--realm", "x.org"]) == 0
    finally:
        server.close()
    assert f"config {path}: ok" in capsys.readouterr().out


def test_user_set_changes_role_email_and_display_name(cli, db) -> None:
    assert cli("user", "add", "ann", "--realm", "pbx.example", "--password-stdin", stdin="first-password\n")[0] == 0
    code, out, _ = cli("user", "set", "ann", "--realm", "pbx.example", "--role", "operator",
                       "--email", "ann@pbx.example", "--display-name", "Ann A")
    assert code == 0 and "operator" in out
    user = users.get_user(db, "ann", "pbx.example")
    assert (user.role, user.email, user.display_name) == ("operator", "ann@pbx.example", "Ann A")
    assert cli("user", "set", "ann", "--realm", "pbx.example", "--email", "")[0] == 0
    assert users.get_user(db, "ann", "pbx.example").email is None
    code, _, err = cli("user", "set", "ann", "--realm", "pbx.example")
    assert code == EXIT_USAGE and "nothing to change" in err
    code, _, err = cli("user", "set", "ann", "--realm", "pbx.example", "--role", "nope")
    assert code == EXIT_FAILURE and "unknown role 'nope'" in err
    code, _, err = cli("user", "set", "nobody", "--realm", "pbx.example", "--role", "user")
    assert code == EXIT_FAILURE and "no user nobody@pbx.example" in err
    details = db.execute("SELECT details->'changed' FROM audit_logs WHERE action = 'user.update' ORDER BY id"
                         ).fetchall()
    assert [d[0] for d in details] == [["display_name", "email", "role"], ["email"]]


def test_destructive_commands_ask_and_refuse_without_a_terminal(cli, db) -> None:
    assert cli("user", "add", "bob", "--realm", "x.org", "--password-stdin", stdin="bob-password\n")[0] == 0
    code, _, err = cli("user", "delete", "bob", "--realm", "x.org")
    assert code == EXIT_USAGE and "pass --yes" in err and "user bob@x.org" in err
    assert user_id(db, "bob", "x.org") is not None
    assert cli("role", "add", "night", "--permission", "call:create")[0] == 0
    assert cli("user", "set", "bob", "--realm", "x.org", "--role", "night")[0] == 0
    code, _, err = cli("role", "delete", "night")
    assert code == EXIT_USAGE and "1 user(s) holding it" in err
    code, out, _ = cli("role", "delete", "night", "--yes")
    assert code == 0 and "1 user(s) now have no role" in out
    assert users.get_user(db, "bob", "x.org").role is None
    code, _, err = cli("role", "delete", "administrator", "--yes")
    assert code == EXIT_FAILURE and "system role" in err
    assert cli("user", "delete", "bob", "--realm", "x.org", "--yes")[0] == 0
    assert user_id(db, "bob", "x.org") is None


def test_a_typed_answer_other_than_yes_cancels(db_dsn, db) -> None:
    """A terminal on stdin: `script` gives the command a pty and types the answer."""
    users.add_user(db, "carl", "x.org", "carl-password", rounds=4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESLBRIDGE_")}
    env.update(ESLBRIDGE_DATABASE_URL=db_dsn, PYTHONPATH=str(ROOT))
    command = f"{sys.executable} -m eslbridge user delete carl --realm x.org"
    proc = subprocess.run(["script", "-qec", command, "/dev/null"], input="n\n", text=True, capture_output=True,
                          env=env, cwd=ROOT, timeout=60)
    assert proc.returncode == EXIT_FAILURE, proc.stdout
    assert "Proceed? [y/N]" in proc.stdout and "cancelled: nothing was changed" in proc.stdout
    assert user_id(db, "carl", "x.org") is not None


def test_gdpr_erase_dry_run_only_counts(cli, db, tmp_path) -> None:
    keyring = tmp_path / "keys" / "keyring.yaml"
    assert cli("keys", "generate", "--keyring", str(keyring))[0] == 0
    users.add_user(db, "dora", "x.org", "dora-password", rounds=4)
    code, out, _ = cli("gdpr", "erase", "dora", "--realm", "x.org", "--keyring", str(keyring), "--dry-run")
    assert code == 0 and out.startswith("dry run: erasing dora@x.org would remove:")
    assert "users_deleted" in out and " 1" in out.split("users_deleted")[1].splitlines()[0]
    assert user_id(db, "dora", "x.org") is not None
    assert db.execute("SELECT count(*) FROM audit_logs WHERE action = 'gdpr.erase'").fetchone()[0] == 0
    code, _, err = cli("gdpr", "erase", "dora", "--realm", "x.org", "--keyring", str(keyring))
    assert code == EXIT_USAGE and "pass --yes" in err
    assert cli("gdpr", "erase", "dora", "--realm", "x.org", "--keyring", str(keyring), "--yes")[0] == 0
    assert user_id(db, "dora", "x.org") is None


@pytest.mark.parametrize("url", ["postgresql://localhost:abc/eslbridge", "postgresql://localhost:99999/eslbridge",
                                 "mysql://localhost/eslbridge"])
def test_a_bad_database_url_is_a_config_error_in_one_line(url) -> None:
    proc = process("user", "list", env={"ESLBRIDGE_DATABASE_URL": url})
    assert proc.returncode == EXIT_CONFIG
    assert "ESLBRIDGE_DATABASE_URL" in one_line_error(proc)


def test_database_errors_are_one_line_with_what_to_do(db_dsn, pg_server, logins) -> None:
    refused = make_conninfo(db_dsn, user="no_such_login")
    proc = process("user", "list", env={"ESLBRIDGE_DATABASE_URL": refused})
    assert proc.returncode == EXIT_CONFIG and "refused the connection settings" in one_line_error(proc)
    down = f"postgresql://127.0.0.1:{free_port()}/eslbridge"
    proc = process("user", "list", env={"ESLBRIDGE_DATABASE_URL": down})
    assert proc.returncode == EXIT_FAILURE and "cannot reach the database" in one_line_error(proc)
    auditor = make_conninfo(db_dsn, user=logins.auditor)
    proc = process("user", "list", env={"ESLBRIDGE_DATABASE_URL": auditor})
    line = one_line_error(proc)
    assert proc.returncode == EXIT_FAILURE and "permission denied" in line and "db grant" in line
    empty = pg_server.create_database()
    try:
        proc = process("user", "list", env={"ESLBRIDGE_DATABASE_URL": pg_server.dsn(empty)})
        assert proc.returncode == EXIT_FAILURE and "eslbridge migrate" in one_line_error(proc)
    finally:
        pg_server.drop_database(empty)


def test_run_exits_78_when_the_database_refuses_the_credentials(tmp_path, db_dsn) -> None:
    path = write_config(tmp_path, make_conninfo(db_dsn, user="no_such_login"), free_port())
    proc = process("run", "--config", str(path), timeout=60)
    assert proc.returncode == EXIT_CONFIG
    assert "refused the connection settings" in one_line_error(proc) and "no_such_login" in proc.stderr


def test_an_unwritable_journal_dir_is_a_config_error(tmp_path, db_dsn) -> None:
    target = Path("/dev/null/journal")  # not even root can create it
    path = write_config(tmp_path, db_dsn, free_port())
    path.write_text(path.read_text().replace(str(tmp_path / "journal"), str(target)))
    proc = process("check-config", "--config", str(path))
    assert proc.returncode == EXIT_CONFIG
    assert f"journal {target}: FAIL" in proc.stdout and "Traceback" not in proc.stderr
    proc = process("run", "--config", str(path))
    assert proc.returncode == EXIT_CONFIG and "journal.dir" in one_line_error(proc)


def test_a_password_inline_in_database_url_is_warned_about(tmp_path, db_dsn) -> None:
    url = make_conninfo(db_dsn, password="inline-secret")
    server = FakeEventSocket("ClueCon")
    try:
        path = write_config(tmp_path, url, server.port)
        proc = process("check-config", "--config", str(path))
    finally:
        server.close()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "database.url holds a password inline" in proc.stderr
    assert "inline-secret" not in proc.stderr + proc.stdout


def test_no_traceback_for_a_missing_config_or_keyring(tmp_path) -> None:
    proc = process("keys", "status", "--config", str(tmp_path / "missing.yaml"))
    assert proc.returncode == EXIT_CONFIG and "missing.yaml" in one_line_error(proc)
    proc = process("user", "bogus")
    assert proc.returncode == EXIT_USAGE and "Traceback" not in proc.stderr


def test_roles_are_unchanged_by_a_refused_delete(db: psycopg.Connection, cli) -> None:
    before = [r.name for r in roles.list_roles(db)]
    assert cli("role", "delete", "user")[0] == EXIT_FAILURE  # system role: refused before any question
    assert [r.name for r in roles.list_roles(db)] == before
