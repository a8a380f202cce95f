"""The mod_xml_curl directory endpoint, end to end: real HTTP, real PostgreSQL, real requests."""

from __future__ import annotations

import base64
import hashlib
import re
import socket
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from urllib.parse import urlencode

import psycopg
import pytest

from eslbridge.accounts import roles, users
from eslbridge.directory.xml import DIAL_STRING
from eslbridge.sim.localpg import PgCluster
from eslbridge.store.migrate import migrate
from tests.directory_fixtures import PASSWORD as GATEWAY_PASSWORD
from tests.directory_fixtures import DirectoryProcess, auth_header
from tests.paths import PUBLIC, shared_public
from tests.user_rows import user_id

PASSWORD = "correct horse battery"
FAST = 4  # bcrypt rounds for setup; users tests cover cost 12


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def read_dump(name: str) -> dict[str, str]:
    """A fsdocs PHP print_r dump ("[key] => value" lines) as the fields FreeSWITCH posted."""
    fields = {}
    for line in (PUBLIC / name).read_text().splitlines():
        match = re.fullmatch(r"\[([^\]]+)\] => ?(.*)", line)
        if match:
            fields[match.group(1)] = match.group(2)
    return fields


def form(**fields: str) -> str:
    base = {"section": "directory", "tag_name": "domain", "key_name": "name", "key": "id"}
    if "domain" in fields:
        base["key_value"] = fields["domain"]
    base.update(fields)
    return urlencode(base)


def parse(body: bytes) -> ET.Element:
    return ET.fromstring(body)


def is_not_found(body: bytes) -> bool:
    root = parse(body)
    result = root.find("./section[@name='result']/result")
    return root.get("type") == "freeswitch/xml" and result is not None and result.get("status") == "not found"


def fs_locate_user(body: bytes, domain: str, user: str) -> ET.Element | None:
    """FreeSWITCH's switch_xml_locate + switch_xml_locate_user on an answer: the section result
    "not found" means no answer; the domain is matched by name without case; the user is searched
    in the domain's groups first, then directly under the domain."""
    root = parse(body)
    if root.find("./section[@name='result']/result[@status='not found']") is not None:
        return None
    for section in root.findall("section"):
        if section.get("name") != "directory":
            continue
        for dom in section.findall("domain"):
            if dom.get("name", "").lower() != domain.lower():
                continue
            candidates = dom.findall("./groups/group/users/user") + dom.findall("user")
            for candidate in candidates:
                if candidate.get("id", "").lower() == user.lower():
                    return candidate
    return None


def param(user: ET.Element, name: str) -> str | None:
    node = user.find(f"./params/param[@name='{name}']")
    return None if node is None else node.get("value")


def variables(user: ET.Element) -> dict[str, str]:
    return {v.get("name"): v.get("value") for v in user.findall("./variables/variable")}


@pytest.fixture(scope="module")
def module_dsn(pg_server, migrated_template) -> Iterator[str]:
    name = pg_server.create_database(template=migrated_template)
    yield pg_server.dsn(name)
    pg_server.drop_database(name)


@pytest.fixture(scope="module")
def admin(module_dsn) -> Iterator[psycopg.Connection]:
    with psycopg.connect(module_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="module")
def flush_file(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("directory") / "flushed")


@pytest.fixture(scope="module")
def directory(module_dsn, flush_file) -> Iterator[DirectoryProcess]:
    server = DirectoryProcess(module_dsn, cache_seconds=300, flush_file=flush_file).start()
    yield server
    server.stop()


def add(conn, username: str, realm: str, **kw) -> users.User:
    return users.add_user(conn, username, realm, PASSWORD, rounds=FAST, **kw)


