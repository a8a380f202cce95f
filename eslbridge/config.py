"""Configuration: YAML file -> typed, validated, frozen dataclasses (DESIGN section 4).

Every error is a ``ConfigError`` naming the file and the dotted key, e.g.
``/etc/eslbridge/eslbridge.yaml: freeswitch[0].port: expected an integer 1-65535, got 'abc'``.
Unknown keys are errors. Relative paths resolve against the config file's directory.

Secrets never sit in the YAML. Each is taken from the first of: the environment, a systemd
credential (``$CREDENTIALS_DIRECTORY/<name>``, i.e. ``LoadCredential=``), the ``*_file`` key:

- ESL password of node N: ``$ESLBRIDGE_ESL_PASSWORD_<N>`` (N upper-cased, other characters -> ``_``);
  credential ``esl_password.<N>``, then ``esl_password`` (shared by all nodes); ``freeswitch[].password_file``.
- directory basic-auth password: ``$ESLBRIDGE_DIRECTORY_PASSWORD``; credential ``directory_password``;
  ``directory.password_file``.
- database URL: ``$ESLBRIDGE_DATABASE_URL`` (used as is); credential ``database_url``; ``database.url``.
- database password (optional): credential ``database_password``; ``database.password_file``; merged
  into the URL and ``database.replica_url`` (libpq's own ``PGPASSWORD``/``~/.pgpass`` also work).

Secret files (credential files too) granting any access to group or others are refused (the safe
choice, and the keyring's rule, DESIGN section 8): chmod 600. Secrets must be a single line.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from eslbridge.errors import ConfigError
from eslbridge.ops.netgate import LOOPBACK, ConnectionLimits, IPNetwork
from eslbridge.ops.settings import (
    Context,
    Field,
    Secret,
    Section,
    choice,
    file_path,
    integer,
    kind_of,
    nonempty_text,
    optional,
    parse_yaml,
    positive_number,
    read_secret,
)

DEFAULT_CONFIG_PATH = "/etc/eslbridge/eslbridge.yaml"
NODE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class ListenAddress(NamedTuple):
    """A (host, port) pair, directly usable as a gevent server address. IPv6 hosts carry no brackets."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class NodeConfig:
    name: str
    host: str
    port: int
    password: Secret
    event_format: str  # "json" | "plain"
    # Calls held in memory at most; past it the oldest are closed (reconciled). 100,000 is ten times
    # the concurrent calls of a big node (FreeSWITCH's max-sessions defaults to 1,000) and bounds the
    # correlator to ~325 MB (3.2 KB per two-leg call, tests/test_correlator_memory.py).
    max_live_calls: int = 100_000


@dataclass(frozen=True)
class OutboundConfig:
    listen: ListenAddress | None  # None: outbound socket disabled
    allow: tuple[IPNetwork, ...] = LOOPBACK  # FreeSWITCH peers allowed to hand calls over
    connections: ConnectionLimits = ConnectionLimits()


@dataclass(frozen=True)
class DatabaseConfig:
    url: Secret  # a libpq conninfo/URL, password merged in when it came from a credential or file
    min_connections: int
    max_connections: int
    connect_timeout: float
    idle_timeout: float
    max_lifetime: float
    replica_url: Secret | None
    replica_max_lag: float = 5.0  # seconds; a standby further behind leaves lookups to the primary


@dataclass(frozen=True)
class DirectoryConfig:
    listen: ListenAddress
    path: str
    allow: tuple[IPNetwork, ...]
    username: str
    password: Secret
    cache_seconds: int
    connections: ConnectionLimits = ConnectionLimits()


@dataclass(frozen=True)
class EncryptionConfig:
    keyring_file: Path


@dataclass(frozen=True)
class JournalConfig:
    dir: Path
    max_bytes: int


@dataclass(frozen=True)
class MetricsConfig:
    listen: ListenAddress | None  # None: no metrics/health endpoint
    allow: tuple[IPNetwork, ...] = LOOPBACK  # scrapers allowed
    connections: ConnectionLimits = ConnectionLimits(max_connections=64, max_per_address=32)


