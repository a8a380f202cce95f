"""The sans-IO command/reply exchange (eslbridge.esl.protocol): replies matched to commands in order."""

from __future__ import annotations

import pytest

from eslbridge.esl import protocol
from eslbridge.esl.framing import FrameParser
from eslbridge.esl.protocol import Kind


def frames(*raw: bytes) -> list:
    return FrameParser().feed(b"".join(raw))


REPLY_OK = b"Content-Type: command/reply\nReply-Text: +OK accepted\n\n"
API = b"Content-Type: api/response\nContent-Length: 2\n\nok"
EVENT = b"Content-Type: text/event-json\nContent-Length: 2\n\n{}"


def test_replies_go_to_their_commands_in_order_around_events() -> None:
    exchange: protocol.Exchange[str] = protocol.Exchange()
    assert exchange.command("auth secret", "auth") == b"auth secret\n\n"
    exchange.command("api status", "status")
    got = [exchange.receive(f) for f in frames(REPLY_OK, EVENT, API)]
    assert got == [(Kind.REPLY, "auth"), (Kind.EVENT, None), (Kind.REPLY, "status")]
    assert len(exchange) == 0


def test_a_reply_nobody_waits_for_is_unexpected() -> None:
    exchange: protocol.Exchange[str] = protocol.Exchange()
    assert exchange.receive(frames(REPLY_OK)[0]).kind is Kind.UNEXPECTED


def test_session_frames_are_told_apart() -> None:
    exchange: protocol.Exchange[str] = protocol.Exchange()
    kinds = [exchange.receive(f).kind for f in frames(
        b"Content-Type: auth/request\n\n", b"Content-Type: text/rude-rejection\nContent-Length: 1\n\nx",
        b"Content-Type: log/data\nContent-Length: 1\n\nx", b"Content-Type: x/new\n\n")]
    assert kinds == [Kind.BANNER, Kind.REJECTED, Kind.NOISE, Kind.UNKNOWN]


def test_a_refused_command_is_owed_nothing_and_abandon_returns_the_waiters() -> None:
    exchange: protocol.Exchange[str] = protocol.Exchange()
    with pytest.raises(protocol.UnsafeCommand):
        exchange.command("api x\n\nbgapi system id", "forged")
    exchange.command("exit", "exit")
    assert exchange.abandon() == ["exit"] and len(exchange) == 0


def test_authenticated_needs_the_exact_acceptance() -> None:
    accepted, refused = frames(REPLY_OK, b"Content-Type: command/reply\nReply-Text: -ERR invalid\n\n")
    assert protocol.authenticated(accepted) and not protocol.authenticated(refused)
    assert protocol.accepted(accepted) and not protocol.accepted(refused)
