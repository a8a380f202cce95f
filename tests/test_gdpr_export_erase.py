"""GDPR export and erase on the real PostgreSQL: CLI, library and the SQL functions agree."""

from __future__ import annotations

import json
import re
import uuid
from datetime import timedelta

import psycopg
from psycopg.conninfo import conninfo_to_dict

from eslbridge.privacy.gdpr import erase_subject, export_subject, find_subject
from tests.gdpr_fixtures import REALM, T0, Admin, add_user, admin_fixture, call, call_uuid, write  # noqa: F401

ZOE, BOB = "4711", "4712"
ZOE_EMAIL, ZOE_NAME = "zoe.quist@mail.example", "Zoe Quist"
ZOE_URI, BOB_URI, EXT_URI = f"sip:{ZOE}@{REALM}", f"sip:{BOB}@{REALM}", "sip:+4930123456@carrier.example"
# call number -> (zoe's side(s) in the CDR, call owner)
OWN, TO_ZOE, INBOUND, BEFORE_USER, VIA_IP, UNRELATED = 1, 2, 3, 4, 5, 6


def scenario(conn: psycopg.Connection, admin: Admin) -> dict[str, uuid.UUID]:
    """Zoe (extension 4711) and Bob (4712); Zoe takes part in five calls in five different ways."""
    bob = add_user(conn, BOB)
    kr = admin.keyring
    # Before Zoe became a user: found only through the blind index (uri hash).
    write(conn, kr, call(BEFORE_USER, ZOE_URI, EXT_URI, start=T0 - timedelta(days=30)))
    zoe = add_user(conn, ZOE, email=ZOE_EMAIL, display_name=ZOE_NAME)
    write(conn, kr,
          call(OWN, ZOE_URI, BOB_URI, user_id=zoe, caller_name=ZOE_NAME),      # Zoe calls Bob: her calls row
          call(TO_ZOE, BOB_URI, ZOE_URI, user_id=bob),                         # Bob calls Zoe: Bob's calls row
          call(INBOUND, EXT_URI, ZOE_URI, user_id=zoe),                        # a carrier call to Zoe
          # From a phone that registered by IP: the URI does not match, her extension number does.
          call(VIA_IP, f"sip:{ZOE}@10.1.2.3", EXT_URI, caller_ip="10.1.2.3"),
          call(UNRELATED, BOB_URI, EXT_URI, user_id=bob))
    conn.execute("INSERT INTO rate_limits (user_id, endpoint) VALUES (%s, 'call'), (%s, 'call')", (zoe, bob))
    conn.execute("INSERT INTO audit_logs (action, user_id, ip_address, user_agent, details) VALUES"
                 " ('sip.register', %s, '10.1.2.3', 'Linphone', '{\"from\": \"4711@pbx.example.org\"}')", (zoe,))
    conn.execute("INSERT INTO audit_logs (action, details) VALUES ('note', %s)",
                 (json.dumps({"about": [{"mail": ZOE_EMAIL}]}),))
    return {"zoe": zoe, "bob": bob}


def cdr(conn: psycopg.Connection, n: int) -> dict:
    cur = conn.execute("SELECT * FROM call_records WHERE call_uuid = %s", (call_uuid(n),))
    row = cur.fetchone()
    return dict(zip([d.name for d in cur.description], row, strict=True)) if row else {}