@dataclass(frozen=True)
class RetentionConfig:
    call_events_days: int
    audit_logs_days: int
    call_records_days: int
    calls_days: int


@dataclass(frozen=True)
class LoggingConfig:
    level: str  # one of LOG_LEVELS
    format: str  # "text" | "json"


@dataclass(frozen=True)
class Config:
    path: Path
    freeswitch: tuple[NodeConfig, ...]
    outbound: OutboundConfig
    database: DatabaseConfig
    directory: DirectoryConfig
    encryption: EncryptionConfig
    journal: JournalConfig
    metrics: MetricsConfig
    retention: RetentionConfig
    logging: LoggingConfig


def configfile_path(path: str | None = None, env: Mapping[str, str] | None = None) -> Path:
    """The config file to use: the argument, else ``$ESLBRIDGE_CONFIG``, else the default."""
    env = os.environ if env is None else env
    return Path(path or env.get("ESLBRIDGE_CONFIG") or DEFAULT_CONFIG_PATH)


def load_config(path: str | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read, validate and resolve the whole config, secrets included."""
    env = os.environ if env is None else env
    file = configfile_path(path, env)
    root = Section(Context(file, env), "", _read_yaml(file))
    nodes = root.take("freeswitch", _nodes)
    config = Config(
        path=file,
        freeswitch=nodes,
        outbound=root.section("outbound", _outbound),
        database=root.section("database", _database),
        directory=root.section("directory", _directory),
        encryption=root.section("encryption", _encryption),
        journal=root.section("journal", _journal),
        metrics=root.section("metrics", _metrics),
        retention=root.section("retention", _retention),
        logging=root.section("logging", _logging),
    )
    root.finish()
    return config


def load_section(name: str, path: str | None = None, env: Mapping[str, str] | None = None) -> Any:
    """One section of the config file, validated alone (e.g. ``encryption``, ``retention``).

    Admin commands use it so they need neither the ESL nor the directory secrets, which on a
    systemd host exist only as the service's credentials. ``check-config`` validates the whole file.
    """
    env = os.environ if env is None else env
    file = configfile_path(path, env)
    root = Section(Context(file, env), "", _read_yaml(file))
    return root.section(name, _SECTIONS[name])


def resolve_database_url(config_path_: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """The database URL for admin commands: ``ESLBRIDGE_DATABASE_URL`` wins (the file is then not
    read); else the ``database_url`` credential or ``database.url``, with the password merged in."""
    env = os.environ if env is None else env
    if env.get("ESLBRIDGE_DATABASE_URL"):
        problem = conninfo_problem(env["ESLBRIDGE_DATABASE_URL"])
        if problem:
            raise ConfigError(f"$ESLBRIDGE_DATABASE_URL: {problem}")
        return env["ESLBRIDGE_DATABASE_URL"]
    try:
        return load_section("database", config_path_, env).url.reveal()
    except ConfigError as exc:
        raise ConfigError(f"{exc} (and ESLBRIDGE_DATABASE_URL is not set)") from None


# --- reading ---------------------------------------------------------------------------------


def _read_yaml(file: Path) -> dict:
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read config: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: not valid UTF-8") from None
    return parse_yaml(file, text, "config")


def parse_listen(text: str) -> ListenAddress:
    """``host:port`` or ``[ipv6]:port`` -> ListenAddress; port 0 means any free port. ValueError if bad."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.%a-zA-Z]+)\]:(\d{1,5})|([^:\[\]\s]+):(\d{1,5})", text)
    if not match:
        raise ValueError("expected host:port or [ipv6]:port")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if port > 65535:
        raise ValueError("port must be 0-65535")
    if match.group(1):
        ipaddress.IPv6Address(host.split("%", 1)[0])  # brackets are only for IPv6 literals
    return ListenAddress(host, port)


