"""Sealed personal data in call_events (the authorizer's decisions) follows key rotation: counted per key,
re-sealed by `keys rotate`, and no key is retired while a sealed value still needs it."""

from __future__ import annotations

import uuid

import psycopg
from psycopg_pool import ConnectionPool

from eslbridge.accounts.authorizer import CallAuthorizer
from eslbridge.keys.sealed import unseal
from eslbridge.privacy import rotation
from tests.gdpr_fixtures import Admin, admin_fixture  # noqa: F401  (fixture)

CHANNEL = {"Channel-Name": "sofia/external/+15551239999@203.0.113.50:5060", "variable_sip_authorized": "false",
           "Caller-Caller-ID-Number": "+15551239999", "variable_sip_network_ip": "203.0.113.50"}


def sealed(db: psycopg.Connection) -> dict[str, dict]:
    return dict(db.execute("SELECT call_uuid, event_data FROM call_events").fetchall())


def test_rotation_reseals_and_retire_waits_for_it(admin: Admin, db: psycopg.Connection, capsys) -> None:
    old = admin.keyring
    with ConnectionPool(admin.dsn, min_size=1, max_size=1) as pool:
        authorizer = CallAuthorizer(pool, lambda: old, lambda channel: "fs1")
        for _ in range(5):
            assert authorizer({**CHANNEL, "Unique-ID": str(uuid.uuid4())})[0] is False
    before = {u: unseal(old, doc) for u, doc in sealed(db).items()}
    assert len(before) == 5 and all(v["network_ip"] == "203.0.113.50" for v in before.values())
    assert rotation.key_usage(db)["call_events"] == {1: 5}

    rotation.new_active_key(admin.keyring_path)
    assert admin.run("keys", "retire", "1") == 1
    assert "still encrypts 5 in call_events" in capsys.readouterr().err

    assert admin.run("keys", "rotate", "--resume", "--batch-size", "2") == 0
    assert "5 rows in call_events" in capsys.readouterr().out
    new = admin.keyring
    after = sealed(db)
    assert {doc["enc_key_id"] for doc in after.values()} == {2}
    assert {u: unseal(new, doc) for u, doc in after.items()} == before
    assert all(doc["reason"] == "caller not authenticated" for doc in after.values())  # the rest is untouched
    assert rotation.key_usage(db)["call_events"] == {2: 5}
    assert admin.run("keys", "retire", "1") == 0
