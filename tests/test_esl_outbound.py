"""Outbound ESL server against the simulator's `socket` dialplan app side, over TCP."""

from __future__ import annotations

from eslbridge.esl.outbound import OutboundServer
from eslbridge.sim.outbound import channel_data, place_call


def test_allow_continues_and_refuse_hangs_up():
    seen, results = [], []

    def authorizer(data):
        seen.append(data)
        return (data["Caller-Caller-ID-Number"] == "1000", "not allowed")

    server = OutboundServer(("127.0.0.1", 0), authorizer, on_result=lambda d, ok, why: results.append((ok, why)))
    host, port = server.start()
    try:
        ok = place_call(host, port, channel_data("auth_call"))
        assert ok.outcome == "continue" and ok.commands == ["connect", "resume", "exit"]
        refused = place_call(host, port, channel_data("auth_call", **{"Caller-Caller-ID-Number": "666 %0A"}))
        assert refused.outcome == "hangup" and refused.hangup_cause == "CALL_REJECTED"
        assert seen[1]["Caller-Caller-ID-Number"] == "666 %0A"  # URL-decoded once, exactly
        assert seen[0]["Channel-Name"].startswith("sofia/internal/1000@")
        assert results == [(True, "not allowed"), (False, "not allowed")]
        assert server.stats == {"allowed": 1, "rejected": 1}
    finally:
        server.stop()


def test_authorizer_error_fails_closed():
    def broken(data):
        raise RuntimeError("db down")

    server = OutboundServer(("127.0.0.1", 0), broken)
    host, port = server.start()
    try:
        assert place_call(host, port, channel_data()).hangup_cause == "CALL_REJECTED"
        assert server.stats["rejected"] == 1
    finally:
        server.stop()


def test_stopping_lets_a_call_being_authorized_get_its_decision():
    import gevent

    def slow(data):
        gevent.sleep(0.5)
        return True, "ok"

    server = OutboundServer(("127.0.0.1", 0), slow)
    host, port = server.start()
    call = gevent.get_hub().threadpool.spawn(place_call, host, port, channel_data())
    while not any(c.serving for c in server.gate.conns.values()):  # the authorizer runs
        gevent.sleep(0.01)
    server.stop()
    assert call.get(timeout=10).outcome == "continue"
    gevent.sleep(0.3)
    assert server.gate.open == 0
