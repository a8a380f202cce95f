"""The simulator's generated calls look like the real captures, and it filters like FreeSWITCH."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eslbridge.esl.events import parse_plain_event
from eslbridge.esl.framing import parse_stream
from eslbridge.sim import calls
from eslbridge.sim.fsformat import json_body, plain_body
from eslbridge.sim.templates import parse_pairs_plain, render_pairs
from tests.esl_fixtures import Collector, make_client, sim  # noqa: F401
from tests.paths import CAPTURED


def captured_events(name: str, fmt: str) -> list[bytes]:
    return [f.body for f in parse_stream((CAPTURED / f"{name}.{fmt}.esl").read_bytes())
            if f.content_type == f"text/event-{fmt}"]


def test_fs_spelling_matches_captures_byte_for_byte():
    bodies = captured_events("bridge-answer", "json")
    assert all(json_body(json.loads(b, object_pairs_hook=list)) == b for b in bodies)
    plain = captured_events("bridge-answer", "plain")
    assert plain and all(render_pairs(parse_pairs_plain(b), "plain").encode() == b for b in plain)
    simple = {"Event-Name": "API", "API-Command-Argument": "%a, %d|x y@z:1", "_body": "ok"}
    assert parse_plain_event(plain_body(simple)) == simple


@pytest.mark.parametrize("scenario", ["bridged", "busy", "reject", "tone", "auth_call", "register"])
@pytest.mark.parametrize("fmt", ["json", "plain"])
def test_generated_call_has_captured_headers_in_order(scenario, fmt):
    capture = calls.CAPTURE_OF[scenario]
    real = [e for e in captured_events(capture, fmt) if b"HEARTBEAT" not in e[:40] and b"RE_SCHEDULE" not in e[:40]]
    planned = calls.plan_call(scenario, int(time.time() * 1e6), "11111111-2222-4333-8444-555555555555", [0])
    assert len(planned) == len(real)
    old_uuids = set(calls.legs(capture))
    for ev, body in zip(planned, real, strict=True):
        mine = ev.render(fmt)
        keys = (lambda b: [k for k, _ in json.loads(b, object_pairs_hook=list)]) if fmt == "json" else (
            lambda b: [line.split(": ", 1)[0] for line in b.split(b"\n\n")[0].decode().split("\n")])
        assert keys(mine) == keys(body)
        text = mine.decode()
        assert not any(u in text for u in old_uuids)  # fresh UUIDs everywhere
        assert "11111111-2222-4333-8444-555555555555" in text


def test_derived_scenarios_carry_documented_causes():
    def causes(name):
        ev = calls.plan_call(name, int(time.time() * 1e6), "c", [0])
        return [json.loads(e.render("json")) for e in ev if e.name == "CHANNEL_HANGUP_COMPLETE"]

    assert {e["Hangup-Cause"] for e in causes("no_answer")} == {"NO_ANSWER"}
    assert {e["Hangup-Cause"] for e in causes("cancel")} == {"ORIGINATOR_CANCEL"}
    orig = causes("originate")
    assert len(orig) == 1 and "variable_originator" not in orig[0] and orig[0]["Call-Direction"] == "outbound"
    xfer = causes("blind_transfer")
    assert len(xfer) == 3 and any("bl_xfer" in e.get("variable_transfer_history", "") for e in xfer)


def test_filtering_by_subscription(sim):  # noqa: F811
    got = Collector()
    client = make_client(sim, got, "plain", events=("CHANNEL_CREATE", "CUSTOM", "sofia::register"))
    sim.play_calls(2, "register=1,reject=1", rate=0, speed=100)
    sim.wait_idle(10)
    assert got.wait_for(lambda: len(got.events) >= 2)
    names = {(e["Event-Name"], e.get("Event-Subclass")) for e in got.events}
    assert names <= {("CHANNEL_CREATE", None), ("CUSTOM", "sofia::register")}
    client.stop()


def test_command_line_replay(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "eslbridge.sim", "--listen", "127.0.0.1:0", "--replay",
         str(CAPTURED / "tone.plain.esl"), "--exit-when-done", "--heartbeat", "60"],
        cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline().split(":")[-1])
        import socket

        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"auth ClueCon\n\nevent plain ALL\n\n")
            data = b""
            s.settimeout(5)
            while data.count(b"text/event-plain") < 34:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        expected = (CAPTURED / "tone.plain.esl").read_bytes()
        start = expected.index(b"Content-Length")
        events = data[data.index(b"Content-Length"):]
        assert expected[start:].startswith(events[: len(events)]) and events.count(b"text/event-plain") == 34
    finally:
        proc.wait(timeout=10)
    assert proc.returncode == 0
