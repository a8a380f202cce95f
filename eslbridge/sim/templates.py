"""Event templates taken from the real captures in tests/fixtures/captured.

The package carries gzip'd copies of the captures it plays (eslbridge/sim/captures/, made by
tools/pack_sim_captures.py, checked byte for byte against that copy by tests/test_sim_captures.py),
so the simulator, the demo and the benchmarks run from an installed eslbridge too.

Each captured scenario is loaded in both formats, each from its own capture (FreeSWITCH's json and
plain listeners do not always order a few headers the same way). Events keep their header names and
order; what must change per call is turned into slots: every UUID (a fresh one per call, the Core-UUID
becomes the simulator's), SIP Call-IDs, Event-Sequence, and every time (microsecond and second epochs,
local and RFC dates), which are shifted to the call's start. Rendering a call is then a join of
literal parts and slot values.
"""

from __future__ import annotations

import gzip
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from urllib.parse import unquote

from eslbridge.esl.framing import parse_stream
from eslbridge.sim.fsformat import fs_url_encode, json_body

PACKAGED = Path(__file__).resolve().parent / "captures"
SCENARIO_FILES = ("tone", "bridge-answer", "bridge-busy", "reject", "register", "auth-call")


def packaged_files(scenarios: tuple[str, ...]) -> list[str]:
    """The capture files (as named in tests/fixtures/captured) the simulator needs for these scenarios."""
    return [f"{name}.{kind}" for name in scenarios for kind in ("json.esl", "plain.esl", "truth.json")]


def capture_bytes(filename: str) -> bytes:
    """A captured file's bytes, as in tests/fixtures/captured/<filename>."""
    if filename.endswith(".esl"):
        return gzip.decompress((PACKAGED / f"{filename}.gz").read_bytes())
    return (PACKAGED / filename).read_bytes()
BACKGROUND = ("HEARTBEAT", "RE_SCHEDULE")

Pairs = list[tuple[str, object]]

_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_DAYS = "Mon|Tue|Wed|Thu|Fri|Sat|Sun"
_MONTHS = "Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec"
_SLOT_RE = re.compile(
    rf"(?P<uuid>{_UUID})"
    r"|(?P<callid>(?<![\w.-])\d+-\d+@127\.0\.0\.1)"
    rf"|(?P<rfc>(?:{_DAYS}), \d\d (?:{_MONTHS}) \d{{4}} \d\d:\d\d:\d\d (?:GMT|[+-]\d{{4}}))"
    r"|(?P<local>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)"
    r"|(?P<num>(?<!\d)\d{16}(?!\d)|(?<!\d)\d{10}(?!\d))"
)
_SENTINEL = "QQSLOT{}QQ"  # alphanumeric: survives both JSON escaping and URL encoding unchanged
_SENTINEL_RE = re.compile(r"QQSLOT(\d+)QQ")
_DAY = 86_400


@dataclass
class Ctx:
    """Per-call values for the slots."""

    base_us: int
    core: str
    uuids: dict[int, str] = field(default_factory=dict)
    callids: dict[int, str] = field(default_factory=dict)
    seq: list[int] = field(default_factory=lambda: [0])

    def uuid(self, i: int) -> str:
        if i not in self.uuids:
            self.uuids[i] = str(uuid.uuid4())
        return self.uuids[i]

    def callid(self, i: int) -> str:
        if i not in self.callids:
            self.callids[i] = f"{uuid.uuid4().hex[:12]}@127.0.0.1"
        return self.callids[i]