# --- the real request bodies --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "username", "realm"),
    [
        (lambda: shared_public("tropo-proxy__xmlcurl-directory-request__1.txt").read_text(), "+14158510070",
         "connect.tropo.com"),
        (lambda: (PUBLIC / "url-escape__xmlcurl-directory-request__1.txt").read_text(), "2600", "foo.example.com"),
        (lambda: urlencode(read_dump("fsdocs__xmlcurl-directory-request__1.txt")), "1004",
         "domain1.awesomevoipdomain.faketld"),
    ],
    ids=["tropo-proxy", "url-escape", "fsdocs-sip_auth"],
)
def test_real_sip_auth_requests_get_the_users_a1_hash(directory, admin, body, username, realm):
    body = body()
    status, answer = directory.post(body)
    assert status == 200 and is_not_found(answer)  # not created yet (and this caches the miss)
    add(admin, username, realm)
    # The cached miss goes when the NOTIFY arrives, asynchronously: a loaded host may take a moment.
    deadline = time.monotonic() + 10
    while True:
        status, answer = directory.post(body)
        user = fs_locate_user(answer, realm, username)
        if user is not None or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert status == 200 and user is not None
    assert param(user, "a1-hash") == md5(f"{username}:{realm}:{PASSWORD}")
    assert param(user, "password") is None


@pytest.mark.parametrize("name", ["fsdocs__xmlcurl-directory-request__2.txt",
                                  "fsdocs__xmlcurl-directory-request__3.txt"])
def test_gateways_and_message_count_requests_are_not_found(directory, admin, name):
    fields = read_dump(name)
    if fields.get("user"):
        user_id(admin, fields["user"], fields["domain"]) or add(admin, fields["user"], fields["domain"])
    status, answer = directory.post(urlencode(fields))
    assert status == 200 and is_not_found(answer)


def test_answer_has_the_documented_structure(directory, admin):
    add(admin, "struct", "example.org", display_name="Struct Ure")
    _, answer = directory.post(form(action="sip_auth", user="struct", domain="example.org"))

    def shape(element: ET.Element, path: str = "") -> set[str]:
        here = f"{path}/{element.tag}[{','.join(sorted(element.attrib))}]"
        return {here}.union(*(shape(child, here) for child in element))

    documented = shape(ET.parse(PUBLIC / "fsdocs__xmlcurl-directory-response__1.xml").getroot())
    assert shape(parse(answer)) == documented
    # The documented answers are found by FreeSWITCH's search the same way ours is.
    for name, domain, user in [("fsdocs__xmlcurl-directory-response__1.xml", "domain-name", "1002"),
                               ("fsdocs__xmlcurl-directory-response__2.xml", "domain1.awesomevoipdomain.faketld",
                                "1004")]:
        assert fs_locate_user((PUBLIC / name).read_bytes(), domain, user) is not None
    assert fs_locate_user(answer, "EXAMPLE.org", "struct") is not None


