"""InboundClient against the simulator over real TCP sockets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import gevent
import gevent.subprocess
import pytest

from eslbridge.esl.inbound import SUBSCRIBED_EVENTS, EslError
from eslbridge.sim import faults
from tests.esl_fixtures import PASSWORD, Collector, make_client, sim, summary_counts  # noqa: F401
from tests.paths import CAPTURED, PUBLIC, shared_public


@pytest.mark.parametrize("name", sorted(p.name for p in CAPTURED.glob("*.esl")))
def test_replayed_capture_delivers_summary_counts(sim, name):  # noqa: F811
    fmt = "plain" if ".plain." in name else "json"
    got = Collector()
    client = make_client(sim, got, fmt)
    names, subclasses = summary_counts(CAPTURED / name.replace(".esl", ".summary"))
    sim.replay(CAPTURED / name, segment=1000)
    assert got.wait_for(lambda: len(got.events) >= sum(names.values()))
    gevent.sleep(0.1)
    events = [e for e in got.events if e.get("Core-UUID") != sim.core_uuid]  # drop the sim's own heartbeats
    assert Counter(e["Event-Name"] for e in events) == names
    assert Counter(e["Event-Subclass"] for e in events if e["Event-Name"] == "CUSTOM") == subclasses
    assert not client.stats.parse_errors
    client.stop()


def test_subscription_and_resync_after_restart(sim):  # noqa: F811
    got = Collector()
    client = make_client(sim, got)
    assert f"event json {' '.join(SUBSCRIBED_EVENTS)}" in sim.commands
    old_core = sim.core_uuid
    row = {"uuid": "5b3a5e2c-0000-4000-8000-000000000001", "direction": "inbound", "call_uuid": "x"}
    sim.set_channels_snapshot([row])
    sim.restart(new_core_uuid=True)
    assert got.wait_for(lambda: len(got.snapshots) == 2)
    assert got.snapshots[-1] == [row]
    assert client.stats.reconnects >= 1 and client.connected
    assert sim.commands.count(f"event json {' '.join(SUBSCRIBED_EVENTS)}") == 2
    sim.play_calls(1, "bridged", rate=0, speed=100)
    assert got.wait_for(lambda: any(e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE" for e in got.events))
    assert {e["Core-UUID"] for e in got.events if e["Event-Name"] != "HEARTBEAT"} == {sim.core_uuid} != {old_core}
    client.stop()


def test_burst_while_consumer_paused_loses_nothing(sim, tmp_path):  # noqa: F811
    got = Collector()
    gate = gevent.event.Event()
    seen = []

    def slow(node, event):
        gate.wait()
        seen.append(event["Event-Sequence"])

    client = make_client(sim, got, "plain", queue_size=500, spill_dir=str(tmp_path), heartbeat_interval=30)
    client.consumer = slow
    sent = sim.blast(10_000, "bridged=1", pool_calls=1200)  # 9 subscribed events per call: no repeats
    assert sent == 10_000
    assert got.wait_for(lambda: client.stats.overflows > 0)
    assert got.wait_for(lambda: len(client.queue) >= 10_000 - 1)
    gate.set()
    assert got.wait_for(lambda: len(seen) >= 10_000, timeout=30)
    gevent.sleep(0.2)
    blasted = [s for s in seen if int(s) > 0]
    assert len(set(blasted)) == len(blasted) >= 10_000  # nothing lost, nothing twice
    assert blasted == sorted(blasted, key=int)  # in order, through memory and spill file
    assert client.stats.overflows >= 10_000 - 500 - 1
    assert client.stats.queue_depth == 0
    client.stop()


def test_heartbeat_silence_reconnects(sim):  # noqa: F811
    got = Collector()
    client = make_client(sim, got)
    sim.inject(faults.stall())
    assert got.wait_for(lambda: client.stats.dead_links == 1, timeout=5)
    assert got.wait_for(lambda: len(got.snapshots) == 2 and client.connected, timeout=5)
    client.stop()


def test_cut_mid_frame_reconnects(sim):  # noqa: F811
    got = Collector()
    client = make_client(sim, got)
    sim.inject(faults.cut_mid_frame())
    assert got.wait_for(lambda: len(got.snapshots) == 2 and client.connected)
    assert client.stats.parse_errors["truncated"] == 1
    client.stop()


@pytest.mark.parametrize("fault,counter,kind", [
    (faults.event_frame_raw("text/event-json", b'{"Event-Name": "CHANNEL_CREATE", oops'), "parse_errors", "bad_json"),
    (faults.event_frame_raw("text/event-json", b'{"Event-Name":"CHANNEL_CREATE","x":"\xff"}'), "parse_errors",
     "invalid_utf8"),
    (faults.event_frame_raw("text/event-plain", b"Event-Name: CHANNEL_CREATE\nx: \xff\n\n"), "parse_errors",
     "invalid_utf8"),
    (faults.event_frame_raw("text/event-json", b"", declared_length=str(5 * 1024 * 1024)), "parse_errors",
     "oversized_content_length"),
    (faults.garbage(), "parse_errors", "garbage_line"),
    (faults.raw(b"Content-Type: command/reply\nReply-Text: +OK stray\n\n"), "parse_errors", "unexpected_reply"),
    (faults.raw(b"Content-Type: text/unknown\n\n"), "parse_errors", "unknown_content_type"),
    (faults.log_data(), "frames_ignored", "log/data"),
    (faults.disconnect_notice(), "frames_ignored", "text/disconnect-notice"),
    (faults.raw(b"Content-Type: text/rude-rejection\nContent-Length: 4\n\nbye\n"), "frames_ignored",
     "text/rude-rejection"),
])
def test_bad_input_counted_connection_kept(sim, fault, counter, kind):  # noqa: F811
    got = Collector()
    client = make_client(sim, got)
    sim.inject(fault)
    if kind == "oversized_content_length":
        sim.inject(faults.raw(b"x" * (5 * 1024 * 1024)))
    sim.play_calls(1, "reject", rate=0, speed=100)
    assert got.wait_for(lambda: any(e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE" for e in got.events))
    assert getattr(client.stats, counter)[kind] >= 1
    assert client.stats.reconnects == 0 and client.connected
    client.stop()


def _hangups(got: Collector) -> set[str]:
    return {e["Unique-ID"] for e in got.events if e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE"}


@pytest.mark.parametrize("fmt", ["json", "plain"])
@pytest.mark.parametrize("declared,kind", [
    ("-1", "bad_content_length"),
    ("abc", "bad_content_length"),
    ("", "bad_content_length"),
    ("99999999999", "oversized_content_length"),
    (str(4 * 1024 * 1024 + 1), "oversized_content_length"),  # over the limit, the body never sent
])
def test_framing_error_reconnects_and_later_events_land(sim, fmt, declared, kind):  # noqa: F811
    got = Collector()
    client = make_client(sim, got, fmt)
    sim.play_calls(2, "reject", rate=0, speed=100)
    assert got.wait_for(lambda: len(_hangups(got)) == 2)
    sim.inject(faults.event_frame_raw(f"text/event-{fmt}", b"Event-Name: HEARTBEAT\n\n", declared_length=declared))
    sim.play_calls(3, "reject", rate=0, speed=100)  # right behind the lie: in the bytes the stream lost
    assert got.wait_for(lambda: client.stats.streams_lost[kind] == 1 and len(got.snapshots) == 2 and client.connected)
    assert client.stats.reconnects == 1
    before = _hangups(got)
    sim.play_calls(5, "reject", rate=0, speed=100)
    assert got.wait_for(lambda: len(_hangups(got) - before) == 5), "events after the reconnect were lost"
    assert client.stats.streams_lost[kind] == 1 and client.stats.reconnects == 1 and client.connected
    client.stop()


def test_liveness_is_whole_frames_not_bytes(sim):  # noqa: F811
    """A frame that declares the largest allowed body and then trickles bytes: data arrives all the
    time, but no whole frame (no HEARTBEAT) for two intervals means the link is dead."""
    got = Collector()
    client = make_client(sim, got)
    sim.inject(faults.event_frame_raw("text/event-json", b"", declared_length=str(4 * 1024 * 1024)))
    sim.inject(faults.stall())  # the simulator's own frames stop; only the trickle below flows
    session = sim._subscribed()[0]
    with gevent.Timeout(10, False):
        while client.stats.dead_links == 0:
            session.sock.sendall(b"x")
            gevent.sleep(0.05)
    assert client.stats.dead_links == 1
    assert got.wait_for(lambda: len(got.snapshots) == 2 and client.connected)
    sim.play_calls(2, "reject", rate=0, speed=100)
    assert got.wait_for(lambda: len(_hangups(got)) == 2)
    client.stop()


def test_api_and_bgapi_from_other_greenlets_while_events_flow(sim):  # noqa: F811
    got = Collector()
    client = make_client(sim, got)
    sim.play_calls(20, "bridged=1", rate=200, speed=20, wait=False)
    results = gevent.joinall([gevent.spawn(client.api, "status", 2) for _ in range(10)]
                             + [gevent.spawn(client.bgapi, "status", 2)], raise_error=True)
    assert all("is ready" in g.value for g in results[:10])
    assert len(results[-1].value) == 36
    assert client.api("nosuchcommand", 2).startswith("-ERR")
    sim.wait_idle(10)
    assert got.wait_for(lambda: client.stats.events_in["CHANNEL_HANGUP_COMPLETE"] == 40)
    sim.inject(faults.stall(1.5))
    with pytest.raises(TimeoutError):
        client.api("status", timeout=0.3)
    client.stop()
    with pytest.raises(EslError):
        client.api("status", 1)


def test_consumer_exception_is_counted(sim):  # noqa: F811
    got = Collector()
    client = make_client(sim, got)

    def broken(node, event):
        raise RuntimeError("boom")

    client.consumer = broken
    sim.play_calls(1, "reject", rate=0, speed=100)
    assert got.wait_for(lambda: client.stats.consumer_errors >= 3)
    assert client.connected
    client.stop()


def test_wrong_password_exits_78(sim, tmp_path):  # noqa: F811
    secret = tmp_path / "pw"
    secret.write_text("not-the-password\n")
    proc = gevent.subprocess.Popen(
        [sys.executable, "-m", "eslbridge.esl", "--port", str(sim.port), "--password-file", str(secret),
         "--seconds", "20"],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 78, err
    assert b"refused the password" in err
    assert b"not-the-password" not in out + err
    assert "auth ********" in sim.commands


def test_rude_rejection_retries_without_exiting():
    from eslbridge.sim.server import Simulator

    rude = Simulator(PASSWORD, rude=True)
    rude.start()
    got = Collector()
    from eslbridge.esl.inbound import InboundClient

    client = InboundClient(rude.host, rude.port, PASSWORD, "fs1", "json", got, got.snapshot,
                           backoff_min=0.05, backoff_max=0.1, command_timeout=1)
    client.start()
    assert got.wait_for(lambda: client.stats.reconnects >= 2)
    assert client.stats.frames_ignored["text/rude-rejection"] >= 2 and client.error is None
    client.stop()
    rude.stop()


def replay_public_streams(sim, *corrupted):  # noqa: F811
    """Stats after the given streams and then the fsock capture (stray typed prefix) were replayed raw."""
    got = Collector()
    client = make_client(sim, got, "plain")
    for stream in corrupted:
        sim.replay(stream, mode="raw")
    sim.replay(PUBLIC / "cgrates-fsock__stream__1.stream", mode="raw", segment=1460)
    assert got.wait_for(lambda: client.stats.events_in["CHANNEL_DESTROY"] == 1)
    assert client.connected and client.stats.reconnects == 0
    client.stop()
    return client.stats


def test_public_stream_replay_survives(sim):  # noqa: F811
    stats = replay_public_streams(sim)
    assert stats.events_in["CHANNEL_PARK"] == 1 and stats.parse_errors["stray_prefix"] == 1


def test_corrupted_public_stream_replay_survives(sim):  # noqa: F811
    stats = replay_public_streams(sim, shared_public("switchio__stream__2.stream"))
    assert stats.events_in["CHANNEL_PARK"] == 2 and stats.parse_errors["no_event_name"] == 1


def test_debug_lines_show_the_command_never_its_arguments() -> None:
    from eslbridge.esl.inbound import command_summary

    assert command_summary("auth ClueCon") == "auth"
    assert command_summary("api xml_flush_cache id 1000 example.org") == "api xml_flush_cache"
    assert command_summary("bgapi originate sofia/gateway/x/+15551234567 &park") == "bgapi originate"
    assert command_summary("event json CHANNEL_CREATE CHANNEL_HANGUP") == "event json"
    assert command_summary("") == ""


def test_a_show_channels_reply_over_the_event_limit_arrives_whole(sim):  # noqa: F811
    """A busy node's `show channels` (~300 bytes a row: 30 MB at 100,000 channels) exceeds the 4 MiB
    an event may have; as the reply to our own command it is read whole, and the events behind it too."""
    got = Collector()
    client = make_client(sim, got)
    rows = [{"uuid": f"5b3a5e2c-0000-4000-8000-{n:012d}", "direction": "inbound", "call_uuid": f"call-{n}",
             "name": f"sofia/internal/{n}@198.51.100.7", "created_epoch": "1795299200", "callstate": "ACTIVE",
             "read_codec": "PCMU", "application": "bridge", "application_data": "x" * 180} for n in range(20_000)]
    sim.set_channels_snapshot(rows)
    assert len(json.dumps({"row_count": len(rows), "rows": rows})) > 4 * 1024 * 1024
    assert client.request_resync()
    assert got.wait_for(lambda: len(got.snapshots) == 2, 30), "the big reply never arrived"
    assert got.snapshots[-1] == rows
    sim.play_calls(2, "reject", rate=0, speed=100)
    assert got.wait_for(lambda: len(_hangups(got)) == 2)
    assert not client.stats.streams_lost and client.stats.reconnects == 0 and client.connected
    client.stop()


@pytest.mark.parametrize("content_type", ["api/response", "text/event-json"])
def test_a_frame_over_the_event_limit_that_no_command_asked_for_is_refused(sim, content_type):  # noqa: F811
    """The larger limit is for the reply to a command we sent: an unsolicited api/response or an
    event of 5 MiB is counted and discarded (the connection kept when its body really comes)."""
    got = Collector()
    client = make_client(sim, got)
    body = b"x" * (5 * 1024 * 1024)
    sim.inject(faults.raw(f"Content-Type: {content_type}\nContent-Length: {len(body)}\n\n".encode() + body))
    sim.play_calls(2, "reject", rate=0, speed=100)
    assert got.wait_for(lambda: len(_hangups(got)) == 2), "events behind the discarded frame were lost"
    assert client.stats.parse_errors["oversized_content_length"] == 1 and client.stats.reconnects == 0
    client.stop()
