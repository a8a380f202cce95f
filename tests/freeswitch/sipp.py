"""sipp runs the repository's scenarios (tests/freeswitch/scenarios) and its message trace says what happened.

Every verdict of the FreeSWITCH tier starts from these facts (the final response to the INVITE, who
sent BYE, when), never from what eslbridge wrote. sipp runs with TZ=UTC so the trace's wall-clock
times compare with the database's timestamptz values directly (same host, same clock).
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from eslbridge.sim.localpg import free_port

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
SIPP = shutil.which("sipp") or "/usr/bin/sipp"
_SEPARATOR = re.compile(r"^-{20,} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)$", re.M)
_runs = itertools.count()


@dataclass(frozen=True)
class Message:
    at: datetime
    sent: bool  # by sipp
    first_line: str
    headers: dict[str, str]  # lower-cased names, first occurrence

    @property
    def code(self) -> int | None:
        return int(self.first_line.split()[1]) if self.first_line.startswith("SIP/2.0 ") else None

    @property
    def method(self) -> str:
        """The request's method, or for a response the method its CSeq names."""
        if self.code is None:
            return self.first_line.split()[0]
        return self.headers.get("cseq", "0 ?").split()[-1]


@dataclass
class Call:
    """One SIP dialog as sipp saw it (all messages with one Call-ID, in order)."""

    call_id: str
    messages: list[Message] = field(default_factory=list)

    def first(self, predicate) -> Message | None:
        return next((m for m in self.messages if predicate(m)), None)

    @property
    def invited_at(self) -> datetime | None:
        m = self.first(lambda m: m.code is None and m.method == "INVITE")
        return m.at if m else None

    @property
    def final(self) -> Message | None:
        """The final response to the dialog's opening request (INVITE, REGISTER), its last attempt."""
        opening = self.first(lambda m: m.code is None)
        method = opening.method if opening else "INVITE"
        finals = [m for m in self.messages if m.method == method and m.code and m.code >= 200]
        return finals[-1] if finals else None

    @property
    def final_code(self) -> int | None:
        return self.final.code if self.final else None

    @property
    def answered_at(self) -> datetime | None:
        return self.final.at if self.final_code == 200 else None

    @property
    def bye(self) -> Message | None:
        return self.first(lambda m: m.code is None and m.method == "BYE")

    @property
    def bye_from(self) -> str | None:
        if self.bye is None:
            return None
        return "sipp" if self.bye.sent else "freeswitch"

    @property
    def cancelled(self) -> bool:
        return self.first(lambda m: m.sent and m.code is None and m.method == "CANCEL") is not None

    @property
    def ended_at(self) -> datetime | None:
        """The BYE if there was one, else the final response."""
        end = self.bye or self.final
        return end.at if end else None

    def describe(self) -> str:
        parts = [f"final {self.final_code}" if self.final else "no final response"]
        if self.cancelled:
            parts.append("sipp sent CANCEL")
        if self.bye:
            parts.append(f"BYE from {self.bye_from} at {self.bye.at:%H:%M:%S.%f}")
        if self.invited_at:
            parts.insert(0, f"INVITE at {self.invited_at:%H:%M:%S.%f}")
        if self.answered_at:
            parts.append(f"200 at {self.answered_at:%H:%M:%S.%f}")
        return ", ".join(parts)


def parse_trace(text: str) -> list[Call]:
    """sipp's -trace_msg file: one block per message, each opened by a dashed line with the time."""
    calls: dict[str, Call] = {}
    pieces = _SEPARATOR.split(text)
    for stamp, block in zip(pieces[1::2], pieces[2::2], strict=True):
        what, _, message = block.lstrip("\n").partition("\n")
        lines = message.strip("\n").replace("\r", "").split("\n")
        if not lines or not lines[0]:
            continue
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                break
            name, sep, value = line.partition(":")
            if sep:
                headers.setdefault(name.strip().lower(), value.strip())
        at = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
        msg = Message(at, " sent " in f" {what} ", lines[0].strip(), headers)
        call_id = headers.get("call-id", "")
        calls.setdefault(call_id, Call(call_id)).messages.append(msg)
    return list(calls.values())


@dataclass
class Run:
    """A finished sipp: its exit status, the dialogs it traced and its own screen output."""

    scenario: str
    returncode: int
    calls: list[Call]
    output: str

    @property
    def call(self) -> Call:
        assert len(self.calls) == 1, f"sipp {self.scenario} traced {len(self.calls)} dialogs, expected one"
        return self.calls[0]

    def describe(self) -> str:
        if len(self.calls) == 1:
            return f"sipp {self.scenario} exit {self.returncode}: {self.calls[0].describe()}"
        codes: dict[object, int] = {}
        for c in self.calls:
            codes[c.final_code] = codes.get(c.final_code, 0) + 1
        return f"sipp {self.scenario} exit {self.returncode}: {len(self.calls)} dialogs, final codes {codes}"


class Sipp:
    """One sipp process on its own local port; `wait()` gives its Run."""

    def __init__(self, workdir: Path, scenario: str, *args: str, target: str | None = None) -> None:
        self.scenario = scenario
        self.port = free_port()  # SIP; sipp also binds a media port even when it sends no RTP
        n = next(_runs)
        self.trace = workdir / f"sipp-{n}-{scenario}.msg"
        self.screen = workdir / f"sipp-{n}-{scenario}.out"
        cmd = [SIPP, "-sf", str(SCENARIOS / f"{scenario}.xml"), "-i", "127.0.0.1", "-p", str(self.port),
               "-mp", str(free_port()), "-nostdin", "-trace_msg", "-message_file", str(self.trace), *args]
        if target:
            cmd.append(target)
        env = dict(os.environ, TZ="UTC")
        with open(self.screen, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=workdir, env=env)
        if target is None:
            self._wait_bound()  # an answering side must listen before FreeSWITCH sends it an INVITE

    def _wait_bound(self, timeout: float = 10) -> None:
        """Until sipp's UDP socket is bound (read from /proc: binding the port ourselves to probe it
        could take it from sipp)."""
        wanted = f"0100007F:{self.port:04X}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            with open("/proc/net/udp") as table:
                if any(line.split()[1] == wanted for line in table.readlines()[1:]):
                    return
            time.sleep(0.02)

    def wait(self, timeout: float = 60) -> Run:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        text = self.trace.read_text(errors="replace") if self.trace.exists() else ""
        output = self.screen.read_text(errors="replace")[-2000:]
        return Run(self.scenario, code, parse_trace(text), output)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