def _listen(f: Field, v: Any) -> ListenAddress:
    if not isinstance(v, str):
        raise f.error(f"expected host:port or [ipv6]:port, got {kind_of(v)}")
    try:
        return parse_listen(v)
    except ValueError as exc:
        raise f.error(f"{exc}, got {v!r}") from None


def _networks(f: Field, v: Any) -> tuple[IPNetwork, ...]:
    if not isinstance(v, list) or not v:
        raise f.error(f"expected a non-empty list of networks (CIDR), got {kind_of(v)}")
    networks = []
    for i, item in enumerate(v):
        try:
            networks.append(ipaddress.ip_network(str(item), strict=True))
        except ValueError as exc:
            raise f.section.error(f"{f.name}[{i}]", f"not a network in CIDR notation ({exc}), got {item!r}") from None
    return tuple(networks)


def conninfo_problem(text: str) -> str | None:
    """Why ``text`` is no usable PostgreSQL URL or conninfo string (None: it is). Never quotes it:
    it may hold a password."""
    try:
        parts = conninfo_to_dict(text)
    except psycopg.ProgrammingError:
        return "not a valid PostgreSQL connection URL or conninfo string"
    for port in str(parts.get("port") or "5432").split(","):
        if not (port.isdigit() and 1 <= int(port) <= 65535):
            return "the port must be a number between 1 and 65535"
    return None


def _url(f: Field, v: Any) -> str:
    text = nonempty_text(f, v)
    problem = conninfo_problem(text)
    if problem:
        raise f.error(problem)
    return text


# --- secrets ----------------------------------------------------------------------------------


def _secret_file(path: Path, key: str, ctx: Context, source: str) -> Secret:
    """A config secret: the private-file checks, then UTF-8 and one line (only the final line break is
    cut: a password may begin or end with a space)."""
    try:
        data = read_secret(path, trim=lambda b: b.rstrip(b"\r\n"))
    except ConfigError as exc:
        raise ctx.error(key, str(exc)) from None
    try:
        return Secret(data.decode("utf-8"), source)
    except UnicodeDecodeError:
        raise ctx.error(key, f"secret file {path} is not valid UTF-8") from None


def _find_secret(
    section: Section, file_key: str, env_names: tuple[str, ...], credentials: tuple[str, ...], required: bool = True
) -> Secret | None:
    """Environment, then systemd credentials, then the ``*_file`` key (see the module docstring)."""
    ctx = section.ctx
    key = section.key(file_key)
    file = section.take(file_key, optional(file_path), None)  # always taken: validated even when unused
    secret = _lookup_secret(ctx, key, file, env_names, credentials)
    if secret is None:
        if not required:
            return None
        others = [f"${n}" for n in env_names] + [f"credential {c}" for c in credentials]
        raise ctx.error(key, f"missing: set it, or provide {' or '.join(others)}")
    if "\n" in secret.reveal() or "\r" in secret.reveal():
        # It is sent in line-based protocols (ESL `auth`): a line break would inject commands.
        raise ctx.error(key, f"the secret from {secret.source} must be a single line")
    return secret


def _lookup_secret(
    ctx: Context, key: str, file: Path | None, env_names: tuple[str, ...], credentials: tuple[str, ...]
) -> Secret | None:
    for name in env_names:
        if ctx.env.get(name):
            return Secret(ctx.env[name], f"environment {name}")
    cred_dir = ctx.env.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        for name in credentials:
            path = Path(cred_dir) / name
            if path.exists():
                return _secret_file(path, key, ctx, f"credential {name}")
    return _secret_file(file, key, ctx, f"file {file}") if file is not None else None


def _env_suffix(name: str) -> str:
    return re.sub(r"[^A-Z0-9]", "_", name.upper())


# --- sections ---------------------------------------------------------------------------------


