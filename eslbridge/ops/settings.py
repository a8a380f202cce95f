"""The one reader of eslbridge's settings files and secrets: the config and the keyring both go
through it, so both refuse the same things the same way.

YAML is read with duplicate keys refused (PyYAML silently keeps the last) and errors that give the
position, never the text (it may hold a secret). A ``Section`` hands out its keys through
converters and rejects any key nobody took, so every error names the file and the dotted key.

Hand-written rather than a schema library (pydantic and the like): the checks are ~150 lines, the
messages (dotted keys, "did you mean", a secret never quoted) are the contract operators and tests
read, and a library would need as much code again to produce them, plus a dependency on the
daemon's start path.
"""

from __future__ import annotations

import difflib
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from eslbridge.errors import ConfigError

MAX_SECRET_BYTES = 64 * 1024


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


def read_secret(path: Path, trim: Callable[[bytes], bytes] = bytes.strip) -> bytes:
    """A secret file's content without what ``trim`` cuts off (surrounding whitespace by default),
    refused (ConfigError naming the path, never the content) unless it is a regular file that group
    and others cannot access, of at most MAX_SECRET_BYTES, and not empty once trimmed."""
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
    content = trim(data)
    if not content:
        raise ConfigError(f"secret file {path} is empty")
    return content


class UniqueKeyLoader(yaml.SafeLoader):
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


UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, UniqueKeyLoader.construct_mapping
)


def parse_yaml(file: Path, text: str | bytes, what: str) -> dict:
    """The mapping a settings file holds (``what`` names it in errors: "config", "keyring")."""
    try:
        data = yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as exc:
        # Only the problem and position: the snippet YAML would quote could be anything.
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise ConfigError(f"{file}: {where}invalid YAML: {problem}") from None
    if data is None:
        raise ConfigError(f"{file}: the {what} is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: expected a mapping at the top level, got {kind_of(data)}")
    return data


@dataclass(frozen=True)
class Context:
    file: Path
    env: Mapping[str, str]

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.file}: {key}: {message}" if key else f"{self.file}: {message}")

    def path(self, value: str) -> Path:
        return (self.file.parent / value) if not os.path.isabs(value) else Path(value)


REQUIRED = object()


class Section:
    """One mapping of a settings file: hands out its keys, then rejects any key nobody took."""

    def __init__(self, ctx: Context, prefix: str, data: dict) -> None:
        self.ctx = ctx
        self.prefix = prefix
        self.data = data
        self.known: list[str] = []

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, message: str) -> ConfigError:
        return self.ctx.error(self.key(name), message)

    def take(self, name: str, conv: Callable[[Field, Any], Any], default: Any = REQUIRED) -> Any:
        """The converted value of ``name``; ``conv(section, value)`` raises via ``section.error``."""
        self.known.append(name)
        if name not in self.data:
            if default is REQUIRED:
                raise self.error(name, "missing required key")
            return default
        return conv(Field(self, name), self.data[name])

    def section(self, name: str, build: Callable[[Section], Any]) -> Any:
        """A nested mapping, built by ``build``; an absent section gets every default."""
        self.known.append(name)
        value = self.data.get(name)
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise self.error(name, f"expected a mapping, got {kind_of(value)}")
        sub = Section(self.ctx, self.key(name), value)
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


class Field:
    """What a converter gets: the section (for secrets, paths) and the field's dotted key."""

    def __init__(self, section: Section, name: str) -> None:
        self.section = section
        self.ctx = section.ctx
        self.name = name

    def error(self, message: str) -> ConfigError:
        return self.section.error(self.name, message)


def kind_of(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return "a mapping" if isinstance(value, dict) else "a list"
    return repr(value)


def integer(lo: int, hi: int | None = None) -> Callable[[Field, Any], int]:
    span = f"{lo}-{hi}" if hi is not None else f">= {lo}"

    def conv(f: Field, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
            raise f.error(f"expected an integer {span}, got {kind_of(v)}")
        return v

    return conv


def positive_number(f: Field, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
        raise f.error(f"expected a number > 0 (seconds), got {kind_of(v)}")
    return float(v)


def nonempty_text(f: Field, v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise f.error(f"expected a non-empty string, got {kind_of(v)}")
    return v


def choice(*options: str) -> Callable[[Field, Any], str]:
    def conv(f: Field, v: Any) -> str:
        if v not in options:
            raise f.error(f"expected one of {', '.join(options)}, got {kind_of(v)}")
        return v

    return conv


def file_path(f: Field, v: Any) -> Path:
    return f.ctx.path(nonempty_text(f, v))


def optional(conv: Callable[[Field, Any], Any]) -> Callable[[Field, Any], Any]:
    return lambda f, v: None if v is None else conv(f, v)
