"""Directory lookups read from a real streaming standby (database.replica_url, directory/replica.py):
a changed password is never answered from the standby's old copy once the NOTIFY has arrived, a
standby stopped or lagging mid-run changes nothing for FreeSWITCH, and every read of the primary
instead is counted in /metrics. The standby is a second `postgres` made with `pg_basebackup -R`."""

from __future__ import annotations

import base64
import hashlib
import re
import threading
import time
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import psycopg
import pytest
import yaml

from eslbridge.accounts import users
from eslbridge.cli import main
from eslbridge.directory.replica import ALL, Fences
from eslbridge.sim.localpg import PgCluster, free_port
from eslbridge.store.migrate import migrate
from tests.directory_fixtures import DirectoryProcess
from tests.test_config_check import FakeEventSocket, write_config
from tests.test_daemon import Env, Sim, get, metrics_url, wait_for

DB = "eslbridge"


# --- the bookkeeping alone -------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def caught_up(max_lag: float = 5.0) -> tuple[Fences, Clock]:
    clock = Clock()
    fences = Fences(max_lag, clock)
    fences.fence_all()  # LISTEN connected
    fences.primary_at(1000, fences.seq, clock.now)
    fences.standby_at(1000)
    return fences, clock


def test_a_changed_key_goes_to_the_primary_until_the_standby_replayed_past_the_change():
    fences, clock = caught_up()
    assert fences.split([("a", "r"), ("b", "r")]) == ([("a", "r"), ("b", "r")], [], "changed")
    fences.fence(("a", "r"))
    fences.standby_at(5000)  # no primary position read after the notification yet: still fenced
    assert fences.split([("a", "r"), ("b", "r")])[:2] == ([("b", "r")], [("a", "r")])
    seq = fences.seq
    fences.fence(("b", "r"))  # arrives while the primary's position is being read
    fences.primary_at(6000, seq, clock.now)
    fences.standby_at(5999)
    assert fences.split([("a", "r"), ("b", "r")])[1] == [("a", "r"), ("b", "r")]
    fences.standby_at(6000)
    assert fences.split([("a", "r"), ("b", "r")]) == ([("a", "r")], [("b", "r")], "changed")


def test_a_new_standby_connection_is_trusted_only_past_every_released_fence():
    fences, clock = caught_up()
    fences.fence(("a", "r"))
    fences.primary_at(7000, fences.seq, clock.now)
    fences.standby_at(7000)
    assert fences.blocker() is None
    fences.standby_failed(retry_after=1.0)
    assert fences.blocker() == "down"
    clock.now += 2
    fences.primary_at(7000, fences.seq, clock.now)
    fences.standby_at(6000)  # a restarted standby replaying again from its last restartpoint
    assert fences.split([("a", "r")]) == ([], [("a", "r")], "catching_up")
    fences.standby_at(7000)
    assert fences.blocker() is None


def test_lag_not_standby_silence_and_listen_reconnects_block_the_standby():
    fences, clock = caught_up(max_lag=1.0)
    fences.primary_at(9000, fences.seq, clock.now)
    clock.now += 1.5
    fences.primary_at(9000, fences.seq, clock.now)
    assert fences.lag() == 1.5 and fences.blocker() == "lag"
    fences.standby_at(9000)
    assert fences.lag() == 0 and fences.blocker() is None
    fences.standby_at(None)
    assert fences.blocker() == "not_standby"
    fences.standby_at(9000)
    fences.fence_all()
    assert fences.blocker() == "catching_up"
    fences.primary_at(9100, fences.seq, clock.now)
    fences.standby_at(9100)
    assert fences.blocker() is None
    clock.now += 10  # the primary's position not read for long: a partition may hide notifications
    assert fences.blocker() == "no_primary"


def test_a_bulk_change_becomes_one_fence_for_all(monkeypatch):
    monkeypatch.setattr("eslbridge.directory.replica.MAX_FENCES", 3)
    fences, _ = caught_up()
    for i in range(5):
        fences.fence((f"u{i}", "r"))
    assert fences.blocker() == "catching_up" and ALL in fences._fences and len(fences._fences) <= 3


