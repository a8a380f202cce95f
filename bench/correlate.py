"""Events/s through the correlator alone, for generated streams of real calls (DESIGN section 11).

The streams reuse the captured FreeSWITCH 1.10.12 calls as templates: "json" (ALL: every channel
event a full subscription sees) and "minimal.json" (the daemon's subscription: fewer events, each
carrying every channel variable). Each call gets fresh UUIDs, its own SIP Call-ID, From user and SDP,
its own Event-Sequence range, and its times moved on (each batch of concurrent calls starts
``BATCH_SPACING_US`` after the previous one), so the node clock advances and finished legs' tombstones
expire as they do in production. In-process, no sockets, no parsing: the input is the flat header
dicts the ESL layer produces (each channel event's own EVENT_HEADERS, other events' READ_HEADERS, as
intake decodes them; --every-header: all of them). Both streams are measured in one run by default;
each is fed ``--repeat`` times to a fresh correlator and the best run counts (the machine is shared:
CPU time is printed beside wall time).

    python -m bench.correlate [--calls N] [--concurrent K] [--repeat R] [--format json|minimal.json|both]
                              [--every-header]
"""

from __future__ import annotations

import argparse
import json
import time
import uuid as uuidlib
from pathlib import Path

from eslbridge.calls.correlator import Correlator
from eslbridge.esl.headers import EVENT_HEADERS, READ_HEADERS

CAPTURED = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "captured"
SCENARIOS = ("bridge-answer", "bridge-busy", "tone", "reject")
FORMATS = ("json", "minimal.json")
TARGET_EVENTS_PER_S = 50_000  # DESIGN section 11: ESL intake + correlation, one core
BATCH_SPACING_US = 120_000_000
# Per-call values rewritten in every copy (the UUIDs are mapped wherever they appear).
_PER_CALL = ("variable_sip_call_id", "variable_switch_r_sdp", "variable_sip_from_uri", "variable_sip_full_from",
             "variable_originated_legs", "variable_originate_causes")


def _events(scenario: str, fmt: str) -> list[dict[str, str]]:
    """Channel events of a capture (json bodies only: enough for templates)."""
    data = (CAPTURED / f"{scenario}.{fmt}.esl").read_bytes()
    out, pos = [], 0
    while (end := data.find(b"\n\n", pos)) >= 0:
        head = dict(line.split(": ", 1) for line in data[pos:end].decode().split("\n") if ": " in line)
        pos = end + 2
        if "Content-Length" in head:
            body = data[pos:pos + int(head["Content-Length"])]
            pos += int(head["Content-Length"])
            if head.get("Content-Type") == "text/event-json":
                out.append(json.loads(body))
    return [e for e in out if e.get("Event-Name", "").startswith("CHANNEL_")]


def _is_time(key: str, value: str) -> bool:
    """A microsecond epoch header that is set (FreeSWITCH writes 0 for 'not yet')."""
    return (key.endswith("-Time") or key == "Event-Date-Timestamp") and value.isdigit() and value != "0"


class CallFactory:
    """Fresh copies of captured calls: the values that differ per call are rewritten."""

    def __init__(self, fmt: str = "json") -> None:
        self.templates = [_events(name, fmt) for name in SCENARIOS]
        self.seq = 0

    def call(self, index: int, offset_us: int = 0) -> list[dict[str, str]]:
        """Call number ``index``, its event times moved ``offset_us`` later."""
        template = self.templates[index % len(self.templates)]
        legs = {e["Unique-ID"] for e in template}
        mapping = {leg: str(uuidlib.uuid4()) for leg in legs}
        user = f"u{index}"
        base = self.seq
        self.seq += 1000
        out = []
        for event in template:
            new = {}
            for key, value in event.items():
                if value in mapping:
                    value = mapping[value]
                elif key in _PER_CALL:
                    for old, fresh in mapping.items():
                        value = value.replace(old, fresh)
                    value = value.replace("sipp", user).replace("53655765", str(53655765 + index))
                    if key == "variable_sip_call_id":
                        value = f"{index}-{value}"
                elif offset_us and _is_time(key, value):
                    value = str(int(value) + offset_us)
                new[key] = value
            new["Event-Sequence"] = str(base + int(event["Event-Sequence"]) % 1000)
            out.append(new)
        return out


def interleave(factory: CallFactory, calls: int, concurrent: int) -> list[dict[str, str]]:
    """``calls`` calls, ``concurrent`` at a time, their events round-robin interleaved."""
    stream: list[dict[str, str]] = []
    for start in range(0, calls, concurrent):
        offset = start // concurrent * BATCH_SPACING_US
        batch = [factory.call(i, offset) for i in range(start, min(start + concurrent, calls))]
        longest = max(len(events) for events in batch)
        for position in range(longest):
            stream.extend(events[position] for events in batch if position < len(events))
    return stream


def measure(stream: list[dict[str, str]], repeat: int) -> tuple[float, float, int, int]:
    """Best wall and CPU seconds over ``repeat`` fresh correlators; finished records; calls left open."""
    users = {("u1", "127.0.0.1"): "user-1"}
    best_wall = best_cpu = float("inf")
    finished = active = 0
    for _ in range(repeat):
        correlator = Correlator("bench", lambda user, realm: users.get((user, realm)))
        feed = correlator.feed
        finished = 0
        wall, cpu = time.perf_counter(), time.process_time()
        for event in stream:
            for update in feed(event):
                finished += update.stage == 3
        best_cpu = min(best_cpu, time.process_time() - cpu)
        best_wall = min(best_wall, time.perf_counter() - wall)
        active = correlator.active_calls
    return best_wall, best_cpu, finished, active


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--concurrent", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--format", default="both", choices=(*FORMATS, "both"))
    parser.add_argument("--every-header", action="store_true",
                        help="feed every header (intake hands the correlator only those it reads)")
    args = parser.parse_args()
    print(f"DESIGN target (section 11): ESL intake + correlation >= {TARGET_EVENTS_PER_S:,} events/s on one core; "
          f"{args.calls:,} calls, {args.concurrent} concurrent, best of {args.repeat}")
    result: dict = {"bench": "correlate"}
    for fmt in FORMATS if args.format == "both" else (args.format,):
        stream = interleave(CallFactory(fmt), args.calls, args.concurrent)
        if not args.every_header:
            stream = [{name: value for name, value in event.items() if name in own}
                      for event in stream for own in (EVENT_HEADERS.get(event.get("Event-Name"), READ_HEADERS),)]
        wall, cpu, finished, active = measure(stream, args.repeat)
        label = "json (ALL)" if fmt == "json" else fmt
        print(f"{label:13} events={len(stream):,} finished={finished:,} active_left={active}")
        for clock, seconds in (("wall", wall), ("cpu", cpu)):
            rate = len(stream) / seconds
            print(f"  {clock:4} {rate:11,.0f} events/s {finished / seconds:9,.0f} calls/s  "
                  f"{rate / TARGET_EVENTS_PER_S:5.2f}x target")
        result["all_eps" if fmt == "json" else "minimal_eps"] = round(len(stream) / wall)
    print("bench-result: " + json.dumps(result))


if __name__ == "__main__":
    main()
