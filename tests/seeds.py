"""Reads the two seed documents (docs/seeds) so schema tests check what they say, not a copy."""

from __future__ import annotations

import re
from pathlib import Path

from tests.paths import SEEDS

YAKYAK = SEEDS / "000_c1a633d1fe67a230.txt"
SIPCALL = SEEDS / "001_0b4714535c98bb7f.txt"


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def yakyak_tables() -> dict[str, list[str]]:
    """{table: [columns]} from the markdown column tables under `### name`."""
    tables: dict[str, list[str]] = {}
    for block in re.split(r"^### ", _text(YAKYAK), flags=re.M)[1:]:
        name = block.split()[0]
        columns = re.findall(r"^\| (\w+) \| [A-Z]", block, flags=re.M)
        if columns:
            tables[name] = [c for c in columns if c != "Column"]
    return tables


def yakyak_indexed_columns() -> dict[str, list[str]]:
    """{table: [column]} for every `- INDEX: col` and `- UNIQUE: col` line."""
    out: dict[str, list[str]] = {}
    for block in re.split(r"^### ", _text(YAKYAK), flags=re.M)[1:]:
        name = block.split()[0]
        cols = re.findall(r"^- (?:INDEX|UNIQUE): `(\w+)`", block, flags=re.M)
        if cols:
            out[name] = cols
    return out


def yakyak_triggers() -> list[str]:
    return re.findall(r"`(update_\w+_trigger)`", _text(YAKYAK))


def yakyak_permissions() -> list[str]:
    return re.findall(r"^- `([a-z_]+:[a-z_]+)` - ", _text(YAKYAK), flags=re.M)


def sipcall_tables() -> dict[str, list[str]]:
    """{table: [columns]} from the CREATE TABLE statements."""
    tables: dict[str, list[str]] = {}
    for name, body in re.findall(r"CREATE TABLE (\w+) \((.*?)\n\);", _text(SIPCALL), flags=re.S):
        cols = []
        for line in body.splitlines():
            match = re.match(r"\s+(\w+)\s+[A-Z]", line)
            if match:
                cols.append(match.group(1))
        tables[name] = cols
    return tables


def sipcall_indexes() -> dict[str, str]:
    """{index name: table}."""
    return dict(re.findall(r"CREATE (?:UNIQUE )?INDEX (\w+) ON (\w+)", _text(SIPCALL)))


def sipcall_functions() -> list[str]:
    return re.findall(r"CREATE OR REPLACE FUNCTION (\w+)\(", _text(SIPCALL))


def sipcall_views() -> list[str]:
    return re.findall(r"CREATE (?:MATERIALIZED )?VIEW (\w+) AS", _text(SIPCALL))
