"""`eslbridge demo`: the whole thing, self-contained, in one process, then a report.

A private PostgreSQL from the system binaries, the schema, a keyring, a few SIP
users, a simulated FreeSWITCH playing a mix of real-call scenarios, the daemon
(ESL intake, correlator, writer, directory, outbound authorizer) and directory
lookups answered the way FreeSWITCH's mod_xml_curl asks. Everything lives in a
temporary directory that is removed at the end.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import IO
from urllib.parse import urlencode

import gevent
import psycopg
import yaml

from eslbridge.accounts.users import add_user
from eslbridge.config import load_config
from eslbridge.daemon import Daemon
from eslbridge.keys.keyring import Keyring, generate_keyring
from eslbridge.ops.logs import setup_logging
from eslbridge.sim.localpg import PgCluster
from eslbridge.sim.server import Simulator
from eslbridge.store.migrate import migrate

DEMO_REALM = "127.0.0.1"  # the realm of the captured calls the simulator replays
DEMO_USERS = ("1000", "1001", "1002", "1003")
DEFAULT_MIX = ("bridged=4,tone=2,auth_call=3,busy=1,no_answer=1,cancel=1,reject=1,blind_transfer=1,originate=1,"
               "register=1")


def installed_docs() -> Path:
    """This copy's documentation: what `pip install` put under the prefix, the Debian package's,
    else the source tree it runs from."""
    for candidate in (Path(sys.prefix) / "share" / "doc" / "eslbridge", Path("/usr/share/doc/eslbridge")):
        if (candidate / "README.md").is_file():
            return candidate
    return Path(__file__).resolve().parents[1]


def _secret_file(path: Path, value: str) -> Path:
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path


class _Report:
    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def table(self, rows: list[tuple], headers: tuple[str, ...]) -> None:
        cells = [headers, *[tuple("" if c is None else str(c) for c in r) for r in rows]]
        widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
        for n, row in enumerate(cells):
            self.say("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
            if n == 0:
                self.say("  " + "  ".join("-" * w for w in widths))


def _directory_lookup(address: tuple[str, int], path: str, auth: str, user: str) -> bytes:
    """One mod_xml_curl sip_auth request, as FreeSWITCH posts it."""
    body = urlencode({
        "hostname": "demo", "section": "directory", "tag_name": "domain", "key_name": "name",
        "key_value": DEMO_REALM, "Event-Name": "REQUEST_PARAMS", "action": "sip_auth",
        "sip_profile": "internal", "sip_user_agent": "demo", "sip_auth_username": user,
        "sip_auth_realm": DEMO_REALM, "sip_auth_method": "REGISTER", "user": user, "domain": DEMO_REALM,
    })
    conn = http.client.HTTPConnection(*address, timeout=5)
    try:
        conn.request("POST", path, body, {"Content-Type": "application/x-www-form-urlencoded",
                                          "Authorization": "Basic " + auth})
        return conn.getresponse().read()
    finally:
        conn.close()


def run_demo(seconds: float = 8.0, rate: float = 25.0, mix: str = DEFAULT_MIX, out: IO[str] = sys.stdout) -> int:
    report = _Report(out)
    setup_logging("warning", "text", stream=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="eslbridge-demo-") as tmpdir:
        tmp = Path(tmpdir)
        if os.geteuid() == 0:
            os.chmod(tmp, 0o755)  # the PostgreSQL server runs as `postgres` and needs to reach its socket dir
        report.say("eslbridge demo: a private PostgreSQL, a simulated FreeSWITCH and the daemon\n")
        cluster = PgCluster()
        cluster.start()
        try:
            return _demo(report, tmp, cluster, seconds, rate, mix)
        finally:
            cluster.destroy()


def _demo(report: _Report, tmp: Path, cluster: PgCluster, seconds: float, rate: float, mix: str) -> int:
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE eslbridge")
    dsn = cluster.dsn("eslbridge")
    applied = migrate(dsn)
    report.say(f"1. PostgreSQL {cluster.port}: {len(applied)} migrations applied")

    keyring_file = tmp / "keys" / "keyring.yaml"
    generate_keyring(keyring_file)
    keyring = Keyring.load(keyring_file)
    passwords = {u: secrets.token_urlsafe(12) for u in DEMO_USERS}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for user in DEMO_USERS:
            add_user(conn, user, DEMO_REALM, passwords[user], display_name=f"Demo {user}", actor="demo")
    report.say(f"2. keyring with key {keyring.active_id}; SIP users {', '.join(DEMO_USERS)} @ {DEMO_REALM}")

    esl_password = secrets.token_urlsafe(16)
    directory_password = secrets.token_urlsafe(16)
    sim = Simulator(password=esl_password, heartbeat_interval=5.0, seed=7)
    sim_host, sim_port = sim.start()
    config_file = tmp / "eslbridge.yaml"
    config_file.write_text(yaml.safe_dump({
        "freeswitch": [{"name": "fs1", "host": sim_host, "port": sim_port,
                        "password_file": str(_secret_file(tmp / "esl_password", esl_password))}],
        "outbound": {"listen": "127.0.0.1:0"},
        "database": {"url": dsn},
        "directory": {"listen": "127.0.0.1:0", "allow": ["127.0.0.1/32"], "username": "freeswitch",
                      "password_file": str(_secret_file(tmp / "directory_password", directory_password))},
        "encryption": {"keyring_file": str(keyring_file)},
        "journal": {"dir": str(tmp / "journal")},
        "metrics": {"listen": "127.0.0.1:0"},
        "logging": {"level": "warning"},
    }))
    daemon = Daemon(load_config(str(config_file)), str(config_file))
    daemon.start()
    try:
        deadline = time.monotonic() + 15
        while not daemon.health()[0] and time.monotonic() < deadline:
            gevent.sleep(0.1)
        report.say(f"3. simulated FreeSWITCH on {sim_host}:{sim_port}; daemon connected: {daemon.health()[1]}")

        n_calls = max(1, int(seconds * rate))
        report.say(f"4. playing {n_calls} scenarios ({rate:g}/s, 4x real time; a few are registrations, not calls)"
                   " and directory lookups ...")
        started = time.monotonic()
        sim.play_calls(n_calls, mix, rate=rate, speed=4.0, wait=False)
        auth = base64.b64encode(f"freeswitch:{directory_password}".encode()).decode()
        lookups = verified = 0
        while not sim.wait_idle(timeout=0.05):
            user = DEMO_USERS[lookups % len(DEMO_USERS)]
            answer = _directory_lookup(daemon.directory.address, daemon.config.directory.path, auth, user)
            lookups += 1
            ha1 = hashlib.md5(f"{user}:{DEMO_REALM}:{passwords[user]}".encode()).hexdigest()
            verified += f'value="{ha1}"'.encode() in answer
        played = time.monotonic() - started
        deadline = time.monotonic() + 15
        while (daemon.nodes["fs1"].correlator.active_calls or not daemon.writer.idle()) \
                and time.monotonic() < deadline:
            gevent.sleep(0.05)
        written = time.monotonic() - started
        stats = daemon.writer.stats()
    finally:
        daemon.stop()
        sim.stop()

    events = sum(sim.sent_events.values())
    report.say(f"   {events} ESL events in {played:.1f} s ({events / played:,.0f} events/s, "
               f"{n_calls / played:,.1f} scenarios/s); all committed after {written:.1f} s, "
               f"p99 hangup-to-commit {1000 * (stats.latency_p99 or 0):.0f} ms")
    report.say(f"   directory: {lookups} sip_auth lookups served, {verified} a1-hashes match the passwords\n")
    _print_results(report, dsn, keyring)
    report.say("\nWhere to look next:")
    docs = installed_docs()
    examples = docs / "examples" if (docs / "examples").is_dir() else docs / "conf"
    report.say(f"  {docs / 'README.md'}")
    report.say("      install, configure, run under systemd")
    report.say(f"  {docs / 'docs'}/")
    report.say("      DEPLOYMENT, CONFIGURATION (every setting), SECURITY, HA, UPGRADE, MONITORING, AUDITORS")
    report.say(f"  {examples}/")
    report.say("      FreeSWITCH's side, the Grafana dashboard, the Prometheus alerts")
    report.say("  eslbridge --help")
    report.say("      users, roles, gdpr, keys, retention, check-config, db grant")
    report.say("(the demo's database, keys and journal were temporary and are gone)")
    return 0


def _print_results(report: _Report, dsn: str, keyring: Keyring) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        report.say("Calls by status (call_records, one row per call):")
        report.table(conn.execute(
            "SELECT status, direction, count(*), round(avg(total_duration_ms)) FROM call_records"
            " GROUP BY 1, 2 ORDER BY 3 DESC").fetchall(), ("status", "direction", "calls", "avg ms"))
        report.say("\nA few CDRs, personal fields decrypted with the keyring (stored as OpenPGP ciphertext):")
        rows = conn.execute(
            "SELECT DISTINCT ON (status) status, caller, callee, caller_ip, sip_response_code, disconnect_reason,"
            " call_duration_ms, enc_key_id FROM call_records ORDER BY status, start_time LIMIT 6").fetchall()
        report.table([(r[0], keyring.decrypt(r[1], r[7]), keyring.decrypt(r[2], r[7]),
                       keyring.decrypt(r[3], r[7]) if r[3] else None, r[4], r[5], r[6]) for r in rows],
                     ("status", "caller", "callee", "caller ip", "sip", "cause", "talk ms"))
        report.say("\nLocal users' calls (calls table) and registrations:")
        report.table(conn.execute(
            "SELECT u.username, count(c.id), string_agg(DISTINCT c.status, ','), u.last_login"
            " FROM users u LEFT JOIN calls c ON c.user_id = u.id GROUP BY u.username, u.last_login"
            " ORDER BY 1").fetchall(), ("user", "calls", "statuses", "last registration"))
        events = conn.execute("SELECT count(*), count(DISTINCT call_uuid) FROM call_events").fetchone()
        report.say(f"\ncall_events: {events[0]} lifecycle rows for {events[1]} calls; "
                   f"audit_logs: {conn.execute('SELECT count(*) FROM audit_logs').fetchone()[0]} entries")