def _nodes(f: Field, v: Any) -> tuple[NodeConfig, ...]:
    if not isinstance(v, list) or not v:
        raise f.error(f"expected a non-empty list of FreeSWITCH nodes, got {kind_of(v)}")
    nodes: list[NodeConfig] = []
    env_names: dict[str, str] = {}
    for i, item in enumerate(v):
        key = f"{f.name}[{i}]"
        if not isinstance(item, dict):
            raise f.section.error(key, f"expected a mapping, got {kind_of(item)}")
        s = Section(f.ctx, f.section.key(key), item)
        name = s.take("name", _node_name)
        if any(n.name == name for n in nodes):
            raise s.error("name", f"duplicate node name {name!r}")
        suffix = _env_suffix(name)
        if suffix in env_names:
            raise s.error("name", f"{name!r} and {env_names[suffix]!r} map to the same ESLBRIDGE_ESL_PASSWORD_{suffix}")
        env_names[suffix] = name
        nodes.append(
            NodeConfig(
                name=name,
                host=s.take("host", nonempty_text, "127.0.0.1"),
                port=s.take("port", integer(1, 65535), 8021),
                event_format=s.take("event_format", choice("json", "plain"), "json"),
                max_live_calls=s.take("max_live_calls", integer(1, 10_000_000), NodeConfig.max_live_calls),
                password=_find_secret(
                    s, "password_file", (f"ESLBRIDGE_ESL_PASSWORD_{suffix}",), (f"esl_password.{name}", "esl_password")
                ),
            )
        )
        s.finish()
    return tuple(nodes)


def _node_name(f: Field, v: Any) -> str:
    if not isinstance(v, str) or not NODE_NAME_RE.fullmatch(v):
        raise f.error(f"expected 1-63 characters of A-Z a-z 0-9 _ . - (starting alphanumeric), got {kind_of(v)}")
    return v


def _connections(default: ConnectionLimits) -> Callable[[Section], ConnectionLimits]:
    def build(s: Section) -> ConnectionLimits:
        most = s.take("max", integer(1, 100_000), default.max_connections)
        limits = ConnectionLimits(
            max_connections=most,
            max_per_address=s.take("per_address", integer(1, 100_000), min(most, default.max_per_address)),
            head_timeout=s.take("head_timeout", positive_number, default.head_timeout),
            idle_timeout=s.take("idle_timeout", positive_number, default.idle_timeout),
            busy_timeout=s.take("busy_timeout", positive_number, default.busy_timeout),
        )
        if limits.max_per_address > limits.max_connections:
            raise s.error("per_address", f"must be <= {s.key('max')} ({limits.max_connections}), "
                                         f"got {limits.max_per_address}")
        return limits

    return build


def _outbound(s: Section) -> OutboundConfig:
    return OutboundConfig(listen=s.take("listen", optional(_listen), None),
                          allow=s.take("allow", _networks, LOOPBACK),
                          connections=s.section("connections", _connections(ConnectionLimits())))


def _with_password(url: str, password: Secret | None) -> str:
    return make_conninfo(url, password=password.reveal()) if password else url