def test_export_finds_every_call_and_decrypts(admin: Admin, db: psycopg.Connection, capsys) -> None:
    ids = scenario(db, admin)
    assert admin.run("gdpr", "export", ZOE, "--realm", REALM) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["subject"] == {"username": ZOE, "realm": REALM, "user_id": str(ids["zoe"]),
                              "found": {"by_user_id": True, "by_uri": True, "by_number": True}}
    assert out["user"]["email"] == ZOE_EMAIL and "password_hash" not in out["user"] and "sip_ha1" not in out["user"]
    records = {r["call_uuid"]: r for r in out["call_records"]}
    assert set(records) == {call_uuid(n) for n in (OWN, TO_ZOE, INBOUND, BEFORE_USER, VIA_IP)}
    assert records[call_uuid(OWN)]["caller"] == ZOE_URI and records[call_uuid(OWN)]["callee_ip"] == "192.0.2.20"
    assert records[call_uuid(VIA_IP)]["caller_ip"] == "10.1.2.3"
    # The SIP Call-ID is stored encrypted (call_id holds the UUID); the export gives it back.
    assert records[call_uuid(OWN)]["call_id"] == f"cid-{OWN}@{ZOE_URI.split('@')[1]}"
    assert cdr(db, OWN)["call_id"] == call_uuid(OWN)
    sides = {n: (records[call_uuid(n)]["caller_side"], records[call_uuid(n)]["callee_side"])
             for n in (OWN, TO_ZOE, INBOUND, BEFORE_USER, VIA_IP)}
    assert sides == {OWN: (True, False), TO_ZOE: (False, True), INBOUND: (False, True),
                     BEFORE_USER: (True, False), VIA_IP: (True, False)}
    calls = {c["call_uuid"]: c for c in out["calls"]}
    assert set(calls) == {call_uuid(n) for n in (OWN, TO_ZOE, INBOUND)}
    assert calls[call_uuid(OWN)]["owned"] and calls[call_uuid(OWN)]["destination_number"] == BOB
    assert not calls[call_uuid(TO_ZOE)]["owned"] and calls[call_uuid(TO_ZOE)]["destination_number"] == ZOE
    assert {e["call_uuid"] for e in out["call_events"]} == set(records)
    assert [a["action"] for a in out["audit_logs"]] == ["user.create", "sip.register", "note"]
    audit = db.execute("SELECT actor, db_user, user_id, details FROM audit_logs"
                       " WHERE action = 'gdpr.export'").fetchall()
    assert len(audit) == 1 and audit[0][0] and audit[0][1] and audit[0][2] == ids["zoe"]
    assert audit[0][3]["rows"] == {"calls": 3, "call_records": 5, "call_events": 10, "audit_logs": 3}


def test_export_to_file_is_private_and_never_overwrites(admin: Admin, db: psycopg.Connection, tmp_path) -> None:
    scenario(db, admin)
    out = tmp_path / "zoe.json"
    assert admin.run("gdpr", "export", ZOE, "--realm", REALM, "--out", str(out)) == 0
    assert out.stat().st_mode & 0o777 == 0o600
    assert json.loads(out.read_text())["user"]["username"] == ZOE
    assert admin.run("gdpr", "export", ZOE, "--realm", REALM, "--out", str(out)) == 1


def test_bad_input_is_refused(admin: Admin, db: psycopg.Connection, capsys) -> None:
    assert admin.run("gdpr", "export", "bad user!", "--realm", REALM) == 2
    assert "invalid user name" in capsys.readouterr().err
    assert admin.run("gdpr", "erase", ZOE) == 2  # --realm is required


def test_sql_export_agrees_with_cli(admin: Admin, db: psycopg.Connection) -> None:
    """Same data: export_user_data with the hashes equals the CLI exactly; without them (the seed's
    two-argument form) it equals the CLI on every row attributed by user_id and misses the rest."""
    ids = scenario(db, admin)
    kr = admin.keyring
    subject = find_subject(db, kr, ZOE, REALM)
    with_hashes = db.execute("SELECT export_user_data(%s, %s, %s)",
                             (ids["zoe"], kr.passphrase(1), subject.hashes)).fetchone()[0]
    seed_form = db.execute("SELECT export_user_data(%s, %s)", (ids["zoe"], kr.passphrase(1))).fetchone()[0]
    cli = export_subject(db, kr, subject)
    for part in ("user", "calls", "call_records", "call_events", "audit_logs"):
        assert cli[part] == with_hashes[part], part

    owned = {call_uuid(OWN), call_uuid(INBOUND)}
    assert {r["call_uuid"] for r in seed_form["call_records"]} == owned
    assert {c["call_uuid"] for c in seed_form["calls"]} == owned

    def without_sides(rows: list[dict]) -> list[dict]:  # no hashes: the side cannot be told
        return [{k: v for k, v in r.items() if k not in ("caller_side", "callee_side")}
                for r in rows if r["call_uuid"] in owned]

    for part in ("calls", "call_records", "call_events"):
        assert without_sides(seed_form[part]) == without_sides(cli[part]), part
    assert seed_form["user"] == cli["user"] and seed_form["audit_logs"] == cli["audit_logs"]


