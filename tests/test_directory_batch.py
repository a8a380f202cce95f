"""Coalesced directory lookups (eslbridge/directory/lookup.py) against a real PostgreSQL.

A batch is held in flight by locking the ``roles`` table (the lookup joins it), so the requests
that arrive meanwhile queue for the next query; the scenarios run inside a gevent child process
(see directory_fixtures) and report what each request got, the query counts and the metrics.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlencode

import psycopg
import pytest

from eslbridge.accounts import users
from tests.directory_fixtures import ROOT, DirectoryProcess
from tests.test_directory_service import fs_locate_user, is_not_found, md5, param

PASSWORD = "batch password"
REALM = "batch.example"
_BOOT = "from gevent import monkey; monkey.patch_all(); from tests.test_directory_batch import child_main; child_main()"


def body(username: str, realm: str = REALM) -> bytes:
    return urlencode({"section": "directory", "tag_name": "domain", "key_name": "name", "key_value": realm,
                      "action": "sip_auth", "user": username, "domain": realm}).encode()


def child_main() -> None:
    """Child process: hold one lookup in flight, queue more, optionally break or change things."""
    import gevent

    from eslbridge.config import DirectoryConfig, ListenAddress, Secret
    from eslbridge.directory import DirectoryService
    from eslbridge.ops.metrics import Metrics

    spec = json.loads(sys.stdin.readline())
    metrics = Metrics()
    config = DirectoryConfig(ListenAddress("127.0.0.1", 0), "/directory", (ipaddress.ip_network("127.0.0.1/32"),),
                             "freeswitch", Secret("unused", "test"), spec["cache_seconds"])
    service = DirectoryService(config, spec["dsn"], metrics=metrics)
    service.start()
    with gevent.Timeout(10):
        while not service.listener.connected:
            gevent.sleep(0.01)

    def ask(names: list[str]) -> list[gevent.Greenlet]:
        asked = [gevent.spawn(service.answer, body(name)) for name in names]
        gevent.idle()  # every one of them has queued its lookup
        return asked

    with psycopg.connect(spec["dsn"], autocommit=True) as admin, psycopg.connect(spec["dsn"]) as locker:
        locker.execute("LOCK TABLE roles IN ACCESS EXCLUSIVE MODE")
        first = ask(spec["first"])
        with gevent.Timeout(10):  # until the first query waits for the lock
            while not admin.execute("SELECT count(*) FROM pg_locks WHERE NOT granted"
                                    " AND relation = 'roles'::regclass").fetchone()[0]:
                gevent.sleep(0.01)
        if spec.get("terminate"):
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_locks WHERE NOT granted"
                          " AND relation = 'roles'::regclass")
        later = ask(spec.get("later", []))
        if spec.get("change"):
            generation = service.cache.generation
            users.set_password(admin, spec["change"], REALM, spec["new_password"], rounds=4)
            with gevent.Timeout(10):  # until the notification was handled
                while service.cache.generation == generation:
                    gevent.sleep(0.01)
        locker.rollback()
        answers = [[g.get().decode() for g in group] for group in (first, later)]
    cached = {name: service.cache.get((name, REALM)) is not None for name in spec["first"]}
    again = service.answer(body(spec["first"][0])).decode() if spec.get("again") else None
    outcomes = {s.labels["outcome"]: s.value for m in metrics.registry.collect() for s in m.samples
                if m.name == "eslbridge_directory_requests" and s.name.endswith("_total")}
    print(json.dumps({"first": answers[0], "later": answers[1], "cached": cached, "again": again,
                      "queries": service.lookups.queries, "keys": service.lookups.keys, "outcomes": outcomes,
                      "cached_again": service.cache.get((spec["first"][0], REALM)) is not None}), flush=True)
    service.stop()


def run(dsn: str, **spec) -> dict:
    proc = subprocess.run([sys.executable, "-c", _BOOT], cwd=ROOT, input=json.dumps({"dsn": dsn, **spec}) + "\n",
                          capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.splitlines()[-1])


def a1(answer: str, username: str) -> str | None:
    user = fs_locate_user(answer.encode(), REALM, username)
    return None if user is None else param(user, "a1-hash")


def expected(username: str, password: str = PASSWORD) -> str:
    return md5(f"{username}:{REALM}:{password}")


@pytest.fixture(scope="module")
def dsn(pg_server, migrated_template) -> Iterator[str]:
    name = pg_server.create_database(template=migrated_template)
    dsn = pg_server.dsn(name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i in range(20):
            users.add_user(conn, f"u{i}", REALM, PASSWORD, rounds=4)
        users.add_user(conn, "off", REALM, PASSWORD, rounds=4)
        users.set_enabled(conn, "off", REALM, False)
        users.add_user(conn, "racer", REALM, PASSWORD, rounds=4)
    yield dsn
    pg_server.drop_database(name)


def test_queued_misses_share_one_query_and_each_gets_its_own_answer(dsn):
    later = [f"u{i}" for i in range(20)] * 2 + ["nobody", "ghost", "off", "off"]
    result = run(dsn, cache_seconds=0, first=["u0"], later=later)
    assert a1(result["first"][0], "u0") == expected("u0")
    for name, answer in zip(later, result["later"], strict=True):
        if name.startswith("u"):
            assert a1(answer, name) == expected(name)
            assert fs_locate_user(answer.encode(), REALM, name).get("id") == name
        else:
            assert is_not_found(answer.encode())
    # One query for the first request, one for everything that queued behind it; a key asked
    # twice is fetched once.
    assert result["queries"] == 2 and result["keys"] == 1 + 20 + 3
    assert result["outcomes"]["found"] == 41 and result["outcomes"]["not_found"] == 4


def test_a_database_failure_mid_batch_fails_every_waiter_closed(dsn):
    first = ["u1", "u2", "u3", "u2", "nobody"]
    result = run(dsn, cache_seconds=300, first=first, terminate=True)
    assert all(is_not_found(answer.encode()) for answer in result["first"])
    assert result["queries"] == 1 and result["keys"] == 4  # they really were one batch
    assert result["outcomes"]["db_error"] == len(first)
    assert not any(result["cached"].values())  # a failure is never cached


def test_an_invalidation_during_the_query_keeps_its_answer_out_of_the_cache(dsn):
    result = run(dsn, cache_seconds=300, first=["racer"], change="racer", new_password="changed password", again=True)
    assert a1(result["first"][0], "racer") in {expected("racer"), expected("racer", "changed password")}
    assert result["cached"] == {"racer": False}
    # The next lookup starts after the invalidation: it reads the new password and may be cached.
    assert a1(result["again"], "racer") == expected("racer", "changed password")
    assert result["cached_again"] is True


def test_many_concurrent_http_clients_uncached(dsn):
    server = DirectoryProcess(dsn, cache_seconds=0).start()
    names = [f"u{i % 20}" for i in range(300)] + ["off", "nobody"] * 10
    try:
        with ThreadPoolExecutor(50) as pool:
            answers = list(pool.map(lambda name: server.post(body(name)), names))
    finally:
        server.stop()
    for name, (status, answer) in zip(names, answers, strict=True):
        assert status == 200
        if name.startswith("u"):
            assert a1(answer.decode(), name) == expected(name)
        else:
            assert is_not_found(answer)
