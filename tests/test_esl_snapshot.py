"""`show channels as json` bodies parsed row by row (eslbridge.esl.snapshot)."""

from __future__ import annotations

import json

import pytest

from eslbridge.esl.snapshot import parse_snapshot

ROWS = [{"uuid": f"u{i}", "cid_name": "Ext \u00e9 {1000}, [x]", "call_uuid": "u0", "created_epoch": "1795299200"}
        for i in range(25)]


def test_rows_match_the_standard_parser_and_pause_runs_between_them():
    body = json.dumps({"row_count": len(ROWS), "rows": ROWS}, indent=1).encode()
    pauses = []
    assert parse_snapshot(body, lambda: pauses.append(1), every=10) == ROWS
    assert len(pauses) == 2


@pytest.mark.parametrize(("body", "rows"), [
    (b'{"row_count":0}', []),
    (b' {"row_count": 0, "rows": [] }\n', []),
    (b'{"rows":[{"uuid":"a"}, 7, {"uuid":"b"}],"row_count":2}', [{"uuid": "a"}, {"uuid": "b"}]),
    (b'{"row_count":1,"rows":[{"uuid":"a","cid_name":"\xff\xfe"}]}', [{"uuid": "a", "cid_name": "\ufffd\ufffd"}]),
])
def test_shapes(body, rows):
    assert parse_snapshot(body) == rows


@pytest.mark.parametrize("body", [
    b"", b"-ERR no reply\n", b"[]", b'{"rows": {"uuid": "a"}}', b'{"rows": [{"uuid": "a"}', b'{"rows": [1 2]}',
    b'{"row_count": 1} trailing', b'{1: 2}', b'{"row_count" 1}',
])
def test_bad_bodies_raise_value_error_without_their_content(body):
    with pytest.raises(ValueError) as err:
        parse_snapshot(body)
    assert "uuid" not in str(err.value)
