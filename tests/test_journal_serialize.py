"""RecordUpdate journal payloads: JSON round-trip of every field."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone

import pytest

from eslbridge.calls.records import CallRecord, LifecycleEvent, RecordUpdate, Stage
from eslbridge.store.serialize import decode_update, encode_update

T0 = datetime(2024, 3, 1, 12, 30, 5, 123456, tzinfo=UTC)


def full_update() -> RecordUpdate:
    record = CallRecord(
        call_uuid="6f1c0e0a-1", node="fs1", call_id="abc@192.0.2.1", start_time=T0, direction="Outbound",
        status="Completed", call_status="completed", caller="sip:1000@example.com", callee="sip:+4930@example.com",
        caller_number="1000", callee_number="+4930", caller_id_name="Zoë", caller_ip="192.0.2.1",
        callee_ip="2001:db8::1", caller_sdp="v=0\r\n", callee_sdp="v=0\r\nm=audio 1 RTP/AVP 0\r\n",
        answer_time=T0 + timedelta(seconds=2),
        end_time=datetime(2024, 3, 1, 14, 0, tzinfo=timezone(timedelta(hours=2))),
        setup_duration_ms=2000, call_duration_ms=60000, total_duration_ms=62000, duration_seconds=60,
        disconnect_reason="NORMAL_CLEARING", sip_response_code=200, codec="PCMU", caller_user_agent="ua1",
        callee_user_agent="ua2", media_info={"caller": {"mos": 4.3, "jitter": [1, 2]}}, quality_score=4.3,
        user_id="u1", caller_user_id="u1", callee_user_id=None, reconciled=True, reconcile_reason="resync",
    )
    assert all(getattr(record, f.name) is not None for f in dataclasses.fields(record) if f.name != "callee_user_id")
    events = [LifecycleEvent(1, "created", T0, {"leg": "a"}), LifecycleEvent(2, "hangup", T0, {})]
    return RecordUpdate(Stage.FINISHED, record, events)


def test_roundtrip_every_field():
    update = full_update()
    back = decode_update(encode_update(update))
    assert back == update
    assert back.stage is Stage.FINISHED
    assert back.record.end_time.utcoffset() == timedelta(hours=2)


def test_minimal_record_roundtrip():
    update = full_update()
    minimal = RecordUpdate(Stage.STARTED, dataclasses.replace(update.record, answer_time=None, end_time=None,
                                                              media_info=None))
    assert decode_update(encode_update(minimal)) == minimal


@pytest.mark.parametrize("data", [b"", b"not json", b"[]", b'{"v": 2}', b'{"v": 1, "stage": 9}',
                                  b'{"v": 1, "stage": 1, "record": {"x": 1}, "events": []}'])
def test_bad_payload_is_a_value_error(data):
    with pytest.raises(ValueError):
        decode_update(data)


def test_non_json_values_fail_at_encode():
    update = full_update()
    update.record.media_info = {"when": T0}
    with pytest.raises(TypeError):
        encode_update(update)


def test_nan_is_stored_as_unknown():
    update = full_update()
    update.record.quality_score = float("nan")
    update.record.media_info = {"caller": {"mos": float("nan")}}
    back = decode_update(encode_update(update))
    assert back.record.quality_score is None
    assert back.record.media_info == {"caller": {"mos": None}}