def test_digest_response_verifies_against_the_a1_hash(directory, admin):
    """RFC 2617 as FreeSWITCH checks it: HA1 from a1-hash, HA2 = MD5(method:uri)."""
    add(admin, "digest", "sip.example.net")
    _, answer = directory.post(form(action="sip_auth", user="digest", domain="sip.example.net",
                                    sip_auth_method="REGISTER", sip_auth_realm="sip.example.net"))
    a1 = param(fs_locate_user(answer, "sip.example.net", "digest"), "a1-hash")
    nonce, cnonce, nc, uri = "7cff7d80-afbb-4e0c-9455-c0d9d6baa3f7", "mSfOYudMXnSRJs", "00000001", "sip:sip.example.net"
    phone_ha1 = md5(f"digest:sip.example.net:{PASSWORD}")  # what the phone computes from the password
    for method in ("REGISTER", "INVITE"):
        ha2 = md5(f"{method}:{uri}")
        assert md5(f"{a1}:{nonce}:{ha2}") == md5(f"{phone_ha1}:{nonce}:{ha2}")
        assert md5(f"{a1}:{nonce}:{nc}:{cnonce}:auth:{ha2}") == md5(f"{phone_ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
    wrong = md5(f"digest:sip.example.net:{PASSWORD}x")
    assert md5(f"{a1}:{nonce}:{md5('REGISTER:' + uri)}") != md5(f"{wrong}:{nonce}:{md5('REGISTER:' + uri)}")


def test_user_call_has_dial_string_and_user_variables(directory, admin, flush_file):
    add(admin, "bob", "calls.example", display_name="Bob Builder", role="operator")
    _, answer = directory.post(form(action="user_call", user="bob", domain="calls.example", as_channel="true"))
    user = fs_locate_user(answer, "calls.example", "bob")
    assert param(user, "dial-string") == DIAL_STRING
    assert "sofia_contact(*/${dialed_user}@${dialed_domain})" in DIAL_STRING
    assert int(user.get("cacheable")) == 300_000  # cache_seconds, as a flush hook exists
    assert variables(user) == {
        "user_context": "default",
        "effective_caller_id_name": "Bob Builder",
        "effective_caller_id_number": "bob",
        "accountcode": "bob",
        "toll_allow": "call:create,call:read,call:terminate,call:transfer",
    }
    seen = Invalidations(flush_file)
    before = seen.count("bob@calls.example")
    admin.execute("""UPDATE users SET permissions = '{"can_call": false}' WHERE username = 'bob'""")
    seen.wait("bob@calls.example", before)  # the NOTIFY reached the server (TTL is 300 s)
    _, answer = directory.post(form(action="user_call", user="bob", domain="calls.example"))
    assert variables(fs_locate_user(answer, "calls.example", "bob"))["toll_allow"] == (
        "call:read,call:terminate,call:transfer")


def test_lookup_without_action_is_served_and_other_keys_are_not(directory, admin):
    add(admin, "data", "lookup.example")
    _, answer = directory.post(form(user="data", domain="lookup.example"))
    assert fs_locate_user(answer, "lookup.example", "data") is not None
    _, answer = directory.post(form(user="data", domain="lookup.example", key="ip"))
    assert is_not_found(answer)


# --- fail closed ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"action": "sip_auth", "user": "nobody", "domain": "closed.example"},  # unknown
        {"action": "sip_auth", "user": "off", "domain": "closed.example"},  # disabled
        {"action": "sip_auth", "user": "on' OR '1'='1", "domain": "closed.example"},
        {"action": "sip_auth", "user": "on", "domain": "closed.example' OR realm LIKE '%"},
        {"action": "sip_auth", "user": "on\"/><user id=\"x", "domain": "closed.example"},
        {"action": "sip_auth", "user": "on", "domain": "closed.example", "key_value": "other.example"},
        {"action": "reverse-auth-lookup", "user": "on", "domain": "closed.example"},
        {"action": "group_call", "user": "on", "domain": "closed.example"},
        {"action": "sip_auth", "user": "on", "domain": "closed.example", "section": "dialplan"},
        {"action": "sip_auth", "user": "on", "domain": "closed.example", "purpose": "network-list"},
    ],
    ids=["unknown", "disabled", "sqli-user", "sqli-domain", "xml-injection", "domain-mismatch",
         "reverse-auth", "group_call", "other-section", "network-list"],
)
def test_fail_closed_answers(directory, admin, fields):
    if user_id(admin, "on", "closed.example") is None:
        add(admin, "on", "closed.example")
        add(admin, "off", "closed.example")
        users.set_enabled(admin, "off", "closed.example", False)
    status, answer = directory.post(form(**fields))
    assert status == 200 and is_not_found(answer)
    status, answer = directory.post(form(action="sip_auth", user="on", domain="closed.example"))
    assert fs_locate_user(answer, "closed.example", "on") is not None  # the control: it is served


@pytest.mark.parametrize(
    "auth",
    [auth_header(password="wrong"), auth_header(user="other"), "", "Basic !!!notbase64", "Bearer abc",
     auth_header().replace("Basic", "Digest")],
    ids=["wrong-password", "wrong-user", "none", "garbage", "bearer", "digest-scheme"],
)
def test_wrong_credentials_are_forbidden(directory, auth):
    status, body = directory.post(form(action="sip_auth", user="on", domain="closed.example"), auth=auth)
    assert status == 403 and b"a1-hash" not in body


