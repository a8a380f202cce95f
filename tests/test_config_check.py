"""`eslbridge check-config`: real PostgreSQL, a real TCP server speaking the ESL auth exchange."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from psycopg.conninfo import make_conninfo

from eslbridge.cli import main
from eslbridge.keys.keyring import generate_keyring


class FakeEventSocket:
    """Just enough of mod_event_socket: the auth/request banner, `auth`, `exit`."""

    def __init__(self, password: str, banner: bytes = b"Content-Type: auth/request\n\n") -> None:
        self.password = password
        self.banner = banner
        self.commands: list[str] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):  # the client went away: next connection
                conn.settimeout(10)
                self._session(conn)

    def _session(self, conn: socket.socket) -> None:
        conn.sendall(self.banner)
        buf = b""
        while data := conn.recv(4096):
            buf += data
            while b"\n\n" in buf:
                command, buf = buf.split(b"\n\n", 1)
                self.commands.append(command.decode().split(" ")[0])
                if command == f"auth {self.password}".encode():
                    conn.sendall(b"Content-Type: command/reply\nReply-Text: +OK accepted\n\n")
                elif command.startswith(b"auth "):
                    conn.sendall(b"Content-Type: command/reply\nReply-Text: -ERR invalid\n\n")
                    return
                elif command == b"exit":
                    conn.sendall(b"Content-Type: command/reply\nReply-Text: +OK bye\n\n")
                    return

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def esl_server() -> Iterator[FakeEventSocket]:
    server = FakeEventSocket("ClueCon")
    yield server
    server.close()


def write_config(tmp_path: Path, db_url: str, esl_port: int, esl_password: str = "ClueCon") -> Path:
    for name, value in (("esl_password", esl_password), ("directory_password", "dirpass")):
        (tmp_path / name).write_text(value + "\n")
        os.chmod(tmp_path / name, 0o600)
    generate_keyring(tmp_path / "keyring.yaml")
    path = tmp_path / "eslbridge.yaml"
    path.write_text(
        f"freeswitch:\n  - name: fs1\n    port: {esl_port}\n    password_file: esl_password\n"
        f"database:\n  url: '{db_url}'\n  connect_timeout: 5\n"
        "directory:\n  password_file: directory_password\n"
        "encryption:\n  keyring_file: keyring.yaml\n"
        f"journal:\n  dir: {tmp_path / 'journal'}\n"
    )
    return path


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ESLBRIDGE_DATABASE_URL", "CREDENTIALS_DIRECTORY", "ESLBRIDGE_ESL_PASSWORD_FS1",
                 "ESLBRIDGE_DIRECTORY_PASSWORD", "ESLBRIDGE_CONFIG"):
        monkeypatch.delenv(name, raising=False)


def test_good_config_passes_every_check(tmp_path, db_dsn, esl_server, clean_env, capsys) -> None:
    path = write_config(tmp_path, db_dsn, esl_server.port)
    assert main(["--config", str(path), "check-config"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"config {path}: ok"
    assert lines[1].startswith(f"keyring {tmp_path / 'keyring.yaml'}: ok (active key 1")
    assert lines[2] == f"journal {tmp_path / 'journal'}: ok (writable)"
    assert lines[3].startswith("database: ok (") and "migrations applied" in lines[3]
    assert lines[4] == f"esl fs1 (127.0.0.1:{esl_server.port}): ok (authenticated)"
    assert esl_server.commands == ["auth", "exit"]


def test_bad_config_exits_78_naming_the_key(tmp_path, clean_env, capsys) -> None:
    path = tmp_path / "eslbridge.yaml"
    path.write_text("freeswitch:\n  - name: fs1\n    port: abc\n")
    assert main(["--config", str(path), "check-config"]) == 78
    out = capsys.readouterr().out
    assert out == f"config: FAIL: {path}: freeswitch[0].port: expected an integer 1-65535, got 'abc'\n"


def test_wrong_esl_password_exits_78(tmp_path, db_dsn, esl_server, clean_env, capsys) -> None:
    path = write_config(tmp_path, db_dsn, esl_server.port, esl_password="wrong-one")
    assert main(["--config", str(path), "check-config"]) == 78
    out = capsys.readouterr().out
    assert f"esl fs1 (127.0.0.1:{esl_server.port}): FAIL: authentication rejected (-ERR invalid; " in out
    assert "wrong-one" not in out


def test_unreachable_esl_and_unmigrated_db_exit_1(tmp_path, empty_db_dsn, clean_env, capsys) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    path = write_config(tmp_path, empty_db_dsn, port)
    assert main(["--config", str(path), "check-config"]) == 1
    out = capsys.readouterr().out
    assert "database: FAIL: no migrations applied: run `eslbridge migrate`" in out
    assert f"esl fs1 (127.0.0.1:{port}): FAIL: Connection refused" in out


def test_not_an_event_socket(tmp_path, db_dsn, clean_env, capsys) -> None:
    server = FakeEventSocket("ClueCon", banner=b"Content-Type: text/rude-rejection\nContent-Length: 2\n\nno")
    try:
        path = write_config(tmp_path, db_dsn, server.port)
        assert main(["--config", str(path), "check-config"]) == 1
    finally:
        server.close()
    assert "FAIL: not an event socket: first frame is 'text/rude-rejection'" in capsys.readouterr().out


def test_unknown_database_role_exits_78(tmp_path, db_dsn, esl_server, clean_env, capsys) -> None:
    bad = make_conninfo(db_dsn, user="no_such_role")
    path = write_config(tmp_path, bad, esl_server.port)
    assert main(["--config", str(path), "check-config"]) == 78
    out = capsys.readouterr().out
    assert "database: FAIL: connection failed: " in out and 'role "no_such_role" does not exist' in out


def test_group_readable_keyring_exits_78(tmp_path, db_dsn, esl_server, clean_env, capsys) -> None:
    path = write_config(tmp_path, db_dsn, esl_server.port)
    os.chmod(tmp_path / "keyring.yaml", 0o640)
    assert main(["--config", str(path), "check-config"]) == 78
    assert f"keyring {tmp_path / 'keyring.yaml'}: FAIL: " in capsys.readouterr().out
