"""A FreeSWITCH stand-in that speaks real ESL over TCP (inbound side and the outbound `socket` side).

Inbound (clients connect to it): auth/request, `auth`, `event json|plain <names>` (filters like
mod_event_socket: ALL, names, CUSTOM subclasses), `api`, `bgapi` (+ BACKGROUND_JOB), `exit`
(+ text/disconnect-notice), `nixevent`/`noevents`/`filter`/`log`/`resume` acknowledged. Events come from
generated calls (calls.py), fixture replays (replay.py), faults (faults.py) and a HEARTBEAT timer.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import random
import time
import uuid
from collections import Counter

import gevent
from gevent import socket
from gevent.event import Event
from gevent.lock import Semaphore
from gevent.server import StreamServer

from eslbridge.sim import calls
from eslbridge.sim.faults import Fault
from eslbridge.sim.fsformat import (
    AUTH_REQUEST,
    DISCONNECT_NOTICE,
    RUDE_REJECTION,
    event_frame,
    json_body,
    plain_body,
    read_commands,
    reply,
)
from eslbridge.sim.ledger import Ledger
from eslbridge.sim.replay import replay_bytes
from eslbridge.sim.templates import Ctx

log = logging.getLogger(__name__)


class Session:
    """One inbound ESL connection."""

    def __init__(self, sim: Simulator, sock, addr) -> None:
        self.sim, self.sock, self.addr = sim, sock, addr
        self.authed = False
        self.fmt: str | None = None  # set by `event json|plain`
        self.all = False
        self.names: set[str] = set()
        self.subclasses: set[str] = set()
        self.lock = Semaphore()
        self.stalled = Event()
        self.stalled.set()  # set = not stalled
        self.closed = False

    def wants(self, name: str, subclass: str) -> bool:
        if self.fmt is None:
            return False
        if self.all:
            return True
        if name not in self.names:
            return False
        return name != "CUSTOM" or not subclass or subclass in self.subclasses

    def send(self, data: bytes) -> None:
        with self.lock:
            self.stalled.wait()
            if not self.closed:
                try:
                    self.sock.sendall(data)
                except OSError:
                    self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.stalled.set()
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            self.sock.close()

    def subscribe(self, args: list[str]) -> str:
        fmt = args[0] if args and args[0] in ("json", "plain", "xml") else "plain"
        if args and args[0] in ("json", "plain", "xml"):
            args = args[1:]
        custom = False
        for token in args:
            if token == "ALL":
                self.all = True
            elif token == "CUSTOM":
                custom = True
                self.names.add(token)
            elif custom:
                self.subclasses.add(token)
            else:
                self.names.add(token)
        self.fmt = fmt
        return f"+OK event listener enabled {fmt}"


class Simulator:
    """Python API of the simulator; see `python -m eslbridge.sim --help` for the command line."""

    def __init__(self, password: str = "ClueCon", host: str = "127.0.0.1", port: int = 0,
                 heartbeat_interval: float = 20.0, seed: int | None = None, rude: bool = False) -> None:
        self.password, self.host, self.port = password, host, port
        self.heartbeat_interval = heartbeat_interval
        self.rude = rude  # answer every connection with text/rude-rejection (ACL deny)
        self.core_uuid = str(uuid.uuid4())
        self.rng = random.Random(seed)
        self.sessions: list[Session] = []
        self.sent_events: Counter = Counter()
        self.commands: list[str] = []  # every command received (auth passwords masked)
        self.channels: dict[str, dict] = {}  # live channels of generated calls, for `show channels`
        self.snapshot_rows: list[dict] | None = None
        self._seq = [0]
        self._heap: list = []
        self._tie = itertools.count()
        self._wake = Event()
        self._pending = 0
        self._idle = Event()
        self._idle.set()
        self._server: StreamServer | None = None
        self._greenlets: list[gevent.Greenlet] = []
        self.subscribed = Event()
        self.ledger: Ledger | None = None  # records every call played (tests compare it with the tables)

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> tuple[str, int]:
        self._listen()
        self._greenlets = [gevent.spawn(self._scheduler), gevent.spawn(self._heartbeats)]
        return self.host, self.port

    def _listen(self) -> None:
        self._server = StreamServer((self.host, self.port), self._handle)
        self._server.start()
        self.port = self._server.server_port

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for s in list(self.sessions):
            s.close()
        gevent.killall(self._greenlets)

    def restart(self, new_core_uuid: bool = True, down_for: float = 0.2) -> None:
        """FreeSWITCH restarts: every connection drops, the port is closed for `down_for` seconds."""
        self._server.close()
        for s in list(self.sessions):
            s.close()
        self.sessions.clear()
        self.subscribed.clear()
        self.channels.clear()
        if new_core_uuid:
            self.core_uuid = str(uuid.uuid4())
        gevent.sleep(down_for)
        self._listen()

    @property
    def subscribers(self) -> int:
        """Connected clients that have sent an `event` subscription."""
        return len(self._subscribed())

    def wait_subscribed(self, timeout: float = 10.0) -> bool:
        return self.subscribed.wait(timeout)

    # -- control ---------------------------------------------------------------------------------
    def set_channels_snapshot(self, rows: list[dict] | None) -> None:
        """Answer `show channels as json` with these rows (None: the live channels of generated calls)."""
        self.snapshot_rows = rows

    def inject(self, fault: Fault) -> None:
        for s in self._subscribed():
            if fault.kind == "raw":
                s.send(fault.data)
            elif fault.kind == "cut":
                data = event_frame(s.fmt, self._heartbeat().render(s.fmt))
                s.send(data[: len(data) // 2])
                s.close()
            elif fault.kind == "stall":
                s.stalled.clear()
                if fault.seconds:
                    gevent.spawn_later(fault.seconds, s.stalled.set)
            else:
                raise ValueError(f"unknown fault {fault.kind!r}")

    def replay(self, path, mode: str = "auto", segment: int = 0, pause: float = 0.0) -> int:
        """Send a fixture's bytes unmodified to every subscribed session, in `segment`-byte writes."""
        data = replay_bytes(path, mode)
        for s in self._subscribed():
            if segment:
                for i in range(0, len(data), segment):
                    s.send(data[i : i + segment])
                    gevent.sleep(pause)
            else:
                s.send(data)
        return len(data)

    def play_calls(self, n: int, mix: str | dict = "bridged=1", rate: float = 50.0, speed: float = 1.0,
                   wait: bool = True) -> None:
        """Start `n` calls at `rate` calls/s; `speed` > 1 plays each call faster than real time."""
        weights = calls.parse_mix(mix) if isinstance(mix, str) else mix
        self._pending += n
        self._idle.clear()
        starter = gevent.spawn(self._start_calls, n, weights, rate, speed)
        if wait:
            starter.join()
            self._idle.wait()

    def wait_idle(self, timeout: float | None = None) -> bool:
        return self._idle.wait(timeout)

    def blast(self, count: int, mix: str | dict = "bridged=1", pool_calls: int = 200) -> int:
        """Send `count` events as fast as the socket takes them (benchmarks): a pool of `pool_calls`
        generated calls, rendered once per session format and filtered, sent round and round."""
        weights = calls.parse_mix(mix) if isinstance(mix, str) else mix
        now = int(time.time() * 1e6)
        planned = [ev for _ in range(pool_calls)
                   for ev in calls.plan_call(calls.choose(weights, self.rng), now, self.core_uuid, self._seq)]
        sent = 0
        for s in self._subscribed():
            frames = [event_frame(s.fmt, ev.render(s.fmt)) for ev in planned if s.wants(ev.name, ev.subclass)]
            if not frames:
                continue
            sent, i, n = 0, 0, len(frames)
            while sent < count:
                k = min(64, count - sent, n - i)
                s.send(b"".join(frames[i : i + k]))
                sent += k
                i = (i + k) % n
        return sent

    # -- internals -------------------------------------------------------------------------------
    def _subscribed(self) -> list[Session]:
        return [s for s in self.sessions if s.fmt is not None and not s.closed]

    def _start_calls(self, n: int, mix: dict, rate: float, speed: float) -> None:
        for _ in range(n):
            start = int(time.time() * 1e6)
            name = calls.choose(mix, self.rng)
            planned = calls.plan_call(name, start, self.core_uuid, self._seq, speed)
            if self.ledger is not None:
                self.ledger.planned(name, planned[0].ctx)
            for ev in planned:
                heapq.heappush(self._heap, (ev.at_us, next(self._tie), ev))
            self._wake.set()
            if rate > 0:
                gevent.sleep(1.0 / rate)

    def _scheduler(self) -> None:
        while True:
            if not self._heap:
                self._wake.clear()
                self._wake.wait()
                continue
            delay = (self._heap[0][0] - time.time() * 1e6) / 1e6
            if delay > 0:
                self._wake.clear()
                self._wake.wait(delay)
                continue
            _, _, ev = heapq.heappop(self._heap)
            self._emit(ev)
            if ev.last:
                self._pending -= 1
                if self._pending <= 0:
                    self._pending = 0
                    self._idle.set()

    def _emit(self, ev) -> None:
        rendered: dict[str, bytes] = {}
        for s in self._subscribed():
            if s.wants(ev.name, ev.subclass):
                if s.fmt not in rendered:
                    rendered[s.fmt] = event_frame(s.fmt, ev.render(s.fmt))
                s.send(rendered[s.fmt])
        if self.ledger is not None:
            self.ledger.emitted(ev.ctx, bool(rendered))
            if ev.last:
                self.ledger.done(ev.ctx)
        self.sent_events[ev.name if ev.name != "CUSTOM" else "CUSTOM " + ev.subclass] += 1
        if ev.name in ("CHANNEL_CREATE", "CHANNEL_HANGUP_COMPLETE"):
            self._track(ev)

    def _track(self, ev) -> None:
        import json

        d = json.loads(ev.render("json"))
        uid = d.get("Unique-ID", "")
        if ev.name == "CHANNEL_HANGUP_COMPLETE":
            self.channels.pop(uid, None)
            return
        self.channels[uid] = {
            "uuid": uid, "direction": d.get("Call-Direction", ""), "created": d.get("Event-Date-Local", ""),
            "created_epoch": str(int(d.get("Caller-Channel-Created-Time", "0")) // 1_000_000),
            "name": d.get("Channel-Name", ""), "state": d.get("Channel-State", ""),
            "cid_name": d.get("Caller-Caller-ID-Name", ""), "cid_num": d.get("Caller-Caller-ID-Number", ""),
            "ip_addr": d.get("Caller-Network-Addr", ""), "dest": d.get("Caller-Destination-Number", ""),
            "context": d.get("Caller-Context", ""), "callstate": d.get("Channel-Call-State", ""),
            "call_uuid": d.get("Channel-Call-UUID", uid), "hostname": d.get("FreeSWITCH-Hostname", ""),
        }

    def _heartbeat(self):
        tpl = calls.heartbeat_template()
        ctx = Ctx(base_us=int(time.time() * 1e6), core=self.core_uuid, seq=self._seq)
        return calls.PlannedEvent(ctx.base_us, tpl.events["json"][0], tpl.events["plain"][0], ctx)

    def _heartbeats(self) -> None:
        while True:
            gevent.sleep(self.heartbeat_interval)
            self._emit(self._heartbeat())

    def _handle(self, sock, addr) -> None:
        if self.rude:
            sock.sendall(RUDE_REJECTION)
            sock.close()
            return
        session = Session(self, sock, addr)
        self.sessions.append(session)
        try:
            session.send(AUTH_REQUEST)
            for cmd in read_commands(sock):
                self._command(session, cmd)
                if session.closed:
                    break
        except OSError:
            pass
        finally:
            session.close()
            if session in self.sessions:
                self.sessions.remove(session)

    def _command(self, s: Session, cmd: str) -> None:
        verb, _, arg = cmd.partition(" ")
        self.commands.append("auth ********" if verb == "auth" else cmd)
        if not s.authed:
            if verb == "auth" and arg == self.password:
                s.authed = True
                s.send(reply("+OK accepted"))
            elif verb == "auth":
                s.send(reply("-ERR invalid"))
                s.close()
            else:
                s.send(reply("-ERR command not found"))
            return
        if verb == "event":
            s.send(reply(s.subscribe(arg.split())))
            self.subscribed.set()
        elif verb == "api":
            body = self._api(arg).encode()
            s.send(b"Content-Type: api/response\nContent-Length: %d\n\n" % len(body) + body)
        elif verb == "bgapi":
            job = str(uuid.uuid4())
            s.send(reply(f"+OK Job-UUID: {job}", Job_UUID=job))
            gevent.spawn(self._background_job, job, arg)
        elif verb == "exit":
            s.send(reply("+OK bye"))
            s.send(DISCONNECT_NOTICE)
            s.close()
        elif verb in ("nixevent", "noevents", "filter", "log", "nolog", "resume", "linger", "myevents"):
            s.send(reply("+OK"))
        else:
            s.send(reply("-ERR command not found"))

    def _api(self, arg: str) -> str:
        cmd = arg.partition(" ")[0]
        if arg.strip() == "show channels as json":
            import json

            rows = list(self.channels.values()) if self.snapshot_rows is None else self.snapshot_rows
            return json.dumps({"row_count": len(rows), "rows": rows} if rows else {"row_count": 0})
        if cmd == "status":
            return (f"UP 0 years, 0 days\nFreeSWITCH (Version 1.10.12-release simulated) is ready\n"
                    f"{len(self.channels)} session(s)\n")
        if cmd == "uptime":
            return "1\n"
        if cmd == "originate":
            self.play_calls(1, "originate", rate=0, wait=False)
            return f"+OK {uuid.uuid4()}\n"
        return f"-ERR {cmd} Command not found!\n"

    def _background_job(self, job: str, arg: str) -> None:
        now = time.time()
        cmd, _, rest = arg.partition(" ")
        result = self._api(arg)
        event = {
            "Event-Name": "BACKGROUND_JOB", "Core-UUID": self.core_uuid, "FreeSWITCH-Hostname": "sim",
            "Event-Date-Timestamp": str(int(now * 1e6)), "Event-Calling-File": "mod_event_socket.c",
            "Event-Calling-Function": "api_exec", "Job-UUID": job, "Job-Command": cmd, "Job-Command-Arg": rest,
            "Content-Length": str(len(result.encode())), "_body": result,
        }
        for s in self._subscribed():
            if s.wants("BACKGROUND_JOB", ""):
                s.send(event_frame(s.fmt, json_body(event) if s.fmt == "json" else plain_body(event)))