def _haystack(conn: psycopg.Connection) -> str:
    """Every row of every table, as text (bytea as hex)."""
    tables = [r[0] for r in conn.execute(
        "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p', 'm')"
        " AND NOT relispartition")]
    return "\n".join(str(row[0]) for t in tables for row in conn.execute(f"SELECT t::text FROM {t} t"))


def test_erase_leaves_no_trace_and_keeps_billing(admin: Admin, db: psycopg.Connection, capsys) -> None:
    ids = scenario(db, admin)
    kr = admin.keyring
    subject = find_subject(db, kr, ZOE, REALM)
    before = {n: cdr(db, n) for n in (OWN, TO_ZOE, INBOUND, BEFORE_USER, VIA_IP, UNRELATED)}
    zoe_side = {OWN: "caller", TO_ZOE: "callee", INBOUND: "callee", BEFORE_USER: "caller", VIA_IP: "caller"}
    traces = [before[n][f"{side}{col}"].hex() for n, side in zoe_side.items()
              for col in ("", "_ip", "_sdp", "_hash", "_number_hash")]
    traces += [c.hex() for (c,) in db.execute("SELECT caller_id_enc FROM calls WHERE call_uuid = %s",
                                              (call_uuid(OWN),))]
    traces += [c.hex() for (c,) in db.execute("SELECT destination_number_enc FROM calls WHERE call_uuid = %s",
                                              (call_uuid(TO_ZOE),))]
    hay = _haystack(db)
    assert all(t in hay for t in traces)
    traces += [h.hex() for h in subject.hashes]  # sips: and number hashes too, whether used or not

    assert admin.run("gdpr", "erase", ZOE, "--realm", REALM, "--yes") == 0
    printed = capsys.readouterr().out
    assert "call_records_erased    5" in printed and "users_deleted          1" in printed

    hay = _haystack(db)
    for trace in traces:
        assert trace not in hay
    for text in (ZOE_EMAIL, ZOE_NAME, "zoe.quist", "10.1.2.3"):
        assert text not in hay
    # Row ids and call UUIDs are random hex: a group of one can read 4711 by chance, so drop them first.
    no_uuids = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "", hay)
    assert not re.search(rf"(?<![0-9a-f]){ZOE}(?![0-9a-f])", no_uuids)

    # Billing facts stay; the other party's side stays.
    after = {n: cdr(db, n) for n in before}
    assert after[UNRELATED] == before[UNRELATED]
    for n, side in zoe_side.items():
        other = "callee" if side == "caller" else "caller"
        assert after[n][side] is None and after[n][f"{side}_hash"] is None and after[n][f"{side}_user_agent"] is None
        assert after[n][other] == before[n][other] and after[n][f"{other}_ip"] == before[n][f"{other}_ip"]
        assert after[n]["total_duration_ms"] == 42000 and after[n]["erased_at"] is not None
        assert after[n]["call_id"] == call_uuid(n)
        assert before[n]["call_id_enc"] is not None and before[n]["call_id_hash"] is not None
        assert after[n]["call_id_enc"] is None and after[n]["call_id_hash"] is None
    assert after[TO_ZOE]["user_id"] == ids["bob"] and after[OWN]["user_id"] is None
    calls = dict(db.execute("SELECT call_uuid, destination_number_enc IS NULL FROM calls").fetchall())
    assert calls == {call_uuid(TO_ZOE): True, call_uuid(UNRELATED): False}
    assert kr.decrypt(db.execute("SELECT caller_id_enc FROM calls WHERE call_uuid = %s",
                                 (call_uuid(TO_ZOE),)).fetchone()[0]) == BOB
    assert {r[0] for r in db.execute("SELECT DISTINCT call_uuid FROM call_events")} == {call_uuid(UNRELATED)}
    assert db.execute("SELECT user_id FROM rate_limits").fetchall() == [(ids["bob"],)]

    erase = db.execute("SELECT actor, db_user, resource_id, details FROM audit_logs WHERE action = 'gdpr.erase'"
                       ).fetchall()
    assert len(erase) == 1 and erase[0][0] and erase[0][1] and erase[0][2] == str(ids["zoe"])
    assert erase[0][3]["rows"]["audit_logs_anonymised"] == 3
    anonymised = db.execute("SELECT action, details, ip_address, user_agent FROM audit_logs"
                            " WHERE action IN ('user.create', 'sip.register', 'note') AND user_id IS NULL"
                            " ORDER BY id").fetchall()
    assert [a[0] for a in anonymised] == ["user.create", "sip.register", "note"]
    assert all(a[1:] == ({"anonymized": True}, None, None) for a in anonymised)

    # A second run (after the daemon's journal drained) finds nothing more.
    again = erase_subject(db, find_subject(db, kr, ZOE, REALM))
    assert again["call_records_erased"] == 0 and again["users_deleted"] == 0


