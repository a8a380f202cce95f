"""The daemon's outbound authorizer end to end: `eslbridge run` under a login granted only
eslbridge_daemon, the simulator's calls on the inbound link, decisions over the outbound socket."""

from __future__ import annotations

import signal

import psycopg
import yaml

from eslbridge.accounts.users import add_user
from eslbridge.sim.outbound import channel_data, place_call
from tests.daemon_fixtures import Env, wait_for
from tests.test_authorizer_records import daemon_dsn  # noqa: F401  (fixture)
from tests.test_daemon import Sim


def test_decisions_name_the_configured_node_link_to_the_call_and_are_audited(
        env: Env, db: psycopg.Connection, daemon_dsn: str) -> None:  # noqa: F811
    user_id = str(add_user(db, "1000", "127.0.0.1", "pw-1000-secret", rounds=4).id)
    env.dsn = daemon_dsn
    sim = Sim(env.tmp, "--wait-subscribers", "1", "--calls", "3", "--rate", "20", "--speed", "8",
              "--mix", "auth_call=1", "--seed", "5")
    config = env.config(sim.port)
    host, port = yaml.safe_load(config.read_text())["outbound"]["listen"].rsplit(":", 1)
    try:
        proc = env.start(config)
        sim.wait_line("played")
        wait_for(lambda: db.execute("SELECT count(*) FROM calls WHERE status = 'completed'").fetchone()[0] == 3,
                 60, "three finished calls")
        (call_uuid,) = db.execute("SELECT call_uuid FROM calls LIMIT 1").fetchone()
        # FreeSWITCH hands the same call to the socket app (as if the dialplan ran it again), then
        # a call from a caller it did not authenticate.
        allowed = place_call(host, int(port), channel_data("auth_call", **{"Unique-ID": call_uuid}))
        refused = place_call(host, int(port), channel_data("auth_call", variable_sip_authorized="false"))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, env.log()
    finally:
        sim.stop()
    assert (allowed.outcome, refused.outcome) == ("continue", "hangup")
    rows = db.execute(
        "SELECT e.event_type, e.node, e.call_id = c.id, e.event_data->>'user_id' FROM call_events e"
        " LEFT JOIN calls c ON c.call_uuid = e.call_uuid WHERE e.event_type IN ('authorized', 'refused')"
        " ORDER BY e.event_type").fetchall()
    assert rows == [("authorized", "fs1", True, user_id), ("refused", "fs1", None, None)]
    login = psycopg.conninfo.conninfo_to_dict(daemon_dsn)["user"]
    audits = db.execute("SELECT action, resource_id, details, db_user FROM audit_logs"
                        " WHERE action = 'call.refused'").fetchall()
    assert audits == [("call.refused", refused.channel_data["Unique-ID"],
                       {"reason": "caller not authenticated", "node": "fs1"}, login)]
    assert "InsufficientPrivilege" not in env.log() and "Traceback" not in env.log()
