"""Each greenswitch 0.0.19 defect of DESIGN section 2: stock InboundESL fails, InboundClient does not.

Both run against the same simulator over TCP in the same test.
"""

from __future__ import annotations

import gevent
import greenswitch
import pytest

from eslbridge.sim import faults
from tests.esl_fixtures import PASSWORD, Collector, make_client, sim  # noqa: F401


def stock(sim, fmt: str):  # noqa: F811
    esl = greenswitch.InboundESL(sim.host, sim.port, PASSWORD)
    esl.connect()
    got = []
    esl.register_handle("*", got.append)
    esl.send(f"event {fmt} ALL")
    return esl, got


def _close(esl) -> None:
    # Not esl.stop(): it sends "exit" and waits for a reply forever (defect 5) once its reader is dead.
    esl._run = False
    esl.sock.close()


def _wait(predicate, timeout=3.0) -> bool:
    with gevent.Timeout(timeout, False):
        while not predicate():
            gevent.sleep(0.01)
        return True
    return False


FORGE = faults.event_frame_raw(
    "text/event-plain",
    b"Event-Name: CHANNEL_CREATE\nUnique-ID: u-1\nCaller-Caller-ID-Name: Eve%0AUnique-ID%3A%20forged\n\n")


def test_percent_0a_forges_header_in_stock_not_ours(sim):  # noqa: F811
    esl, stock_got = stock(sim, "plain")
    ours = Collector()
    client = make_client(sim, ours, "plain")
    sim.inject(FORGE)
    assert _wait(lambda: any(e.headers.get("Event-Name") == "CHANNEL_CREATE" for e in stock_got))
    assert ours.wait_for(lambda: any(e["Event-Name"] == "CHANNEL_CREATE" for e in ours.events))
    forged = next(e for e in stock_got if e.headers.get("Event-Name") == "CHANNEL_CREATE")
    assert forged.headers["Unique-ID"] == "forged"  # stock: the caller rewrote the channel's UUID
    mine = next(e for e in ours.events if e["Event-Name"] == "CHANNEL_CREATE")
    assert mine["Unique-ID"] == "u-1" and mine["Caller-Caller-ID-Name"] == "Eve\nUnique-ID: forged"
    client.stop()
    _close(esl)


def test_json_events_unusable_in_stock(sim):  # noqa: F811
    esl, stock_got = stock(sim, "json")
    ours = Collector()
    client = make_client(sim, ours, "json")
    sim.play_calls(1, "reject", rate=0, speed=100)
    assert ours.wait_for(lambda: any(e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE" for e in ours.events))
    # stock splits JSON as "Name: value" lines, finds none, and its reader dies on the first event
    assert _wait(lambda: esl._receive_events_greenlet.dead)
    assert not any("Unique-ID" in e.headers for e in stock_got)
    assert any(e.get("Hangup-Cause") == "CALL_REJECTED" for e in ours.events)
    client.stop()
    _close(esl)


def test_invalid_utf8_kills_stock_reader(sim):  # noqa: F811
    esl, stock_got = stock(sim, "plain")
    ours = Collector()
    client = make_client(sim, ours, "plain")
    bad = b"Event-Name: CHANNEL_CREATE\nCaller-Caller-ID-Name: \xff\n\n"
    sim.inject(faults.event_frame_raw("text/event-plain", bad))
    sim.play_calls(1, "reject", rate=0, speed=100)
    assert ours.wait_for(lambda: any(e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE" for e in ours.events))
    assert _wait(lambda: esl._receive_events_greenlet.dead)
    assert isinstance(esl._receive_events_greenlet.exception, UnicodeDecodeError)
    assert not any(e.headers.get("Event-Name") == "CHANNEL_HANGUP_COMPLETE" for e in stock_got)
    assert client.stats.parse_errors["invalid_utf8"] == 1 and client.connected
    client.stop()
    _close(esl)
    _close(esl)


def test_no_reconnect_in_stock(sim):  # noqa: F811
    esl, _ = stock(sim, "json")
    ours = Collector()
    client = make_client(sim, ours, "json")
    sim.restart()
    assert ours.wait_for(lambda: len(ours.snapshots) == 2 and client.connected)
    assert _wait(lambda: not esl.connected)
    gevent.sleep(0.5)
    assert not esl.connected  # stock stays down for good
    client.stop()
    _close(esl)


def test_unexpected_reply_kills_stock_reader(sim):  # noqa: F811
    esl, _ = stock(sim, "plain")
    ours = Collector()
    client = make_client(sim, ours, "plain")
    sim.inject(faults.raw(b"Content-Type: command/reply\nReply-Text: +OK stray\n\n"))
    assert _wait(lambda: esl._receive_events_greenlet.dead)
    assert isinstance(esl._receive_events_greenlet.exception, IndexError)
    assert ours.wait_for(lambda: client.stats.parse_errors["unexpected_reply"] == 1) and client.connected
    client.stop()
    _close(esl)


def test_commands_block_forever_in_stock(sim):  # noqa: F811
    esl, _ = stock(sim, "plain")
    ours = Collector()
    client = make_client(sim, ours, "plain", heartbeat_interval=10)
    sim.inject(faults.stall(3))
    with pytest.raises(gevent.Timeout), gevent.Timeout(1):  # stock send() has no timeout of its own
        esl.send("api status")
    with pytest.raises(TimeoutError):
        client.api("status", timeout=0.3)
    client.stop()
    _close(esl)
