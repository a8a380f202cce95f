"""What the outbound authorizer writes: under the daemon's least-privileged role, with the configured
node name, linked to the call's own rows, and with no plaintext number, URI or address.

Calls are handed over through the real outbound socket server by the simulator's `socket` app side
(eslbridge/sim/outbound.py), and the decisions land in a real PostgreSQL.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg_pool import ConnectionPool

from eslbridge.accounts.authorizer import CallAuthorizer
from eslbridge.esl.nodemap import NodeMap
from eslbridge.esl.outbound import OutboundServer
from eslbridge.keys.keyring import Keyring
from eslbridge.keys.sealed import unseal
from eslbridge.sim.outbound import channel_data, place_call
from tests.test_authorizer import add_user
from tests.writer_fixtures import call_updates, open_journal, write_all

NUMBER, DIALLED, ADDRESS = "+15551239999", "+4930901820", "203.0.113.50"
EXTERNAL = {  # an outside caller claiming a local user's name, as FreeSWITCH hands it over
    "Channel-Name": f"sofia/external/{NUMBER}@{ADDRESS}:5060", "Caller-Caller-ID-Number": NUMBER,
    "Caller-Destination-Number": DIALLED, "variable_sip_network_ip": ADDRESS, "variable_sip_authorized": "false",
    "variable_sip_from_user": NUMBER, "variable_sip_from_host": ADDRESS, "variable_sofia_profile_name": "external",
}


@pytest.fixture
def daemon_dsn(db: psycopg.Connection, db_dsn: str) -> Iterator[str]:
    """A login granted the eslbridge_daemon group role and nothing else."""
    name = f"daemon_only_{uuid.uuid4().hex[:12]}"
    db.execute(f'CREATE ROLE "{name}" LOGIN IN ROLE eslbridge_daemon')
    try:
        yield make_conninfo(db_dsn, user=name)
    finally:
        db.execute(f'DROP ROLE "{name}"')


@pytest.fixture
def daemon_pool(daemon_dsn: str) -> Iterator[ConnectionPool]:
    with ConnectionPool(daemon_dsn, min_size=1, max_size=2, open=True) as p:
        yield p


class Outbound:
    """The outbound socket server with the daemon's authorizer, FreeSWITCH's side played by the simulator."""

    def __init__(self, pool: ConnectionPool, keyring: Keyring, nodes: NodeMap) -> None:
        self.server = OutboundServer(("127.0.0.1", 0), CallAuthorizer(pool, lambda: keyring, nodes.resolve))
        self.host, self.port = self.server.start()

    def call(self, **overrides: str):
        data = channel_data("auth_call", **{"Unique-ID": str(uuid.uuid4()), **overrides})
        return data["Unique-ID"], place_call(self.host, self.port, data)


@pytest.fixture
def outbound(daemon_pool: ConnectionPool, keyring: Keyring) -> Iterator[Outbound]:
    nodes = NodeMap(["fs-east-1"])
    o = Outbound(daemon_pool, keyring, nodes)
    yield o
    o.server.stop()


def rows_about(db: psycopg.Connection, call_uuid: str) -> tuple[list[tuple], list[tuple]]:
    events = db.execute("SELECT event_type, node, call_id, event_data FROM call_events WHERE call_uuid = %s",
                        (call_uuid,)).fetchall()
    audits = db.execute("SELECT action, user_id, details, db_user FROM audit_logs WHERE resource_id = %s",
                        (call_uuid,)).fetchall()
    return events, audits


def test_a_refused_call_under_the_daemon_role_is_recorded_and_audited(db, outbound, daemon_dsn) -> None:
    user_id = add_user(db, "1000", enabled=False)
    call_uuid, result = outbound.call()
    assert result.outcome == "hangup" and result.hangup_cause == "CALL_REJECTED"
    events, audits = rows_about(db, call_uuid)
    assert [(e[0], e[1], e[3]["reason"], e[3]["user_id"]) for e in events] == [
        ("refused", "fs-east-1", "user disabled", user_id)]
    login = psycopg.conninfo.conninfo_to_dict(daemon_dsn)["user"]
    assert [(a[0], str(a[1]), a[2], a[3]) for a in audits] == [
        ("call.refused", user_id, {"reason": "user disabled", "node": "fs-east-1"}, login)]


def test_an_allowed_call_under_the_daemon_role_is_recorded(db, outbound) -> None:
    add_user(db, "1000")
    call_uuid, result = outbound.call()
    assert result.outcome == "continue"
    events, audits = rows_about(db, call_uuid)
    assert [(e[0], e[1], e[3]["reason"]) for e in events] == [("authorized", "fs-east-1", "ok")]
    assert audits == []


def test_no_plaintext_number_or_address_in_what_the_authorizer_writes(db, outbound, keyring) -> None:
    add_user(db, NUMBER)  # even a user named by a phone number
    call_uuid, result = outbound.call(**EXTERNAL)
    assert result.outcome == "hangup"
    for table in ("call_events", "audit_logs", "rate_limits"):
        text = " ".join(r[0] for r in db.execute(f"SELECT t::text FROM {table} t").fetchall())
        for secret in (NUMBER, NUMBER.lstrip("+"), DIALLED.lstrip("+"), ADDRESS, "sofia/external/"):
            assert secret not in text, (table, secret)
    ((data,),) = db.execute("SELECT event_data FROM call_events WHERE call_uuid = %s", (call_uuid,)).fetchall()
    assert data["reason"] == "caller not authenticated" and data["profile"] == "external"
    # What an auditor needs is there, for the key holder: with eslbridge's keyring or PostgreSQL's pgcrypto.
    expected = {"channel": EXTERNAL["Channel-Name"], "caller_id_number": NUMBER, "destination_number": DIALLED,
                "network_ip": ADDRESS, "identity": f"{NUMBER}@{ADDRESS}"}
    assert unseal(keyring, data) == expected
    (plain,) = db.execute("SELECT pgp_sym_decrypt(decode(event_data->>'personal', 'base64'), %s)"
                          " FROM call_events WHERE call_uuid = %s",
                          (keyring.passphrase(data["enc_key_id"]), call_uuid)).fetchone()
    assert json.loads(plain) == expected


def test_node_name_comes_from_the_link_that_saw_the_freeswitch(db, daemon_pool, keyring) -> None:
    """Two nodes: each authorizer row carries the configured name of the node whose Core-UUID it has."""
    add_user(db, "1000")
    nodes = NodeMap(["fs-a", "fs-b"])
    core_a, core_b = str(uuid.uuid4()), str(uuid.uuid4())
    nodes.learn("fs-a", {"Core-UUID": core_a, "FreeSWITCH-Hostname": "pbx1"})
    nodes.learn("fs-b", {"Core-UUID": core_b, "FreeSWITCH-Hostname": "pbx2"})
    o = Outbound(daemon_pool, keyring, nodes)
    try:
        ua, _ = o.call(**{"Core-UUID": core_b, "FreeSWITCH-Hostname": "pbx2"})
        ub, _ = o.call(**{"Core-UUID": core_a, "FreeSWITCH-Hostname": "pbx1"})
    finally:
        o.server.stop()
    got = dict(db.execute("SELECT call_uuid, node FROM call_events WHERE call_uuid IN (%s, %s)", (ua, ub)).fetchall())
    assert got == {ua: "fs-b", ub: "fs-a"}


def test_node_map_resolution() -> None:
    one = NodeMap(["only"])
    assert one.resolve({"Core-UUID": "x", "FreeSWITCH-Hostname": "h"}) == "only"
    two = NodeMap(["a", "b"])
    assert two.resolve({"Core-UUID": "c1"}) is None  # nothing learned yet: not guessed
    two.learn("a", {"Core-UUID": "c1", "FreeSWITCH-Hostname": "same"})
    two.learn("b", {"Core-UUID": "c2", "FreeSWITCH-Hostname": "same"})
    assert two.resolve({"Core-UUID": "c2", "FreeSWITCH-Hostname": "same"}) == "b"
    assert two.resolve({"Core-UUID": "c9", "FreeSWITCH-Hostname": "same"}) is None  # one host, two nodes
    two.learn("b", {"Core-UUID": "c3", "FreeSWITCH-Hostname": "other"})  # b's FreeSWITCH restarted elsewhere
    assert two.resolve({"Core-UUID": "c2"}) is None
    assert two.resolve({"Core-UUID": "c-new", "FreeSWITCH-Hostname": "other"}) == "b"  # before its first event


@pytest.mark.parametrize("order", ["call_first", "decision_first"])
def test_the_decision_is_linked_to_the_call(db, db_dsn, outbound, keyring, tmp_path, order) -> None:
    """Whichever is written first, the call's rows (the writer) or the decision (the authorizer), the
    decision's call_events row ends up on the call's `calls` row, joinable with the call's own events."""
    user_id = add_user(db, "1000")
    started, answered, finished = call_updates(7, user_id=user_id, node="fs-east-1")
    call_uuid = started.record.call_uuid
    with open_journal(tmp_path / "j", keyring) as journal:
        if order == "call_first":
            write_all(db_dsn, keyring, journal, [started])
            outbound.call(**{"Unique-ID": call_uuid})
        else:
            outbound.call(**{"Unique-ID": call_uuid})
            write_all(db_dsn, keyring, journal, [started])
        write_all(db_dsn, keyring, journal, [answered, finished])
    rows = db.execute(
        "SELECT e.event_type, e.node, e.call_id = c.id FROM call_events e JOIN calls c ON c.call_uuid = e.call_uuid"
        " WHERE e.call_uuid = %s ORDER BY e.seq", (call_uuid,)).fetchall()
    assert rows == [("authorized", "fs-east-1", True), ("created", "fs-east-1", True),
                    ("answered", "fs-east-1", True), ("bridged", "fs-east-1", True), ("hangup", "fs-east-1", True)]


def test_a_decision_committed_while_the_calls_row_was_inserted_is_linked_when_the_call_ends(
        db, db_dsn, keyring, tmp_path) -> None:
    """Neither session sees the other's uncommitted row: the decision is appended unlinked; the call's
    finished write links it."""
    user_id = add_user(db, "1000")
    started, answered, finished = call_updates(8, user_id=user_id, node="fs-east-1")
    call_uuid = started.record.call_uuid
    with open_journal(tmp_path / "j", keyring) as journal:
        write_all(db_dsn, keyring, journal, [started, answered])
        db.execute("INSERT INTO call_events (call_uuid, node, seq, event_type, event_data)"
                   " VALUES (%s, 'fs-east-1', 0, 'authorized', '{}')", (call_uuid,))
        write_all(db_dsn, keyring, journal, [finished])
    assert db.execute("SELECT call_id IS NOT NULL FROM call_events WHERE call_uuid = %s AND seq = 0",
                      (call_uuid,)).fetchone() == (True,)