def _database(s: Section) -> DatabaseConfig:
    ctx = s.ctx
    min_conn = s.take("min_connections", integer(0, 1000), 2)
    max_conn = s.take("max_connections", integer(1, 1000), 10)
    if max_conn < min_conn:
        raise s.error("max_connections", f"must be >= database.min_connections ({min_conn}), got {max_conn}")
    url_key = s.key("url")
    env_url = ctx.env.get("ESLBRIDGE_DATABASE_URL")
    cred_dir = ctx.env.get("CREDENTIALS_DIRECTORY")
    cred_url = Path(cred_dir) / "database_url" if cred_dir else None
    config_url = s.take("url", _url, "postgresql://eslbridge@localhost/eslbridge")
    replica = s.take("replica_url", optional(_url), None)
    password = _find_secret(s, "password_file", (), ("database_password",), required=False)
    if conninfo_to_dict(config_url).get("password"):
        logging.getLogger(__name__).warning(
            "%s holds a password inline: whoever reads the config file reads it; use database.password_file "
            "or the systemd credential database_password instead", url_key)
    if env_url:
        if conninfo_problem(env_url):
            raise ConfigError(f"$ESLBRIDGE_DATABASE_URL: {conninfo_problem(env_url)}")
        url = Secret(env_url, "environment ESLBRIDGE_DATABASE_URL")
    elif cred_url is not None and cred_url.exists():
        cred = _secret_file(cred_url, url_key, ctx, "credential database_url")
        url = Secret(_with_password(_url(Field(s, "url"), cred.reveal()), password), cred.source)
    else:
        url = Secret(_with_password(config_url, password), "config database.url")
    return DatabaseConfig(
        url=url,
        min_connections=min_conn,
        max_connections=max_conn,
        connect_timeout=s.take("connect_timeout", positive_number, 30.0),
        idle_timeout=s.take("idle_timeout", positive_number, 600.0),
        max_lifetime=s.take("max_lifetime", positive_number, 1800.0),
        replica_url=Secret(_with_password(replica, password), "config database.replica_url") if replica else None,
        replica_max_lag=s.take("replica_max_lag", positive_number, 5.0),
    )


def _httpfile_path(f: Field, v: Any) -> str:
    if not isinstance(v, str) or not re.fullmatch(r"/[A-Za-z0-9._~/-]*", v):
        raise f.error(f"expected an absolute URL path like /directory, got {kind_of(v)}")
    return v


def _basic_user(f: Field, v: Any) -> str:
    if not isinstance(v, str) or not v or ":" in v:
        raise f.error(f"expected a non-empty user name without ':', got {kind_of(v)}")
    return v


def _directory(s: Section) -> DirectoryConfig:
    return DirectoryConfig(
        listen=s.take("listen", _listen, ListenAddress("127.0.0.1", 8080)),
        path=s.take("path", _httpfile_path, "/directory"),
        allow=s.take(
            "allow", _networks, (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("::1/128"))
        ),
        username=s.take("username", _basic_user, "freeswitch"),
        password=_find_secret(s, "password_file", ("ESLBRIDGE_DIRECTORY_PASSWORD",), ("directory_password",)),
        cache_seconds=s.take("cache_seconds", integer(0, 86400), 300),
        connections=s.section("connections", _connections(ConnectionLimits())),
    )


def _encryption(s: Section) -> EncryptionConfig:
    return EncryptionConfig(keyring_file=s.take("keyring_file", file_path, Path("/etc/eslbridge/keyring.yaml")))


def _journal(s: Section) -> JournalConfig:
    return JournalConfig(
        dir=s.take("dir", file_path, Path("/var/lib/eslbridge/journal")),
        max_bytes=s.take("max_bytes", integer(1), 1073741824),
    )


def _metrics(s: Section) -> MetricsConfig:
    return MetricsConfig(listen=s.take("listen", optional(_listen), ListenAddress("127.0.0.1", 9464)),
                         allow=s.take("allow", _networks, LOOPBACK),
                         connections=s.section("connections", _connections(MetricsConfig.connections)))


def _retention(s: Section) -> RetentionConfig:
    days = integer(1, 36500)
    return RetentionConfig(
        call_events_days=s.take("call_events_days", days, 90),
        audit_logs_days=s.take("audit_logs_days", days, 365),
        call_records_days=s.take("call_records_days", days, 365),
        calls_days=s.take("calls_days", days, 365),
    )


def _logging(s: Section) -> LoggingConfig:
    return LoggingConfig(
        level=s.take("level", choice(*LOG_LEVELS), "info"),
        format=s.take("format", choice("text", "json"), "text"),
    )


_SECTIONS: dict[str, Callable[[Section], Any]] = {
    "outbound": _outbound, "database": _database, "directory": _directory, "encryption": _encryption,
    "journal": _journal, "metrics": _metrics, "retention": _retention, "logging": _logging,
}