# --- a real primary and standby --------------------------------------------------------------

@pytest.fixture(scope="module")
def clusters() -> Iterator[tuple[PgCluster, PgCluster]]:
    primary = PgCluster()
    primary.start()
    standby = None
    try:
        with psycopg.connect(primary.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DB}")
        migrate(primary.dsn(DB))
        standby = PgCluster(standby_of=primary)
        standby.start()
        yield primary, standby
    finally:
        if standby is not None:
            standby.destroy()
        primary.destroy()


def standby_settings(standby: PgCluster, **settings: str) -> None:
    with psycopg.connect(standby.dsn(), autocommit=True) as conn:
        for name, value in settings.items():
            if value:
                conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
            else:
                conn.execute(f"ALTER SYSTEM RESET {name}")
        conn.execute("SELECT pg_reload_conf()")


@pytest.fixture
def directory(clusters, tmp_path: Path) -> Iterator[tuple[DirectoryProcess, Path]]:
    primary, standby = clusters
    flush_file = tmp_path / "flushed"
    flush_file.touch()
    proc = DirectoryProcess(primary.dsn(DB), cache_seconds=0, flush_file=str(flush_file),
                            replica_dsn=standby.dsn(DB), replica_max_lag=1.0, metrics=True).start()
    try:
        yield proc, flush_file
    finally:
        proc.stop()
        standby_settings(standby, recovery_min_apply_delay="")


def ha1_of(directory: DirectoryProcess, user: str, realm: str) -> str | None:
    body = urlencode({"section": "directory", "tag_name": "domain", "key_name": "name", "key_value": realm,
                      "action": "sip_auth", "user": user, "domain": realm})
    status, answer = directory.post(body)
    assert status == 200
    found = ET.fromstring(answer).find(".//user/params/param[@name='a1-hash']")
    return None if found is None else found.get("value")


