"""Realistic calls for the simulator, built from the real captures.

Captured: bridged (bridge-answer), busy (bridge-busy), reject, tone, auth_call, register. Not captured,
so derived from the closest capture plus what FreeSWITCH documents:

* no_answer: bridge-busy with the B-leg timing out after call_timeout (8 s): Hangup-Cause NO_ANSWER
  (Q.850 19), SIP 480 to the caller;
* cancel: bridge-busy with the caller sending CANCEL while B rings: ORIGINATOR_CANCEL (Q.850 487);
* originate: `bgapi originate` of one outbound leg: bridge-answer's B-leg alone, without the headers
  that point at an A-leg (API-originated legs have no originator);
* blind_transfer: bridge-answer where B transfers A (REFER): B hangs up, A is bridged to a new leg C
  (a copy of B with a fresh UUID), and A's later events carry variable_transfer_history.
"""

from __future__ import annotations

import json
import random
import re
import time
from dataclasses import dataclass

from eslbridge.sim.templates import Ctx, EventTemplate, Pairs, Scenario, capture_bytes, load_scenario

CAPTURE_OF = {
    "bridged": "bridge-answer", "busy": "bridge-busy", "reject": "reject", "tone": "tone",
    "auth_call": "auth-call", "register": "register",
    "no_answer": "bridge-busy", "cancel": "bridge-busy",
    "originate": "bridge-answer", "blind_transfer": "bridge-answer",
}
SCENARIOS = tuple(CAPTURE_OF)
_C_LEG_EVENTS = (
    "CHANNEL_CREATE", "CHANNEL_ORIGINATE", "CHANNEL_ANSWER", "CHANNEL_BRIDGE", "CHANNEL_UNBRIDGE", "CHANNEL_OUTGOING",
    "CHANNEL_PROGRESS", "CALL_UPDATE", "CHANNEL_HANGUP", "CHANNEL_HANGUP_COMPLETE", "CHANNEL_DESTROY", "CHANNEL_STATE",
    "CHANNEL_CALLSTATE", "CODEC",
)
_END_KEYS = re.compile(r"^(Event-Date-(Local|GMT|Timestamp)|.*Hangup-Time|variable_end_(u?epoch|stamp))$")


def legs(capture: str) -> list[str]:
    truth = json.loads(capture_bytes(f"{capture}.truth.json"))
    return [leg["uuid"] for call in truth.get("calls", []) for leg in call["legs"]]


def _shift_pairs(pairs: Pairs, seconds: int) -> Pairs:
    """Move the event's own date and hangup times `seconds` later."""
    out = []
    for name, value in pairs:
        if isinstance(value, str) and _END_KEYS.match(name):
            value = _shift_text(value, seconds)
        out.append((name, value))
    return out


def _shift_text(value: str, seconds: int) -> str:
    if value.isdigit() and len(value) == 16:
        return str(int(value) + seconds * 1_000_000)
    if value.isdigit() and len(value) == 10:
        return str(int(value) + seconds)
    for fmt in ("%Y-%m-%d %H:%M:%S", "%a, %d %b %Y %H:%M:%S GMT"):
        try:
            t = time.mktime(time.strptime(value, fmt)) - time.timezone + seconds
        except ValueError:
            continue
        return time.strftime(fmt, time.gmtime(t))
    return value


def _replace_values(pairs: Pairs, mapping: dict[str, dict[str, str]]) -> Pairs:
    """mapping: header name (or '*') -> {old value: new value}."""
    out = []
    for name, value in pairs:
        table = mapping.get(name) or mapping.get("*") or {}
        if isinstance(value, str) and value in table:
            value = table[value]
        out.append((name, value))
    return out


def _retime(tpl: EventTemplate, pairs: Pairs, seconds: int) -> EventTemplate:
    shifted = _shift_pairs(pairs, seconds)
    return EventTemplate(tpl.name, tpl.subclass, None, tpl.offset_us + seconds * 1_000_000, shifted)


def _failed_ringing(scn: Scenario, cause: str, q850: str, sip: str, delay: int, a_disposition: str) -> Scenario:
    """bridge-busy turned into another unanswered outcome, its hangup `delay` seconds later."""
    mapping = {
        "*": {"USER_BUSY": cause},
        "variable_hangup_cause_q850": {"17": q850}, "variable_sip_term_cause": {"17": q850},
        "variable_sip_term_status": {"486": sip}, "variable_proto_specific_hangup_cause": {"sip:486": f"sip:{sip}"},
        "variable_last_bridge_proto_specific_hangup_cause": {"sip:486": f"sip:{sip}"},
        "variable_sip_hangup_disposition": {"send_refuse": a_disposition},
    }
    for fmt, templates in scn.events.items():
        out, hung = [], False
        for tpl in templates:
            hung = hung or tpl.name in ("CHANNEL_HANGUP", "CHANNEL_HANGUP_COMPLETE")
            pairs = _replace_values(tpl.pairs, mapping)
            out.append(_retime(tpl, pairs, delay) if hung else EventTemplate(
                tpl.name, tpl.subclass, None, tpl.offset_us, pairs))
        scn.events[fmt] = out
    return scn


