"""Events/s through the correlator alone, for a generated stream of real calls.

The stream reuses the captured FreeSWITCH 1.10.12 events (json ALL: every event type a real
subscription sees) as templates; each call gets fresh UUIDs, its own SIP Call-ID, From user and
SDP, and its own Event-Sequence range. In-process, no sockets, no parsing: the input is the flat
header dicts the ESL layer produces.

    python -m bench.correlate [--calls N] [--concurrent K] [--format json|minimal.json]
"""

from __future__ import annotations

import argparse
import json
import time
import uuid as uuidlib
from pathlib import Path

from eslbridge.calls.correlator import Correlator

CAPTURED = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "captured"
SCENARIOS = ("bridge-answer", "bridge-busy", "tone", "reject")
TARGET_EVENTS_PER_S = 100_000  # DESIGN section 11: ESL intake + correlation, one core


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


class CallFactory:
    """Fresh copies of captured calls: the values that differ per call are rewritten."""

    def __init__(self, fmt: str = "json") -> None:
        self.templates = [_events(name, fmt) for name in SCENARIOS]
        self.seq = 0

    def call(self, index: int) -> list[dict[str, str]]:
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
                elif key in ("variable_sip_call_id", "variable_switch_r_sdp", "variable_sip_from_uri",
                             "variable_sip_full_from", "variable_originated_legs", "variable_originate_causes"):
                    for old, fresh in mapping.items():
                        value = value.replace(old, fresh)
                    value = value.replace("sipp", user).replace("53655765", str(53655765 + index))
                    if key == "variable_sip_call_id":
                        value = f"{index}-{value}"
                new[key] = value
            new["Event-Sequence"] = str(base + int(event["Event-Sequence"]) % 1000)
            out.append(new)
        return out


def interleave(factory: CallFactory, calls: int, concurrent: int) -> list[dict[str, str]]:
    """``calls`` calls, ``concurrent`` at a time, their events round-robin interleaved."""
    stream: list[dict[str, str]] = []
    for start in range(0, calls, concurrent):
        batch = [factory.call(i) for i in range(start, min(start + concurrent, calls))]
        longest = max(len(events) for events in batch)
        for position in range(longest):
            stream.extend(events[position] for events in batch if position < len(events))
    return stream


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--concurrent", type=int, default=500)
    parser.add_argument("--format", default="json", choices=("json", "minimal.json"))
    args = parser.parse_args()
    stream = interleave(CallFactory(args.format), args.calls, args.concurrent)
    users = {("u1", "127.0.0.1"): "user-1"}
    correlator = Correlator("bench", lambda user, realm: users.get((user, realm)))
    feed = correlator.feed
    finished = 0
    started = time.perf_counter()
    for event in stream:
        for update in feed(event):
            finished += update.stage == 3
    elapsed = time.perf_counter() - started
    rate = len(stream) / elapsed
    print(f"format={args.format} events={len(stream)} calls={args.calls} finished={finished} "
          f"active_left={correlator.active_calls}")
    print(f"correlator alone: {rate:,.0f} events/s, {finished / elapsed:,.0f} calls/s "
          f"(DESIGN target for intake + correlation: >= {TARGET_EVENTS_PER_S:,} events/s)")


if __name__ == "__main__":
    main()
