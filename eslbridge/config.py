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

import difflib
import ipaddress
import logging
import os
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import psycopg
import yaml
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from eslbridge.errors import ConfigError
from eslbridge.ops.netgate import LOOPBACK, ConnectionLimits, IPNetwork

DEFAULT_CONFIG_PATH = "/etc/eslbridge/eslbridge.yaml"
MAX_SECRET_BYTES = 64 * 1024
NODE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class Secret:
    """A secret string whose repr/str never show the value; ``reveal()`` returns it."""

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str) -> None:
        self._value = value
        self.source = source  # where it came from, e.g. "credential esl_password.fs1": safe to log

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret(<hidden>, source={self.source!r})"

    def __str__(self) -> str:
        return "<hidden>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> Any:  # never pickle a secret into a file or a queue by accident
        raise TypeError("Secret cannot be pickled")


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


def config_path(path: str | None = None, env: Mapping[str, str] | None = None) -> Path:
    """The config file to use: the argument, else ``$ESLBRIDGE_CONFIG``, else the default."""
    env = os.environ if env is None else env
    return Path(path or env.get("ESLBRIDGE_CONFIG") or DEFAULT_CONFIG_PATH)


def load_config(path: str | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read, validate and resolve the whole config, secrets included."""
    env = os.environ if env is None else env
    file = config_path(path, env)
    root = _Section(_Context(file, env), "", _read_yaml(file))
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
    file = config_path(path, env)
    root = _Section(_Context(file, env), "", _read_yaml(file))
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


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _UniqueKeyLoader.construct_mapping
)


def _read_yaml(file: Path) -> dict:
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read config: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: not valid UTF-8") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as exc:
        # Only the problem and position: the snippet YAML would quote could be anything.
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise ConfigError(f"{file}: {where}invalid YAML: {problem}") from None
    if data is None:
        raise ConfigError(f"{file}: the config is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: expected a mapping at the top level, got {_kind(data)}")
    return data


@dataclass(frozen=True)
class _Context:
    file: Path
    env: Mapping[str, str]

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.file}: {key}: {message}" if key else f"{self.file}: {message}")

    def path(self, value: str) -> Path:
        return (self.file.parent / value) if not os.path.isabs(value) else Path(value)


_REQUIRED = object()


class _Section:
    """One mapping of the config: hands out its keys, then rejects any key nobody took."""

    def __init__(self, ctx: _Context, prefix: str, data: dict) -> None:
        self.ctx = ctx
        self.prefix = prefix
        self.data = data
        self.known: list[str] = []

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, message: str) -> ConfigError:
        return self.ctx.error(self.key(name), message)

    def take(self, name: str, conv: Callable[[_Field, Any], Any], default: Any = _REQUIRED) -> Any:
        """The converted value of ``name``; ``conv(section, value)`` raises via ``section.error``."""
        self.known.append(name)
        if name not in self.data:
            if default is _REQUIRED:
                raise self.error(name, "missing required key")
            return default
        return conv(_Field(self, name), self.data[name])

    def section(self, name: str, build: Callable[[_Section], Any]) -> Any:
        """A nested mapping, built by ``build``; an absent section gets every default."""
        self.known.append(name)
        value = self.data.get(name)
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise self.error(name, f"expected a mapping, got {_kind(value)}")
        sub = _Section(self.ctx, self.key(name), value)
        result = build(sub)
        sub.finish()
        return result

    def finish(self) -> None:
        for key in self.data:
            if not isinstance(key, str):
                raise self.ctx.error(self.prefix, f"keys must be strings, got {key!r}")
            if key not in self.known:
                hint = difflib.get_close_matches(key, self.known, n=1, cutoff=0.6)
                suffix = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise self.error(key, f"unknown key{suffix}")


class _Field:
    """What a converter gets: the section (for secrets, paths) and the field's dotted key."""

    def __init__(self, section: _Section, name: str) -> None:
        self.section = section
        self.ctx = section.ctx
        self.name = name

    def error(self, message: str) -> ConfigError:
        return self.section.error(self.name, message)


# --- converters: (field, value) -> typed value ------------------------------------------------


def _kind(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return "a mapping" if isinstance(value, dict) else "a list"
    return repr(value)


def _int(lo: int, hi: int | None = None) -> Callable[[_Field, Any], int]:
    span = f"{lo}-{hi}" if hi is not None else f">= {lo}"

    def conv(f: _Field, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
            raise f.error(f"expected an integer {span}, got {_kind(v)}")
        return v

    return conv


def _positive_number(f: _Field, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
        raise f.error(f"expected a number > 0 (seconds), got {_kind(v)}")
    return float(v)


def _text(f: _Field, v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise f.error(f"expected a non-empty string, got {_kind(v)}")
    return v


def _choice(*options: str) -> Callable[[_Field, Any], str]:
    def conv(f: _Field, v: Any) -> str:
        if v not in options:
            raise f.error(f"expected one of {', '.join(options)}, got {_kind(v)}")
        return v

    return conv


def _path(f: _Field, v: Any) -> Path:
    return f.ctx.path(_text(f, v))


def _optional(conv: Callable[[_Field, Any], Any]) -> Callable[[_Field, Any], Any]:
    return lambda f, v: None if v is None else conv(f, v)


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


def _listen(f: _Field, v: Any) -> ListenAddress:
    if not isinstance(v, str):
        raise f.error(f"expected host:port or [ipv6]:port, got {_kind(v)}")
    try:
        return parse_listen(v)
    except ValueError as exc:
        raise f.error(f"{exc}, got {v!r}") from None


def _networks(f: _Field, v: Any) -> tuple[IPNetwork, ...]:
    if not isinstance(v, list) or not v:
        raise f.error(f"expected a non-empty list of networks (CIDR), got {_kind(v)}")
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


def _url(f: _Field, v: Any) -> str:
    text = _text(f, v)
    problem = conninfo_problem(text)
    if problem:
        raise f.error(problem)
    return text


# --- secrets ----------------------------------------------------------------------------------


def read_private_file(path: Path) -> bytes:
    """A secret file's bytes, refused (ConfigError naming the path, never the content) unless it is
    a regular file that group and others cannot access, of at most MAX_SECRET_BYTES. The config and
    the keyring both read their secrets through this one check."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"cannot read secret file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        mode = os.fstat(fh.fileno()).st_mode  # of the file we opened: no check-then-open race
        if not stat.S_ISREG(mode):
            raise ConfigError(f"secret file {path} is not a regular file")
        if mode & 0o077:
            perms = f"{stat.S_IMODE(mode):04o}"
            raise ConfigError(f"secret file {path} grants access to group or others (mode {perms}); chmod 600 it")
        data = fh.read(MAX_SECRET_BYTES + 1)
    if len(data) > MAX_SECRET_BYTES:
        raise ConfigError(f"secret file {path} is larger than {MAX_SECRET_BYTES} bytes")
    return data


def read_secret_file(path: Path, key: str, ctx: _Context, source: str) -> Secret:
    """A config secret: read_private_file's checks, then UTF-8, one line, not empty."""
    try:
        data = read_private_file(path)
    except ConfigError as exc:
        raise ctx.error(key, str(exc)) from None
    try:
        value = data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise ctx.error(key, f"secret file {path} is not valid UTF-8") from None
    if not value:
        raise ctx.error(key, f"secret file {path} is empty")
    return Secret(value, source)


def _find_secret(
    section: _Section, file_key: str, env_names: tuple[str, ...], credentials: tuple[str, ...], required: bool = True
) -> Secret | None:
    """Environment, then systemd credentials, then the ``*_file`` key (see the module docstring)."""
    ctx = section.ctx
    key = section.key(file_key)
    file = section.take(file_key, _optional(_path), None)  # always taken: validated even when unused
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
    ctx: _Context, key: str, file: Path | None, env_names: tuple[str, ...], credentials: tuple[str, ...]
) -> Secret | None:
    for name in env_names:
        if ctx.env.get(name):
            return Secret(ctx.env[name], f"environment {name}")
    cred_dir = ctx.env.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        for name in credentials:
            path = Path(cred_dir) / name
            if path.exists():
                return read_secret_file(path, key, ctx, f"credential {name}")
    return read_secret_file(file, key, ctx, f"file {file}") if file is not None else None


def _env_suffix(name: str) -> str:
    return re.sub(r"[^A-Z0-9]", "_", name.upper())


# --- sections ---------------------------------------------------------------------------------


def _nodes(f: _Field, v: Any) -> tuple[NodeConfig, ...]:
    if not isinstance(v, list) or not v:
        raise f.error(f"expected a non-empty list of FreeSWITCH nodes, got {_kind(v)}")
    nodes: list[NodeConfig] = []
    env_names: dict[str, str] = {}
    for i, item in enumerate(v):
        key = f"{f.name}[{i}]"
        if not isinstance(item, dict):
            raise f.section.error(key, f"expected a mapping, got {_kind(item)}")
        s = _Section(f.ctx, f.section.key(key), item)
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
                host=s.take("host", _text, "127.0.0.1"),
                port=s.take("port", _int(1, 65535), 8021),
                event_format=s.take("event_format", _choice("json", "plain"), "json"),
                max_live_calls=s.take("max_live_calls", _int(1, 10_000_000), NodeConfig.max_live_calls),
                password=_find_secret(
                    s, "password_file", (f"ESLBRIDGE_ESL_PASSWORD_{suffix}",), (f"esl_password.{name}", "esl_password")
                ),
            )
        )
        s.finish()
    return tuple(nodes)


def _node_name(f: _Field, v: Any) -> str:
    if not isinstance(v, str) or not NODE_NAME_RE.fullmatch(v):
        raise f.error(f"expected 1-63 characters of A-Z a-z 0-9 _ . - (starting alphanumeric), got {_kind(v)}")
    return v


def _connections(default: ConnectionLimits) -> Callable[[_Section], ConnectionLimits]:
    def build(s: _Section) -> ConnectionLimits:
        most = s.take("max", _int(1, 100_000), default.max_connections)
        limits = ConnectionLimits(
            max_connections=most,
            max_per_address=s.take("per_address", _int(1, 100_000), min(most, default.max_per_address)),
            head_timeout=s.take("head_timeout", _positive_number, default.head_timeout),
            idle_timeout=s.take("idle_timeout", _positive_number, default.idle_timeout),
            busy_timeout=s.take("busy_timeout", _positive_number, default.busy_timeout),
        )
        if limits.max_per_address > limits.max_connections:
            raise s.error("per_address", f"must be <= {s.key('max')} ({limits.max_connections}), "
                                         f"got {limits.max_per_address}")
        return limits

    return build


def _outbound(s: _Section) -> OutboundConfig:
    return OutboundConfig(listen=s.take("listen", _optional(_listen), None),
                          allow=s.take("allow", _networks, LOOPBACK),
                          connections=s.section("connections", _connections(ConnectionLimits())))


def _with_password(url: str, password: Secret | None) -> str:
    return make_conninfo(url, password=password.reveal()) if password else url


def _database(s: _Section) -> DatabaseConfig:
    ctx = s.ctx
    min_conn = s.take("min_connections", _int(0, 1000), 2)
    max_conn = s.take("max_connections", _int(1, 1000), 10)
    if max_conn < min_conn:
        raise s.error("max_connections", f"must be >= database.min_connections ({min_conn}), got {max_conn}")
    url_key = s.key("url")
    env_url = ctx.env.get("ESLBRIDGE_DATABASE_URL")
    cred_dir = ctx.env.get("CREDENTIALS_DIRECTORY")
    cred_url = Path(cred_dir) / "database_url" if cred_dir else None
    config_url = s.take("url", _url, "postgresql://eslbridge@localhost/eslbridge")
    replica = s.take("replica_url", _optional(_url), None)
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
        cred = read_secret_file(cred_url, url_key, ctx, "credential database_url")
        url = Secret(_with_password(_url(_Field(s, "url"), cred.reveal()), password), cred.source)
    else:
        url = Secret(_with_password(config_url, password), "config database.url")
    return DatabaseConfig(
        url=url,
        min_connections=min_conn,
        max_connections=max_conn,
        connect_timeout=s.take("connect_timeout", _positive_number, 30.0),
        idle_timeout=s.take("idle_timeout", _positive_number, 600.0),
        max_lifetime=s.take("max_lifetime", _positive_number, 1800.0),
        replica_url=Secret(_with_password(replica, password), "config database.replica_url") if replica else None,
        replica_max_lag=s.take("replica_max_lag", _positive_number, 5.0),
    )


def _http_path(f: _Field, v: Any) -> str:
    if not isinstance(v, str) or not re.fullmatch(r"/[A-Za-z0-9._~/-]*", v):
        raise f.error(f"expected an absolute URL path like /directory, got {_kind(v)}")
    return v


def _basic_user(f: _Field, v: Any) -> str:
    if not isinstance(v, str) or not v or ":" in v:
        raise f.error(f"expected a non-empty user name without ':', got {_kind(v)}")
    return v


def _directory(s: _Section) -> DirectoryConfig:
    return DirectoryConfig(
        listen=s.take("listen", _listen, ListenAddress("127.0.0.1", 8080)),
        path=s.take("path", _http_path, "/directory"),
        allow=s.take(
            "allow", _networks, (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("::1/128"))
        ),
        username=s.take("username", _basic_user, "freeswitch"),
        password=_find_secret(s, "password_file", ("ESLBRIDGE_DIRECTORY_PASSWORD",), ("directory_password",)),
        cache_seconds=s.take("cache_seconds", _int(0, 86400), 300),
        connections=s.section("connections", _connections(ConnectionLimits())),
    )


def _encryption(s: _Section) -> EncryptionConfig:
    return EncryptionConfig(keyring_file=s.take("keyring_file", _path, Path("/etc/eslbridge/keyring.yaml")))


def _journal(s: _Section) -> JournalConfig:
    return JournalConfig(
        dir=s.take("dir", _path, Path("/var/lib/eslbridge/journal")),
        max_bytes=s.take("max_bytes", _int(1), 1073741824),
    )


def _metrics(s: _Section) -> MetricsConfig:
    return MetricsConfig(listen=s.take("listen", _optional(_listen), ListenAddress("127.0.0.1", 9464)),
                         allow=s.take("allow", _networks, LOOPBACK),
                         connections=s.section("connections", _connections(MetricsConfig.connections)))


def _retention(s: _Section) -> RetentionConfig:
    days = _int(1, 36500)
    return RetentionConfig(
        call_events_days=s.take("call_events_days", days, 90),
        audit_logs_days=s.take("audit_logs_days", days, 365),
        call_records_days=s.take("call_records_days", days, 365),
        calls_days=s.take("calls_days", days, 365),
    )


def _logging(s: _Section) -> LoggingConfig:
    return LoggingConfig(
        level=s.take("level", _choice(*LOG_LEVELS), "info"),
        format=s.take("format", _choice("text", "json"), "text"),
    )


_SECTIONS: dict[str, Callable[[_Section], Any]] = {
    "outbound": _outbound, "database": _database, "directory": _directory, "encryption": _encryption,
    "journal": _journal, "metrics": _metrics, "retention": _retention, "logging": _logging,
}
