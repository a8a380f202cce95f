"""python -m eslbridge.sim: run the FreeSWITCH simulator (see --help)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

import gevent
from gevent import signal_handler

from eslbridge.sim.ledger import Ledger
from eslbridge.sim.server import Simulator


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eslbridge.sim", description="Simulated FreeSWITCH speaking ESL.")
    p.add_argument("--listen", type=_hostport, default=("127.0.0.1", 8021), help="HOST:PORT (port 0: any)")
    p.add_argument("--password-file", help="read the ESL password from this file "
                   "(default: $ESLBRIDGE_SIM_PASSWORD, else ClueCon; never on the command line)")
    p.add_argument("--rate", type=float, default=10.0, help="new calls per second")
    p.add_argument("--mix", default="bridged=5,busy=1,no_answer=1,cancel=1,reject=1,blind_transfer=1,originate=1",
                   help="scenario=weight,... (bridged busy no_answer cancel reject blind_transfer originate tone "
                        "auth_call register)")
    p.add_argument("--calls", type=int, default=0, help="stop after this many calls (0: use --duration)")
    p.add_argument("--duration", type=float, default=0.0, help="seconds of calls (0 with --calls 0: none)")
    p.add_argument("--speed", type=float, default=1.0, help="play each call this many times faster than real")
    p.add_argument("--heartbeat", type=float, default=20.0, help="HEARTBEAT interval in seconds")
    p.add_argument("--replay", help="after the first subscription, send this fixture file byte for byte")
    p.add_argument("--replay-mode", default="auto", choices=("auto", "events", "raw"))
    p.add_argument("--blast", type=int, default=0, help="send N events at full speed to every new subscriber")
    p.add_argument("--blast-pool", type=int, default=300, help="distinct calls rendered for --blast")
    p.add_argument("--format-from-subscription", action="store_true",
                   help="serve json or plain as each client subscribed (always the case; accepted for scripts)")
    p.add_argument("--exit-when-done", action="store_true", help="exit after the calls/replay/blast are sent")
    p.add_argument("--seed", type=int, help="random seed for the call mix")
    p.add_argument("--ledger", metavar="FILE", help="append one JSON line per call played (eslbridge.sim.ledger)")
    p.add_argument("--channels-file", metavar="FILE",
                   help="answer `show channels as json` with the rows of this JSON list (a busy node's snapshot)")
    p.add_argument("--wait-subscribers", type=int, default=0, metavar="N",
                   help="start the calls only once N clients have subscribed (tests with several daemons)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    password = os.environ.get("ESLBRIDGE_SIM_PASSWORD", "ClueCon")
    if args.password_file:
        with open(args.password_file, encoding="utf-8") as fh:
            password = fh.read().strip()
    sim = Simulator(password, args.listen[0], args.listen[1], heartbeat_interval=args.heartbeat, seed=args.seed)
    if args.ledger:
        sim.ledger = Ledger(open(args.ledger, "a", encoding="utf-8"))  # noqa: SIM115 (lives as long as the process)
    if args.channels_file:
        with open(args.channels_file, encoding="utf-8") as fh:
            sim.set_channels_snapshot(json.load(fh))
    host, port = sim.start()
    print(f"listening {host}:{port}", flush=True)
    done = gevent.event.Event()
    signal_handler(15, done.set)
    signal_handler(2, done.set)
    # SIGUSR1: FreeSWITCH restarts (new Core-UUID); the calls in progress end without another event.
    signal_handler(signal.SIGUSR1, lambda: gevent.spawn(sim.restart, True, 0.5, True))
    signal_handler(signal.SIGUSR2, sim.stop_calls)  # no new calls; those in progress finish, then "played"

    def work() -> None:
        while sim.subscribers < args.wait_subscribers:
            gevent.sleep(0.05)
        if args.replay:
            sim.wait_subscribed(timeout=None)
            print(f"replayed {sim.replay(args.replay, args.replay_mode)} bytes", flush=True)
        while args.blast:
            sim.wait_subscribed(timeout=None)
            sim.subscribed.clear()
            print(f"blasted {sim.blast(args.blast, args.mix, args.blast_pool)} events", flush=True)
        n = args.calls or int(args.duration * args.rate)
        if n:
            sim.play_calls(n, args.mix, args.rate, args.speed)
            print(f"played {n} calls: {dict(sim.sent_events)}", flush=True)
        if args.exit_when_done:
            gevent.sleep(0.5)
            done.set()

    gevent.spawn(work)
    done.wait()
    sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