def test_numbers_do_not_match_across_realms(admin: Admin, db: psycopg.Connection) -> None:
    """Extension 4711 exists in two realms: a number cannot tell them apart, so only URIs count."""
    scenario(db, admin)
    add_user(db, ZOE, realm="other.example.net")
    subject = find_subject(db, admin.keyring, ZOE, REALM)
    assert not subject.number_matched
    out = export_subject(db, admin.keyring, subject)
    assert call_uuid(VIA_IP) not in {r["call_uuid"] for r in out["call_records"]}
    assert call_uuid(OWN) in {r["call_uuid"] for r in out["call_records"]}


def _clone(pg_server, dsn: str, conn: psycopg.Connection) -> list[str]:
    """Two byte-identical copies of the test database (closes ``conn``)."""
    source = conninfo_to_dict(dsn)["dbname"]
    conn.close()
    return [pg_server.dsn(pg_server.create_database(template=source)) for _ in range(2)]


def _state(dsn: str) -> dict[str, list]:
    """What an erase leaves, minus the moment it ran and the audit entry's actor."""
    with psycopg.connect(dsn) as conn:
        return {
            "call_records": conn.execute("SELECT to_jsonb(r) - 'erased_at' - 'updated_at' FROM call_records r"
                                         " ORDER BY call_uuid").fetchall(),
            "calls": conn.execute("SELECT id, user_id, destination_number_enc, caller_id_enc, destination_number_hash,"
                                  " caller_id_hash, erased_at IS NULL FROM calls ORDER BY call_uuid").fetchall(),
            "call_events": conn.execute("SELECT * FROM call_events ORDER BY id").fetchall(),
            "rate_limits": conn.execute("SELECT * FROM rate_limits ORDER BY id").fetchall(),
            "users": conn.execute("SELECT id FROM users ORDER BY id").fetchall(),
            "audit_logs": conn.execute("SELECT id, user_id, action, resource_id, ip_address FROM audit_logs"
                                       " WHERE action <> 'gdpr.erase' ORDER BY id").fetchall(),
        }


def test_sql_erase_agrees_with_cli(admin: Admin, db: psycopg.Connection, db_dsn: str, pg_server) -> None:
    """On identical copies: delete_user_data(id, hashes) leaves exactly what the CLI leaves; the seed's
    one-argument form touches exactly the user_id-attributed rows (both of their sides) and no other."""
    ids = scenario(db, admin)
    subject = find_subject(db, admin.keyring, ZOE, REALM)
    sql_copy, seed_copy = _clone(pg_server, db_dsn, db)
    try:
        assert admin.run("gdpr", "erase", ZOE, "--realm", REALM, "--yes") == 0
        with psycopg.connect(sql_copy, autocommit=True) as conn:
            assert conn.execute("SELECT delete_user_data(%s, %s)", (ids["zoe"], subject.hashes)).fetchone() == (True,)
        assert _state(sql_copy) == _state(db_dsn)

        with psycopg.connect(seed_copy, autocommit=True) as conn:
            before = {n: cdr(conn, n) for n in (TO_ZOE, BEFORE_USER, VIA_IP, UNRELATED)}
            assert conn.execute("SELECT delete_user_data(%s)", (ids["zoe"],)).fetchone() == (True,)
            erased = {r[0] for r in conn.execute("SELECT call_uuid FROM call_records WHERE erased_at IS NOT NULL")}
            assert erased == {call_uuid(OWN), call_uuid(INBOUND)}
            assert {n: cdr(conn, n) for n in before} == before  # found only by the blind index: untouched
            both = cdr(conn, OWN)
            assert both["caller"] is None and both["callee"] is None
            entry = conn.execute("SELECT actor, resource_id FROM audit_logs WHERE action = 'gdpr.erase'").fetchall()
            assert entry == [("sql", str(ids["zoe"]))]
    finally:
        for dsn in (sql_copy, seed_copy):
            pg_server.drop_database(conninfo_to_dict(dsn)["dbname"])
