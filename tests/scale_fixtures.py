"""The simulators' ledgers (eslbridge/sim/ledger.py) against call_records, for the scale tests and
bench/scale.py: every call a simulator finished sending has exactly one row, on its node, finished."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg

# (node, call_uuid, stage, start_time, reconciled)
Row = tuple


def ledger_calls(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def call_rows(dsn: str) -> list[Row]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT node, call_uuid::text, stage, start_time, reconciled FROM call_records").fetchall()


def ledger_problems(rows: list[Row], ledgers: dict[str, list[dict]]) -> list[str]:
    """What differs between the rows and the ledgers (node -> its simulator's calls); [] when each
    call played has exactly one finished row on its node and there is no other row. A call's row is
    keyed by one of its legs' UUIDs (the root's), so a row belongs to the call holding that UUID."""
    problems: list[str] = []
    owner = {(node, u): i for node, calls in ledgers.items() for i, call in enumerate(calls) for u in call["uuids"]}
    matched: dict[tuple[str, int], list[Row]] = {}
    for row in rows:
        key = (row[0], owner.get((row[0], row[1])))
        if key[1] is None:
            problems.append(f"{row[0]}: a row for a call the simulator never finished: {row[1:]}")
        else:
            matched.setdefault(key, []).append(row)
    for node, calls in ledgers.items():
        for i, call in enumerate(calls):
            found = matched.get((node, i), [])
            if not call["complete"]:
                problems.append(f"{node}: a call dropped by a restart in the ledger: {call['uuids']}")
            elif not found:
                problems.append(f"{node}: no row for {call['scenario']} call {call['uuids']}")
            elif len(found) > 1:
                problems.append(f"{node}: {call['scenario']} call written {len(found)} times "
                                f"(call_uuid, stage, start_time, reconciled): {sorted(r[1:] for r in found)}")
            elif found[0][2] != 3:
                problems.append(f"{node}: {call['scenario']} call left unfinished: {found[0][1:]}")
    return problems