def metrics(directory: DirectoryProcess) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{directory.metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {m[1]: float(m[2]) for m in re.finditer(r"^(eslbridge_directory_replica_\S+) (\S+)$", text, re.M)}


def fallbacks(seen: dict[str, float], reason: str) -> float:
    return seen.get(f'eslbridge_directory_replica_fallbacks_total{{reason="{reason}"}}', 0.0)


def standby_reads(directory: DirectoryProcess) -> float:
    return metrics(directory).get("eslbridge_directory_replica_reads_total", 0.0)


def add_users(primary: PgCluster, realm: str, n: int) -> dict[str, str]:
    with psycopg.connect(primary.dsn(DB), autocommit=True) as conn:
        for i in range(n):
            users.add_user(conn, f"u{i}", realm, f"password-{i}", rounds=4)
    return {f"u{i}": users.sip_ha1(f"u{i}", realm, f"password-{i}") for i in range(n)}


def serving(clusters, directory, realm: str, n: int) -> tuple[PgCluster, PgCluster, DirectoryProcess, dict]:
    """``n`` users in ``realm``, once the directory reads the standby: (primary, standby, service,
    {username: a1-hash})."""
    primary, standby = clusters
    service = directory[0]
    expected = add_users(primary, realm, n)

    def served() -> bool:
        ha1_of(service, "u0", realm)
        return standby_reads(service) > 0
    wait_for(served, 20, "lookups answered by the standby")
    return primary, standby, service, expected


def test_a_changed_password_is_never_answered_with_the_old_hash_after_the_notify(clusters, directory):
    realm = "fresh.example"
    primary, standby, service, _ = serving(clusters, directory, realm, 2)
    flush_file = directory[1]
    standby_settings(standby, recovery_min_apply_delay="500ms")  # the standby replays each commit late

    answers: list[tuple[float, str | None]] = []  # (sent at, a1-hash) from a client asking all along
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            sent = time.monotonic()
            answers.append((sent, ha1_of(service, "u0", realm)))

    versions: dict[str, int] = {}
    notified_at: list[float] = []
    stale_on_standby = 0
    client = threading.Thread(target=hammer)
    client.start()
    try:
        with psycopg.connect(primary.dsn(DB), autocommit=True) as conn, \
                psycopg.connect(standby.dsn(DB), autocommit=True) as on_standby:
            for version in range(60):
                ha1 = hashlib.md5(f"u0:{realm}:password {version}".encode()).hexdigest()
                versions[ha1] = version
                flushed = len(flush_file.read_text().splitlines())
                conn.execute("UPDATE users SET sip_ha1 = %s WHERE username = 'u0' AND realm = %s", (ha1, realm))
                wait_for(lambda n=flushed: len(flush_file.read_text().splitlines()) > n, 10, "the NOTIFY")
                notified_at.append(time.monotonic())
                stale_on_standby += on_standby.execute(
                    "SELECT sip_ha1 <> %s FROM users WHERE username = 'u0' AND realm = %s", (ha1, realm)).fetchone()[0]
                for _ in range(3):  # right after the NOTIFY, from this thread too
                    answers.append((time.monotonic(), ha1_of(service, "u0", realm)))
                time.sleep(0.7 if version % 10 == 9 else 0.02 * (version % 3))  # now and then it catches up
    finally:
        stop.set()
        client.join()
    seen = metrics(service)

    assert stale_on_standby > 30, "the standby was not behind: the test proves nothing"
    assert flush_file.read_text().split().count(f"u0@{realm}") == 61  # its INSERT, then one flush per UPDATE
    late = [(sent, versions.get(ha1, -1)) for sent, ha1 in answers if sent >= notified_at[0]]
    assert len(late) > 200
    for sent, version in late:
        newest = max(v for v, at in enumerate(notified_at) if at <= sent)
        assert version >= newest, f"answered version {version} after the NOTIFY of version {newest}"
    assert fallbacks(seen, "changed") > 0  # the changed user was read on the primary...
    assert ha1_of(service, "u1", realm) is not None
    assert standby_reads(service) > seen["eslbridge_directory_replica_reads_total"] > 0  # ...the others on the standby


def test_a_standby_stopped_mid_run_changes_nothing_for_freeswitch(clusters, directory):
    realm = "stop.example"
    _, standby, service, expected = serving(clusters, directory, realm, 20)

    wrong: list[tuple[str, str | None]] = []
    asked = [0]
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            user = f"u{asked[0] % 20}"
            ha1 = ha1_of(service, user, realm)
            asked[0] += 1
            if ha1 != expected[user]:
                wrong.append((user, ha1))

    client = threading.Thread(target=hammer)
    client.start()
    try:
        time.sleep(0.5)
        before = metrics(service)
        standby.stop("fast")
        time.sleep(1.5)
        during = metrics(service)
        asked_down = asked[0]
        wait_for(lambda: asked[0] > asked_down + 20, 15, "lookups answered while the standby is down")
        standby.start()
        reads = standby_reads(service)
        wait_for(lambda: standby_reads(service) > reads, 20, "the restarted standby to serve again")
    finally:
        stop.set()
        client.join()

    assert wrong == []  # never "not found", never a wrong hash
    assert before["eslbridge_directory_replica_reads_total"] > 0
    assert fallbacks(during, "down") > fallbacks(before, "down")


def test_a_lagging_standby_leaves_lookups_to_the_primary_until_it_catches_up(clusters, directory):
    realm = "lag.example"
    primary, standby, service, expected = serving(clusters, directory, realm, 3)
    with psycopg.connect(standby.dsn(DB), autocommit=True) as on_standby:
        on_standby.execute("SELECT pg_wal_replay_pause()")
        try:
            with psycopg.connect(primary.dsn(DB), autocommit=True) as conn:
                conn.execute("INSERT INTO system_config (config_key, config_value)"  # WAL the standby holds back
                             " VALUES ('replica-lag-test', '{}')")
            time.sleep(2.0)  # beyond replica_max_lag (1 s)
            lagging = metrics(service)
            assert lagging["eslbridge_directory_replica_lag_seconds"] > 1.0
            assert all(ha1_of(service, user, realm) == ha1 for user, ha1 in expected.items())
            assert fallbacks(metrics(service), "lag") >= fallbacks(lagging, "lag") + 3
        finally:
            on_standby.execute("SELECT pg_wal_replay_resume()")
    reads = standby_reads(service)
    wait_for(lambda: ha1_of(service, "u1", realm) and standby_reads(service) > reads, 20, "reads on the standby")


def test_a_replica_url_that_is_no_standby_leaves_every_lookup_to_the_primary(clusters, tmp_path):
    primary, _ = clusters
    realm = "nostandby.example"
    expected = add_users(primary, realm, 2)
    service = DirectoryProcess(primary.dsn(DB), cache_seconds=0, replica_dsn=primary.dsn(DB), metrics=True).start()
    try:
        def answered() -> bool:
            assert all(ha1_of(service, user, realm) == ha1 for user, ha1 in expected.items())
            return fallbacks(metrics(service), "not_standby") >= 2
        wait_for(answered, 20, "lookups counted as not_standby")
        assert standby_reads(service) == 0
    finally:
        service.stop()


def test_check_config_shows_the_replica_and_its_state(clusters, tmp_path, capsys, monkeypatch):
    primary, standby = clusters
    for name in ("ESLBRIDGE_DATABASE_URL", "CREDENTIALS_DIRECTORY", "ESLBRIDGE_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    esl = FakeEventSocket("ClueCon")
    try:
        config = write_config(tmp_path, primary.dsn(DB), esl.port)
        text = config.read_text()

        def check(replica_url: str) -> str:
            config.write_text(text.replace("  connect_timeout: 5\n",
                                           f"  connect_timeout: 5\n  replica_url: '{replica_url}'\n"))
            assert main(["--config", str(config), "check-config"]) == 0  # a standby never stops the daemon
            return next(line for line in capsys.readouterr().out.splitlines() if line.startswith("replica"))

        line = check(standby.dsn(DB))
        assert re.fullmatch(r"replica \(database\.replica_url\): ok \(standby, replayed up to [0-9A-F]+/[0-9A-F]+, "
                            r"\d+ bytes behind the primary, last transaction replayed .*; lookups fall back to the "
                            r"primary beyond 5 s of lag\)", line), line
        assert "degraded: reachable but not a standby" in check(primary.dsn(DB))
        assert "degraded: unreachable (" in check(f"postgresql://postgres@127.0.0.1:{free_port()}/{DB}")
    finally:
        esl.close()


def test_the_daemon_reads_its_directory_from_database_replica_url(clusters, tmp_path):
    primary, standby = clusters
    realm = "daemon.example"
    expected = add_users(primary, realm, 1)["u0"]
    env = Env(tmp_path, primary.dsn(DB))
    sim = Sim(tmp_path)
    try:
        path = env.config(sim.port)
        cfg = yaml.safe_load(path.read_text())
        cfg["database"]["replica_url"] = standby.dsn(DB)
        cfg["directory"]["cache_seconds"] = 0
        path.write_text(yaml.safe_dump(cfg))
        env.start(path)
        wait_for(lambda: get(metrics_url(path, "/healthz"))[0] == 200, 30, "the daemon up")
        body = urlencode({"section": "directory", "tag_name": "domain", "key_name": "name", "key_value": realm,
                          "action": "sip_auth", "user": "u0", "domain": realm}).encode()
        auth = "Basic " + base64.b64encode(b"freeswitch:dir-secret").decode()

        def answered_by_standby() -> bool:
            request = urllib.request.Request(f"http://{cfg['directory']['listen']}/directory", data=body,
                                             headers={"Authorization": auth})
            with urllib.request.urlopen(request, timeout=5) as r:
                found = ET.fromstring(r.read()).find(".//user/params/param[@name='a1-hash']")
            assert found is not None and found.get("value") == expected
            reads = re.search(r"^eslbridge_directory_replica_reads_total (\S+)$",
                              get(metrics_url(path, "/metrics"))[1], re.M)
            return reads is not None and float(reads[1]) > 0
        wait_for(answered_by_standby, 30, "a lookup answered by the standby")
    finally:
        env.stop_all()
        sim.stop()