def _fmt_time(us: int, kind: str) -> str:
    t = time.gmtime(us // 1_000_000)
    if kind == "local":
        return time.strftime("%Y-%m-%d %H:%M:%S", t)
    if kind == "gmt":
        return time.strftime("%a, %d %b %Y %H:%M:%S GMT", t)
    return time.strftime("%a, %d %b %Y %H:%M:%S +0000", t)


def slot_value(slot: tuple, ctx: Ctx) -> str:
    kind = slot[0]
    if kind == "uuid":
        return ctx.uuid(slot[1])
    if kind == "core":
        return ctx.core
    if kind == "seq":
        ctx.seq[0] += 1
        return str(ctx.seq[0])
    if kind == "callid":
        return ctx.callid(slot[1])
    if kind == "us":
        return str(ctx.base_us + slot[1])
    if kind == "s":
        return str((ctx.base_us + slot[1]) // 1_000_000)
    return _fmt_time(ctx.base_us + slot[1], kind)


@dataclass
class EventTemplate:
    """One captured event, compiled for one format."""

    name: str
    subclass: str
    unique_id: int | None  # uuid slot of the channel, if any
    offset_us: int  # time since the scenario's first event
    pairs: Pairs  # decoded headers in capture order (plain: the body, if any, under "_body")
    parts: list = field(default_factory=list)  # literals (str) and slots (tuple)

    def render(self, ctx: Ctx, fmt: str) -> bytes:
        out = []
        for part in self.parts:
            if type(part) is str:
                out.append(part)
            else:
                value = slot_value(part, ctx)
                out.append(fs_url_encode(value) if fmt == "plain" and part[0] in ("local", "gmt", "rfc", "callid")
                           else value)
        return "".join(out).encode("utf-8")


def parse_pairs_plain(body: bytes) -> Pairs:
    head, _, rest = body.partition(b"\n\n")
    pairs: Pairs = []
    for line in head.decode("utf-8").split("\n"):
        name, _, value = line.partition(": ")
        pairs.append((name, unquote(value)))
    if rest:
        pairs.append(("_body", rest.decode("utf-8")))
    return pairs


def render_pairs(pairs: Pairs, fmt: str) -> str:
    if fmt == "json":
        return json_body(pairs).decode("utf-8")
    lines, body = [], ""
    for name, value in pairs:
        if name == "_body":
            body = value
        else:
            lines.append(f"{name}: {fs_url_encode(value)}\n")
    return "".join(lines) + "\n" + body


class _Compiler:
    """Turns the pairs of one scenario into parts, sharing slot numbers across its events."""

    def __init__(self, core: str, base_us: int) -> None:
        self.core, self.base_us = core, base_us
        self.uuids: dict[str, int] = {}
        self.callids: dict[str, int] = {}

    def _slot(self, m: re.Match) -> tuple | None:
        text = m.group(0)
        if m.group("uuid"):
            return ("core",) if text == self.core else ("uuid", self.uuids.setdefault(text, len(self.uuids)))
        if m.group("callid"):
            return ("callid", self.callids.setdefault(text, len(self.callids)))
        if m.group("num"):
            n = int(text)
            if len(text) == 16 and abs(n - self.base_us) < _DAY * 1_000_000:
                return ("us", n - self.base_us)
            if len(text) == 10 and abs(n * 1_000_000 - self.base_us) < _DAY * 1_000_000:
                return ("s", n * 1_000_000 - self.base_us)
            return None
        if m.group("local"):
            us = int(time.mktime(time.strptime(text, "%Y-%m-%d %H:%M:%S")) - time.timezone) * 1_000_000
            return ("local", us - self.base_us)
        fmt = "%a, %d %b %Y %H:%M:%S GMT" if text.endswith("GMT") else "%a, %d %b %Y %H:%M:%S +0000"
        us = int(time.mktime(time.strptime(text, fmt)) - time.timezone) * 1_000_000
        return ("gmt" if text.endswith("GMT") else "rfc", us - self.base_us)

    def compile(self, tpl: EventTemplate, fmt: str) -> None:
        slots: list[tuple] = []

        def sub(m: re.Match) -> str:
            slot = self._slot(m)
            if slot is None:
                return m.group(0)
            slots.append(slot)
            return _SENTINEL.format(len(slots) - 1)

        marked: Pairs = []
        for name, value in tpl.pairs:
            if name == "Event-Sequence":
                slots.append(("seq",))
                marked.append((name, _SENTINEL.format(len(slots) - 1)))
            elif isinstance(value, str):
                marked.append((name, _SLOT_RE.sub(sub, value)))
            else:
                marked.append((name, [_SLOT_RE.sub(sub, v) for v in value]))
        text = render_pairs(marked, fmt)
        pieces = _SENTINEL_RE.split(text)
        parts: list = []
        for i, piece in enumerate(pieces):
            if i % 2:
                parts.append(slots[int(piece)])
            elif piece:
                parts.append(piece)
        tpl.parts = parts
        uid = dict(tpl.pairs).get("Unique-ID")
        tpl.unique_id = self.uuids.get(uid) if isinstance(uid, str) else None


def _load_events(data: bytes, fmt: str) -> list[Pairs]:
    out = []
    for fr in parse_stream(data):
        if fr.content_type == f"text/event-{fmt}":
            out.append(json.loads(fr.body, object_pairs_hook=list) if fmt == "json" else parse_pairs_plain(fr.body))
    return out


def _new_template(pairs: Pairs, base_us: int) -> EventTemplate:
    d = dict(pairs)
    return EventTemplate(
        name=str(d.get("Event-Name", "")),
        subclass=str(d.get("Event-Subclass", "")),
        unique_id=None,
        offset_us=int(d.get("Event-Date-Timestamp", base_us)) - base_us,
        pairs=pairs,
    )


@dataclass
class Scenario:
    """The events of one kind of call, per format, compiled and ready to render."""

    name: str
    core: str
    base_us: int
    events: dict[str, list[EventTemplate]]  # fmt -> templates, in capture order

    def compile(self) -> Scenario:
        for fmt, templates in self.events.items():
            compiler = _Compiler(self.core, self.base_us)
            for tpl in templates:
                compiler.compile(tpl, fmt)
        return self


@cache
def captured(name: str) -> tuple[dict[str, list[Pairs]], str, int]:
    """The raw (uncompiled) pairs of a capture: ({fmt: [pairs]}, core uuid, first timestamp)."""
    events = {fmt: _load_events(capture_bytes(f"{name}.{fmt}.esl"), fmt) for fmt in ("json", "plain")}
    first = dict(events["json"][0])
    return events, str(first["Core-UUID"]), int(first["Event-Date-Timestamp"])


def load_scenario(name: str, keep=lambda pairs: dict(pairs).get("Event-Name") not in BACKGROUND) -> Scenario:
    events, core, base = captured(name)
    return Scenario(
        name=name,
        core=core,
        base_us=base,
        events={fmt: [_new_template(list(p), base) for p in evs if keep(p)] for fmt, evs in events.items()},
    )