def test_parsed_heads_are_remembered_per_head_not_per_client(directory):
    """The server remembers parsed request heads; a head that differs only in its credentials is
    a different head, so a good request never lends its credentials to the next one."""
    body = form(action="sip_auth", user="on", domain="closed.example")
    for auth, status in [(auth_header(), 200), (auth_header(password="wrong"), 403), (auth_header(), 200),
                         (auth_header(password="wrong"), 403)]:
        got, answer = directory.post(body, auth=auth)
        assert got == status and (b"a1-hash" in answer) == (status == 200)


def test_addresses_outside_the_allowlist_are_forbidden(module_dsn):
    server = DirectoryProcess(module_dsn, allow=("10.0.0.0/8", "::1/128")).start()
    try:
        # Refused when accepted, before a byte is read: the 403 comes without a request.
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 403 ") and answer.endswith(b"Connection: close\r\n\r\n")
    finally:
        server.stop()


def test_malformed_and_oversized_bodies(directory):
    for body in [b"section=directory&user=%ff%fe&domain=x", b"section=directory&user=\xff", b"\x00\x01garbage"]:
        status, answer = directory.post(body)
        assert status == 200 and is_not_found(answer)
    status, answer = directory.post(form(action="sip_auth", user="on", domain="closed.example") + "&x=" + "a" * 70000)
    assert status == 200 and is_not_found(answer)
    assert directory.post("", method="GET")[0] == 405
    assert directory.post(form(user="on", domain="closed.example"), path="/other")[0] == 404


def raw_exchange(port: int, data: bytes, wait_for: bytes = b"</document>\n") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        received = b""
        while True:
            chunk = sock.recv(65536)
            received += chunk
            if not chunk or received.endswith(wait_for):
                return received


def test_bad_http_is_refused_and_the_connection_closed(directory):
    auth = auth_header().encode()
    cases = {
        b"GARBAGE\r\n\r\n": b"400",
        b"POST /directory HTTP/1.1\r\nAuthorization: " + auth + b"\r\n\r\n": b"411",
        b"POST /directory HTTP/1.1\r\nAuthorization: " + auth + b"\r\nContent-Length: x\r\n\r\n": b"400",
        b"POST /directory HTTP/1.1\r\nAuthorization: " + auth + b"\r\nTransfer-Encoding: chunked\r\n\r\n": b"400",
        b"POST /directory HTTP/1.1\r\nAuthorization: " + auth + b"\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n":
            b"400",
        b"POST /directory HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n": b"431",
    }
    for request, status in cases.items():
        answer = raw_exchange(directory.port, request, wait_for=b"\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 " + status) and b"Connection: close" in answer


def test_keep_alive_and_expect_continue(directory, admin):
    user_id(admin, "on", "closed.example") or add(admin, "on", "closed.example")
    body = form(action="sip_auth", user="on", domain="closed.example").encode()
    head = (b"POST /directory HTTP/1.1\r\nHost: x\r\nAuthorization: " + auth_header().encode()
            + b"\r\nContent-Length: %d\r\n" % len(body))
    with socket.create_connection(("127.0.0.1", directory.port), timeout=5) as sock:
        sock.sendall(head + b"Expect: 100-continue\r\n\r\n")
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        first = b""
        while not first.endswith(b"</document>\n"):
            first += sock.recv(65536)
        sock.sendall(head + b"\r\n" + body)  # the same connection again
        second = b""
        while not second.endswith(b"</document>\n"):
            second += sock.recv(65536)
    for answer in (first, second):
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
        assert fs_locate_user(answer.split(b"\r\n\r\n", 1)[1], "closed.example", "on") is not None


def test_values_from_the_database_cannot_break_the_xml(directory, admin):
    add(admin, "quoted", "escape.example")
    evil = 'Eve "<evil/>" & \'co\'\x01 ${system(id)}'
    admin.execute("UPDATE users SET display_name = %s WHERE username = 'quoted'", (evil,))
    _, answer = directory.post(form(action="sip_auth", user="quoted", domain="escape.example"))
    user = fs_locate_user(answer, "escape.example", "quoted")
    assert variables(user)["effective_caller_id_name"] == evil.replace("\x01", "")
    assert len(parse(answer).findall(".//user")) == 1


