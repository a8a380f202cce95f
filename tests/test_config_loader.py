"""eslbridge.config: the sample config, validation errors, secrets and their precedence."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

from eslbridge.config import ListenAddress, Secret, load_config, parse_listen, resolve_database_url
from eslbridge.errors import ConfigError

SAMPLE = Path(__file__).resolve().parents[1] / "conf" / "eslbridge.yaml"

MINIMAL = """\
freeswitch:
  - name: fs1
    password_file: esl_password
directory:
  password_file: directory_password
"""


def secret_file(path: Path, content: str, mode: int = 0o600) -> Path:
    path.write_text(content)
    os.chmod(path, mode)
    return path


@pytest.fixture
def conf(tmp_path: Path):
    """Write a config (with its two secret files beside it) and return a loader for it."""
    secret_file(tmp_path / "esl_password", "ClueCon\n")
    secret_file(tmp_path / "directory_password", "dirpass\n")

    def write(text: str = MINIMAL) -> Path:
        path = tmp_path / "eslbridge.yaml"
        path.write_text(text)
        return path

    return write


def error_of(path: Path, env: dict | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(str(path), env=env or {})
    return str(info.value)


def test_sample_config_loads_with_its_documented_values(tmp_path: Path) -> None:
    secret_file(tmp_path / "esl", "ClueCon")
    secret_file(tmp_path / "dir", "dirpass")
    text = SAMPLE.read_text().replace("/etc/eslbridge/esl_password", "esl").replace(
        "/etc/eslbridge/directory_password", "dir"
    )
    path = tmp_path / "eslbridge.yaml"
    path.write_text(text)
    cfg = load_config(str(path), env={})
    (node,) = cfg.freeswitch
    assert (node.name, node.host, node.port, node.event_format) == ("fs1", "127.0.0.1", 8021, "json")
    assert node.password.reveal() == "ClueCon"
    assert cfg.outbound.listen == ListenAddress("127.0.0.1", 8084)
    db = cfg.database
    assert db.url.reveal() == "postgresql://eslbridge@localhost/eslbridge"
    assert (db.min_connections, db.max_connections, db.connect_timeout) == (2, 10, 30.0)
    assert (db.idle_timeout, db.max_lifetime, db.replica_url) == (600.0, 1800.0, None)
    assert db.replica_max_lag == 5.0
    d = cfg.directory
    assert d.listen == ("127.0.0.1", 8080) and d.path == "/directory" and d.username == "freeswitch"
    assert d.allow == (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("::1/128"))
    assert d.password.reveal() == "dirpass" and d.cache_seconds == 300
    assert cfg.encryption.keyring_file == Path("/etc/eslbridge/keyring.yaml")
    assert cfg.journal.dir == Path("/var/lib/eslbridge/journal") and cfg.journal.max_bytes == 1073741824
    assert cfg.metrics.listen == ("127.0.0.1", 9464)
    r = cfg.retention
    assert (r.call_events_days, r.audit_logs_days, r.call_records_days, r.calls_days) == (90, 365, 365, 365)
    assert (cfg.logging.level, cfg.logging.format) == ("info", "text")


def test_defaults_and_relative_paths(conf, tmp_path: Path) -> None:
    cfg = load_config(str(conf(MINIMAL + "journal:\n  dir: spool\nencryption:\n  keyring_file: k/ring.yaml\n")), env={})
    assert cfg.journal.dir == tmp_path / "spool"
    assert cfg.encryption.keyring_file == tmp_path / "k" / "ring.yaml"
    assert cfg.outbound.listen is None  # omitted: disabled
    assert cfg.freeswitch[0].port == 8021
    assert cfg.freeswitch[0].password.source == f"file {tmp_path / 'esl_password'}"


def test_config_path_from_environment(conf) -> None:
    path = conf()
    cfg = load_config(None, env={"ESLBRIDGE_CONFIG": str(path)})
    assert cfg.path == path


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("bogus: 1\n", "eslbridge.yaml: bogus: unknown key"),
        ("databse: {}\n", "databse: unknown key (did you mean 'database'?)"),
        ("database:\n  max_conections: 5\n", "database.max_conections: unknown key (did you mean 'max_connections'?)"),
        ("metrics:\n  listen: 127.0.0.1:9464\n  extra: 1\n", "metrics.extra: unknown key"),
    ],
)
def test_unknown_keys_are_rejected_with_their_dotted_path(conf, extra: str, message: str) -> None:
    assert message in error_of(conf(MINIMAL + extra))


def test_unknown_key_inside_a_node(conf) -> None:
    path = conf(MINIMAL.replace("    password_file", "    pasword: x\n    password_file"))
    assert error_of(path) == f"{path}: freeswitch[0].pasword: unknown key (did you mean 'password_file'?)"


@pytest.mark.parametrize(
    ("replace", "message"),
    [
        (("name: fs1", "name: fs1\n    port: abc"), "freeswitch[0].port: expected an integer 1-65535, got 'abc'"),
        (("name: fs1", "name: fs1\n    port: 70000"), "freeswitch[0].port: expected an integer 1-65535, got 70000"),
        (("name: fs1", "name: fs1\n    port: true"), "freeswitch[0].port: expected an integer 1-65535, got True"),
        (("name: fs1", "name: fs1\n    event_format: xml"), "freeswitch[0].event_format: expected one of json, plain"),
        (("name: fs1", "name: 'fs 1'"), "freeswitch[0].name: expected 1-63 characters"),
        (("freeswitch:\n  - name", "freeswitch: []\nx:\n  - name"), "freeswitch: expected a non-empty list"),
    ],
)
def test_wrong_types_and_ranges(conf, replace: tuple[str, str], message: str) -> None:
    assert message in error_of(conf(MINIMAL.replace(*replace)))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("logging:\n  level: verbose\n", "logging.level: expected one of debug, info, warning, error, critical"),
        ("logging:\n  format: xml\n", "logging.format: expected one of text, json, got 'xml'"),
        ("database:\n  min_connections: 5\n  max_connections: 2\n", "database.max_connections: must be >= "),
        ("database:\n  connect_timeout: -1\n", "database.connect_timeout: expected a number > 0"),
        ("database:\n  url: 'not a url'\n", "database.url: not a valid PostgreSQL connection"),
        ("outbound:\n  listen: 8084\n", "outbound.listen: expected host:port or [ipv6]:port, got 8084"),
        ("outbound:\n  listen: '::1:8084'\n", "outbound.listen: expected host:port or [ipv6]:port, got '::1:8084'"),
        ("metrics:\n  listen: '[zz]:1'\n", "metrics.listen:"),
        ("retention:\n  calls_days: 0\n", "retention.calls_days: expected an integer 1-36500, got 0"),
        ("journal: [1]\n", "journal: expected a mapping, got a list"),
        ("directory:\n  path: x\n  password_file: directory_password\n", "directory.path: expected an absolute"),
    ],
)
def test_section_values_are_validated(conf, extra: str, message: str) -> None:
    text = MINIMAL.split("directory:")[0] if extra.startswith("directory:") else MINIMAL
    assert message in error_of(conf(text + extra))


def test_missing_required_keys(conf) -> None:
    assert "freeswitch: missing required key" in error_of(conf("logging: {}\n"))
    assert "freeswitch[0].name: missing required key" in error_of(conf(MINIMAL.replace("- name: fs1\n   ", "-")))


@pytest.mark.parametrize(
    ("allow", "message"),
    [
        ("[10.0.0.1/8]", "directory.allow[0]: not a network in CIDR notation (10.0.0.1/8 has host bits set)"),
        ("['127.0.0.1/32', 'nonsense']", "directory.allow[1]: not a network in CIDR notation"),
        ("[]", "directory.allow: expected a non-empty list"),
    ],
)
def test_bad_cidr(conf, allow: str, message: str) -> None:
    assert message in error_of(conf(MINIMAL + f"  allow: {allow}\n"))


def test_good_cidrs_and_ipv6_listen(conf) -> None:
    cfg = load_config(str(conf(MINIMAL + "  allow: [10.0.0.0/8, 'fd00::/8', 192.0.2.7]\n  listen: '[::1]:8080'\n")),
                      env={})
    assert cfg.directory.allow[2] == ipaddress.ip_network("192.0.2.7/32")
    assert cfg.directory.listen == ("::1", 8080) and str(cfg.directory.listen) == "[::1]:8080"


def test_parse_listen() -> None:
    assert parse_listen("localhost:0") == ("localhost", 0)
    assert parse_listen("[fe80::1%eth0]:80") == ("fe80::1%eth0", 80)
    for bad in ("nohost", ":80", "1.2.3.4:99999", "[1.2.3.4]:80", "a b:1"):
        with pytest.raises(ValueError):
            parse_listen(bad)


def test_duplicate_node_names(conf) -> None:
    text = "freeswitch:\n  - {name: fs1, password_file: esl_password}\n  - {name: fs1, password_file: esl_password}\n"
    path = conf(text + "directory:\n  password_file: directory_password\n")
    assert error_of(path) == f"{path}: freeswitch[1].name: duplicate node name 'fs1'"


def test_node_names_colliding_in_the_environment(conf) -> None:
    text = "freeswitch:\n  - {name: fs-1, password_file: esl_password}\n  - {name: fs_1, password_file: esl_password}\n"
    assert "map to the same ESLBRIDGE_ESL_PASSWORD_FS_1" in error_of(conf(text + "directory: {password_file: x}\n"))


def test_duplicate_yaml_keys(conf) -> None:
    path = conf(MINIMAL + "logging: {}\nlogging: {}\n")
    assert error_of(path) == f"{path}: line 7, column 1: invalid YAML: duplicate key 'logging'"


def test_yaml_syntax_error_names_file_and_line(conf) -> None:
    path = conf(MINIMAL + "database:\n  url: [unclosed\n")
    message = error_of(path)
    assert message.startswith(f"{path}: line ") and "invalid YAML" in message
    assert int(message.split("line ")[1].split(",")[0]) >= 7


def test_unreadable_and_empty_config(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert error_of(missing).startswith(f"{missing}: cannot read config")
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    assert error_of(empty) == f"{empty}: the config is empty"


# --- secrets -----------------------------------------------------------------------------------


def test_secret_precedence_env_then_credentials_then_file(conf, tmp_path: Path) -> None:
    path = conf()
    creds = tmp_path / "creds"
    creds.mkdir()
    secret_file(creds / "esl_password", "shared-cred")
    cfg = load_config(str(path), env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert cfg.freeswitch[0].password.reveal() == "shared-cred"
    assert cfg.directory.password.reveal() == "dirpass"  # no credential for it: the file
    secret_file(creds / "esl_password.fs1", "node-cred")
    secret_file(creds / "directory_password", "dir-cred")
    cfg = load_config(str(path), env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert cfg.freeswitch[0].password.reveal() == "node-cred"
    assert cfg.freeswitch[0].password.source == "credential esl_password.fs1"
    assert cfg.directory.password.reveal() == "dir-cred"
    env = {
        "CREDENTIALS_DIRECTORY": str(creds),
        "ESLBRIDGE_ESL_PASSWORD_FS1": "from-env",
        "ESLBRIDGE_DIRECTORY_PASSWORD": "dir-env",
    }
    cfg = load_config(str(path), env=env)
    assert cfg.freeswitch[0].password.reveal() == "from-env"
    assert cfg.freeswitch[0].password.source == "environment ESLBRIDGE_ESL_PASSWORD_FS1"
    assert cfg.directory.password.reveal() == "dir-env"


def test_secret_from_environment_needs_no_file_key(conf) -> None:
    path = conf("freeswitch:\n  - name: fs-east\n")
    env = {"ESLBRIDGE_ESL_PASSWORD_FS_EAST": "e", "ESLBRIDGE_DIRECTORY_PASSWORD": "d"}
    assert load_config(str(path), env=env).freeswitch[0].password.reveal() == "e"


def test_secret_nowhere_names_every_source(conf) -> None:
    path = conf("freeswitch:\n  - name: fs1\n")
    message = error_of(path)
    assert message == (
        f"{path}: freeswitch[0].password_file: missing: set it, or provide $ESLBRIDGE_ESL_PASSWORD_FS1 "
        "or credential esl_password.fs1 or credential esl_password"
    )


def test_group_readable_secret_file_is_refused(conf, tmp_path: Path) -> None:
    secret_file(tmp_path / "esl_password", "ClueCon", mode=0o644)
    path = conf()
    message = error_of(path)
    assert message == (
        f"{path}: freeswitch[0].password_file: secret file {tmp_path / 'esl_password'} grants access to group "
        "or others (mode 0644); chmod 600 it"
    )
    assert "ClueCon" not in message


def test_missing_secret_file_names_key_and_path(conf, tmp_path: Path) -> None:
    path = conf(MINIMAL.replace("password_file: esl_password", "password_file: /nonexistent/esl"))
    assert error_of(path) == (
        f"{path}: freeswitch[0].password_file: cannot read secret file /nonexistent/esl: No such file or directory"
    )


def test_empty_and_multiline_secrets_are_refused(conf, tmp_path: Path) -> None:
    path = conf()
    secret_file(tmp_path / "directory_password", "\n")
    assert "directory.password_file: secret file" in error_of(path) and "is empty" in error_of(path)
    secret_file(tmp_path / "directory_password", "one\ntwo\n")
    message = error_of(path)
    assert "directory.password_file: the secret from file" in message and "must be a single line" in message
    assert "one" not in message.replace("done", "")


def test_database_url_override_and_password_merge(conf, tmp_path: Path) -> None:
    path = conf(MINIMAL + "database:\n  url: postgresql://app@db.example/calls\n  password_file: dbpw\n"
                "  replica_url: postgresql://app@replica.example/calls\n")
    secret_file(tmp_path / "dbpw", "s3cret")
    cfg = load_config(str(path), env={})
    assert "password=s3cret" in cfg.database.url.reveal() and "host=db.example" in cfg.database.url.reveal()
    assert "password=s3cret" in cfg.database.replica_url.reveal()
    path.write_text(path.read_text() + "  replica_max_lag: 0.5\n")
    assert load_config(str(path), env={}).database.replica_max_lag == 0.5
    path.write_text(path.read_text().replace("replica_max_lag: 0.5", "replica_max_lag: 0"))
    assert "database.replica_max_lag" in error_of(path)
    path.write_text(path.read_text().replace("  replica_max_lag: 0\n", ""))
    env = {"ESLBRIDGE_DATABASE_URL": "postgresql://other@elsewhere/x"}
    cfg = load_config(str(path), env=env)
    assert cfg.database.url.reveal() == "postgresql://other@elsewhere/x"
    assert cfg.database.url.source == "environment ESLBRIDGE_DATABASE_URL"
    creds = tmp_path / "creds"
    creds.mkdir()
    secret_file(creds / "database_url", "postgresql://cred@credhost/x\n")
    cfg = load_config(str(path), env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert "host=credhost" in cfg.database.url.reveal() and "password=s3cret" in cfg.database.url.reveal()


def test_resolve_database_url(conf, tmp_path: Path) -> None:
    assert resolve_database_url(None, env={"ESLBRIDGE_DATABASE_URL": "postgresql://e/x"}) == "postgresql://e/x"
    # Only the database section matters: no ESL secret needed for admin commands.
    path = conf("freeswitch:\n  - name: fs1\ndatabase:\n  url: postgresql://a@b/c\n")
    assert resolve_database_url(str(path), env={}) == "postgresql://a@b/c"
    assert resolve_database_url(None, env={"ESLBRIDGE_CONFIG": str(path)}) == "postgresql://a@b/c"
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError, match="ESLBRIDGE_DATABASE_URL is not set") as info:
        resolve_database_url(str(missing), env={})
    assert str(missing) in str(info.value)
    bad = conf("database:\n  ur1: x\n")
    with pytest.raises(ConfigError, match=r"database\.ur1: unknown key \(did you mean 'url'\?\)"):
        resolve_database_url(str(bad), env={})


def test_secret_never_shows_its_value(conf) -> None:
    cfg = load_config(str(conf()), env={})
    secret = cfg.freeswitch[0].password
    for text in (repr(secret), str(secret), f"{secret}", repr(cfg), str(cfg)):
        assert "ClueCon" not in text and "dirpass" not in text
    assert secret == Secret("ClueCon", "elsewhere") and secret != Secret("other", "x")
    with pytest.raises(TypeError):
        __import__("pickle").dumps(secret)


def test_config_is_frozen(conf) -> None:
    cfg = load_config(str(conf()), env={})
    with pytest.raises(AttributeError):
        cfg.logging.level = "debug"  # type: ignore[misc]


def test_listener_gates_default_to_loopback_and_the_documented_bounds(conf) -> None:
    cfg = load_config(str(conf()), env={})
    loopback = (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("::1/128"))
    assert cfg.outbound.allow == loopback and cfg.metrics.allow == loopback
    assert cfg.directory.connections.max_connections == 512 and cfg.directory.connections.head_timeout == 2.0
    assert cfg.metrics.connections.max_connections == 64 and cfg.outbound.connections.max_per_address == 256


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("outbound:\n  allow: []\n", "outbound.allow: expected a non-empty list of networks"),
        ("metrics:\n  allow: [300.0.0.0/8]\n", "metrics.allow[0]: not a network"),
        ("directory2: 1\n", "directory2: unknown key"),
        ("outbound:\n  connections: {max: 10, per_address: 20}\n",
         "outbound.connections.per_address: must be <= outbound.connections.max (10), got 20"),
        ("metrics:\n  connections: {head_timeout: 0}\n", "metrics.connections.head_timeout: expected a number > 0"),
        ("outbound:\n  connections: {maximum: 5}\n", "outbound.connections.maximum: unknown key"),
    ],
)
def test_listener_gate_keys_are_validated(conf, extra: str, message: str) -> None:
    text = MINIMAL.replace("directory:\n  password_file: directory_password\n",
                           "directory:\n  password_file: directory_password\n  connections: {max: 100}\n")
    assert message in error_of(conf(text + extra))