def _originate(scn: Scenario) -> Scenario:
    a_leg, b_leg = legs("bridge-answer")
    for fmt, templates in scn.events.items():
        out = []
        for tpl in templates:
            d = dict(tpl.pairs)
            if d.get("Unique-ID") != b_leg or tpl.name in ("CHANNEL_BRIDGE", "CHANNEL_UNBRIDGE"):
                continue
            pairs = [(k, v) for k, v in tpl.pairs
                     if not k.startswith("Other-Leg-") and not (isinstance(v, str) and a_leg in v)]
            out.append(EventTemplate(tpl.name, tpl.subclass, None, tpl.offset_us, pairs))
        scn.events[fmt] = out
    return scn


def _blind_transfer(scn: Scenario) -> Scenario:
    a_leg, b_leg = legs("bridge-answer")
    c_leg = "00000000-0000-4000-8000-00000000c1e9"  # becomes a fresh UUID like every other
    delay = 2
    for fmt, templates in scn.events.items():
        unbridged_at = next(t.offset_us for t in templates if t.name == "CHANNEL_UNBRIDGE")
        out: list[EventTemplate] = []
        for tpl in templates:
            uid = dict(tpl.pairs).get("Unique-ID")
            before = tpl.offset_us < unbridged_at
            if uid == b_leg:
                out.append(tpl)  # B's own life: it ends when its REFER is accepted
                if tpl.name in _C_LEG_EVENTS:
                    c_pairs = [(k, v.replace(b_leg, c_leg) if isinstance(v, str) else v) for k, v in tpl.pairs]
                    out.append(_retime(tpl, c_pairs, delay))
                continue
            if uid == a_leg and not before:
                history = f"{(scn.base_us + tpl.offset_us) // 1_000_000}:{b_leg}:bl_xfer:transfer-target/default/XML"
                pairs = [(k, v.replace(b_leg, c_leg) if isinstance(v, str) else v) for k, v in tpl.pairs]
                pairs.append(("variable_transfer_history", history))
                out.append(_retime(tpl, pairs, delay))
                continue
            out.append(tpl)
            if uid == a_leg and tpl.name == "CHANNEL_BRIDGE":  # A is bridged again, to C
                c_pairs = [(k, v.replace(b_leg, c_leg) if isinstance(v, str) else v) for k, v in tpl.pairs]
                rebridge = _retime(tpl, c_pairs, delay)
                rebridge.offset_us = unbridged_at + delay * 1_000_000
                out.append(rebridge)
        out.sort(key=lambda t: t.offset_us)
        scn.events[fmt] = out
    return scn


_DERIVE = {
    "no_answer": lambda s: _failed_ringing(s, "NO_ANSWER", "19", "480", 8, "send_refuse"),
    "cancel": lambda s: _failed_ringing(s, "ORIGINATOR_CANCEL", "487", "487", 3, "recv_cancel"),
    "originate": _originate,
    "blind_transfer": _blind_transfer,
}

_cache: dict[str, Scenario] = {}


def scenario(name: str) -> Scenario:
    """A compiled scenario by its simulator name (see SCENARIOS)."""
    if name not in CAPTURE_OF:
        raise ValueError(f"unknown call scenario {name!r}; known: {', '.join(SCENARIOS)}")
    if name not in _cache:
        scn = load_scenario(CAPTURE_OF[name])
        scn.name = name
        derive = _DERIVE.get(name)
        _cache[name] = (derive(scn) if derive else scn).compile()
    return _cache[name]


def heartbeat_template() -> Scenario:
    scn = load_scenario("tone", keep=lambda pairs: dict(pairs).get("Event-Name") == "HEARTBEAT")
    scn.base_us = scn.events["json"][0].offset_us + scn.base_us
    for templates in scn.events.values():
        for tpl in templates:
            tpl.offset_us = 0
    return scn.compile()


def parse_mix(text: str) -> dict[str, float]:
    """'bridged=5,busy=1' -> weights; raises ValueError on unknown names or bad numbers."""
    mix: dict[str, float] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, _, weight = item.partition("=")
        if name not in CAPTURE_OF:
            raise ValueError(f"unknown call scenario {name!r}; known: {', '.join(SCENARIOS)}")
        mix[name] = float(weight or 1)
        if mix[name] < 0:
            raise ValueError(f"negative weight for {name}")
    if not mix or not sum(mix.values()):
        raise ValueError("empty call mix")
    return mix


@dataclass
class PlannedEvent:
    at_us: int  # absolute time the event is due
    template_json: EventTemplate
    template_plain: EventTemplate
    ctx: Ctx
    last: bool = False  # the call's last event: the scheduler counts the call as done after it

    @property
    def name(self) -> str:
        return self.template_json.name

    @property
    def subclass(self) -> str:
        return self.template_json.subclass

    def render(self, fmt: str) -> bytes:
        return (self.template_json if fmt == "json" else self.template_plain).render(self.ctx, fmt)


def plan_call(name: str, start_us: int, core: str, seq: list[int], speed: float = 1.0) -> list[PlannedEvent]:
    """The events of one new call (fresh UUIDs and Call-IDs), due from `start_us` on."""
    scn = scenario(name)
    ctx = Ctx(base_us=start_us, core=core, seq=seq)
    planned = [
        PlannedEvent(start_us + int(j.offset_us / speed), j, p, ctx)
        for j, p in zip(scn.events["json"], scn.events["plain"], strict=True)
    ]
    max(reversed(planned), key=lambda ev: ev.at_us).last = True
    return planned


def choose(mix: dict[str, float], rng: random.Random) -> str:
    names = list(mix)
    return rng.choices(names, weights=[mix[n] for n in names])[0]