# --- invalidation -----------------------------------------------------------------------------


def a1_of(directory: DirectoryProcess, username: str, realm: str) -> str | None:
    _, answer = directory.post(form(action="sip_auth", user=username, domain=realm))
    user = fs_locate_user(answer, realm, username)
    return None if user is None else param(user, "a1-hash")


class Invalidations:
    """Waits until the server has handled the notification of a change: its flush hook
    (``xml_flush_cache`` in the daemon) runs right after the cache entry is dropped."""

    def __init__(self, flush_file: str) -> None:
        self.path = flush_file

    def count(self, address: str) -> int:
        try:
            with open(self.path) as fh:
                return fh.read().split().count(address)
        except FileNotFoundError:
            return 0

    def wait(self, address: str, before: int) -> None:
        deadline = time.monotonic() + 10
        while self.count(address) <= before:
            assert time.monotonic() < deadline, f"no invalidation for {address}"
            time.sleep(0.002)


def test_changes_are_seen_by_the_next_request_not_after_the_ttl(directory, admin, flush_file):
    """TTL is 300 s: every answer below comes from the notification, not from expiry."""
    seen = Invalidations(flush_file)
    alice = "alice@notify.example"
    add(admin, "alice", "notify.example")

    def change(action) -> None:
        before = seen.count(alice)
        action()
        seen.wait(alice, before)

    for i in range(5):
        new = f"{PASSWORD}-{i}"
        assert a1_of(directory, "alice", "notify.example") is not None  # now cached
        change(lambda new=new: users.set_password(admin, "alice", "notify.example", new, rounds=FAST))
        assert a1_of(directory, "alice", "notify.example") == md5(f"alice:notify.example:{new}")
    change(lambda: users.set_enabled(admin, "alice", "notify.example", False))
    assert a1_of(directory, "alice", "notify.example") is None
    change(lambda: users.set_enabled(admin, "alice", "notify.example", True))
    assert a1_of(directory, "alice", "notify.example") is not None
    # A user created after a cached "not found" is found.
    assert a1_of(directory, "carol", "notify.example") is None
    before = seen.count("carol@notify.example")
    add(admin, "carol", "notify.example")
    seen.wait("carol@notify.example", before)
    assert a1_of(directory, "carol", "notify.example") == md5(f"carol:notify.example:{PASSWORD}")
    # A role change reaches toll_allow of cached users.
    before = seen.count("carol@notify.example")
    roles.revoke(admin, "user", ["call:transfer"])
    seen.wait("carol@notify.example", before)
    _, answer = directory.post(form(action="sip_auth", user="carol", domain="notify.example"))
    assert "call:transfer" not in variables(fs_locate_user(answer, "notify.example", "carol"))["toll_allow"]
    roles.grant(admin, "user", ["call:transfer"])
    before = seen.count("carol@notify.example")
    users.delete_user(admin, "carol", "notify.example")
    seen.wait("carol@notify.example", before)
    assert a1_of(directory, "carol", "notify.example") is None


def test_a_change_is_usually_seen_without_waiting(directory, admin):
    """Without waiting for the notification: a cache hit first drains what reached the socket.
    Counted, not asserted per request: delivery after COMMIT takes PostgreSQL a moment."""
    add(admin, "dave", "notify.example")
    fresh = 0
    for i in range(20):
        a1_of(directory, "dave", "notify.example")
        users.set_password(admin, "dave", "notify.example", f"{PASSWORD}-{i}", rounds=FAST)
        fresh += a1_of(directory, "dave", "notify.example") == md5(f"dave:notify.example:{PASSWORD}-{i}")
    assert fresh >= 1
    time.sleep(0.2)
    assert a1_of(directory, "dave", "notify.example") == md5(f"dave:notify.example:{PASSWORD}-19")


def test_last_login_updates_do_not_invalidate(module_dsn, admin):
    """Every REGISTER updates last_login: that must not send a notification."""
    add(admin, "quiet", "notify.example")
    with psycopg.connect(module_dsn, autocommit=True) as listen:
        listen.execute("LISTEN eslbridge_directory")
        admin.execute("UPDATE users SET last_login = now() WHERE username = 'quiet'")
        assert list(listen.notifies(timeout=0.5)) == []
        admin.execute("UPDATE users SET display_name = 'Q' WHERE username = 'quiet'")
        (message,) = list(listen.notifies(timeout=2, stop_after=1))
    assert '"username": "quiet"' in message.payload and "hash" not in message.payload
    assert "ha1" not in message.payload


# --- database trouble -------------------------------------------------------------------------


def test_slow_database_answers_not_found_within_the_deadline(module_dsn, admin):
    server = DirectoryProcess(module_dsn, deadline=0.5).start()
    try:
        add(admin, "slow", "slow.example")
        with psycopg.connect(module_dsn) as locker:
            locker.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
            status, answer = server.post(form(action="sip_auth", user="slow", domain="slow.example"))
            assert status == 200 and is_not_found(answer)
        assert a1_of(server, "slow", "slow.example") is not None  # and served once the lock is gone
    finally:
        server.stop()


def test_stopped_postgresql(tmp_path):
    cluster = PgCluster()
    server = None
    try:
        cluster.start()
        dsn = cluster.dsn("postgres")
        migrate(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            add(conn, "kept", "down.example")
        server = DirectoryProcess(dsn).start()
        cached = a1_of(server, "kept", "down.example")
        assert cached is not None
        cluster.stop()
        # Cached answers survive the outage (DESIGN section 9); misses fail closed.
        assert a1_of(server, "kept", "down.example") == cached
        status, answer = server.post(form(action="sip_auth", user="other", domain="down.example"))
        assert status == 200 and is_not_found(answer)
        cluster.start()
        with psycopg.connect(dsn, autocommit=True) as conn:
            users.set_password(conn, "kept", "down.example", "a new password", rounds=FAST)
        # After the listener reconnects, the cache was dropped and the change is served.
        # (The lookups' connection, which died with the server, fails closed once meanwhile.)
        new, answers = md5("kept:down.example:a new password"), []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not answers or answers[-1] != new):
            answers.append(a1_of(server, "kept", "down.example"))
            time.sleep(0.1)
        assert answers[-1] == new and set(answers) <= {cached, None, new}
    finally:
        if server is not None:
            server.stop()
        cluster.destroy()


def test_refusals_are_logged_once_a_minute_per_reason_without_credentials(module_dsn, capfd):
    """A wrong gateway-credentials makes FreeSWITCH fall back to its static directory: it must show."""
    body = form(action="sip_auth", user="on", domain="closed.example")
    server = DirectoryProcess(module_dsn).start()
    try:
        for _ in range(3):
            assert server.post(body, auth=auth_header(password="wrong-guess-1"))[0] == 403
        assert server.post(body, auth="")[0] == 403
        assert server.post(body)[0] == 200
    finally:
        server.stop()
    outside = DirectoryProcess(module_dsn, allow=("10.0.0.0/8",)).start()
    try:
        try:  # refused at accept, before a byte is read: a 403 written, then closed
            status = outside.post(body)[0]
        except OSError:  # closed before our request was written
            status = None
        assert status in (403, None)
    finally:
        outside.stop()
    err = capfd.readouterr().err
    refused = [line for line in err.splitlines() if "directory: refused a request from 127.0.0.1" in line]
    assert len([r for r in refused if "wrong basic auth credentials" in r]) == 1  # rate-limited: 3 -> 1
    assert len([r for r in refused if "no basic auth credentials" in r]) == 1
    assert err.count("directory: closed a connection from 127.0.0.1: not in its allow list") == 1
    assert "wrong-guess-1" not in err and GATEWAY_PASSWORD not in err
    assert base64.b64encode(b"freeswitch:wrong-guess-1").decode() not in err
