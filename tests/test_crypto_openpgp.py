"""OpenPGP interop: our messages open in pgcrypto and gpg, and theirs open in ours."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from eslbridge.keys.openpgp import DecryptionError, MessageKey, parse_message

PASSPHRASE = "pJ0c2Fy3k+Rb8x9V1m0nQw7s5T2aL4eK6uD8hG3iF1o="
SDP = ("v=0\r\no=FreeSWITCH 1 2 IN IP4 192.0.2.10\r\ns=FreeSWITCH\r\nc=IN IP4 192.0.2.10\r\n"
       "t=0 0\r\nm=audio 16384 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n")
TEXTS = ["+4930123456", "sip:1000@example.com", "Zoë Ünicode 東京", SDP, "x" * 10000]


@pytest.fixture(scope="module")
def key() -> MessageKey:
    return MessageKey(PASSPHRASE.encode())


class Gpg:
    """The real gpg binary with a throwaway home; the passphrase goes through a 0600 file."""

    def __init__(self, home: Path):
        self.home = home
        self.pass_file = home / "pass"
        self.pass_file.write_text(PASSPHRASE)
        self.pass_file.chmod(0o600)

    def run(self, *args: str, data: bytes, passphrase_file: Path | None = None) -> subprocess.CompletedProcess:
        cmd = ["gpg", "--homedir", str(self.home), "--batch", "--quiet", "--no-symkey-cache",
               "--pinentry-mode", "loopback", "--passphrase-file", str(passphrase_file or self.pass_file), *args]
        return subprocess.run(cmd, input=data, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def gpg() -> Iterator[Gpg]:
    home = Path(tempfile.mkdtemp(prefix="gpg", dir="/tmp"))  # short: gpg-agent's socket path is limited
    home.chmod(0o700)
    try:
        yield Gpg(home)
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def test_our_message_format(key):
    blob = key.encrypt(b"+4930123456")
    skesks, _ = parse_message(blob)
    assert [(s.cipher, s.s2k_type, s.hash_algo, s.count) for s in skesks] == [(9, 3, 8, 65536)]
    assert blob[0] == 0xC3  # new-format SKESK first
    assert key.encrypt(b"+4930123456") != blob  # random prefix per message


def test_pgcrypto_decrypts_ours(db: psycopg.Connection, key):
    # One database for all cases: each test database costs a CREATE DATABASE.
    for text in TEXTS:
        blob = key.encrypt(text.encode())
        assert db.execute("SELECT pgp_sym_decrypt(%s, %s)", (blob, PASSPHRASE)).fetchone()[0] == text
        # The seed's decrypt_data, as created by the migrations.
        assert db.execute("SELECT decrypt_data(%s, %s)", (blob, PASSPHRASE)).fetchone()[0] == text


def test_pgcrypto_wrong_passphrase_fails(db: psycopg.Connection, key):
    with pytest.raises(psycopg.errors.ExternalRoutineInvocationException, match="Wrong key"):
        db.execute("SELECT pgp_sym_decrypt(%s, %s)", (key.encrypt(b"x"), "other"))


PGCRYPTO_OPTIONS = [
    "",
    "cipher-algo=aes256, s2k-mode=3",
    "cipher-algo=aes192, s2k-mode=1, s2k-digest-algo=md5",
    "cipher-algo=aes128, s2k-mode=0",
    "sess-key=1, cipher-algo=aes256",
    "compress-algo=1, unicode-mode=1",
    "compress-algo=2, s2k-count=65011712",
    "disable-mdc=0, convert-crlf=0",
]


def test_we_decrypt_pgcrypto(db: psycopg.Connection, key):
    for options in PGCRYPTO_OPTIONS:
        for text in ["+4930123456", SDP, "Zoë 東京"]:
            blob = db.execute("SELECT pgp_sym_encrypt(%s, %s, %s)", (text, PASSPHRASE, options)).fetchone()[0]
            assert key.decrypt(blob).decode() == text, options


def test_we_refuse_pgcrypto_without_mdc(db: psycopg.Connection, key):
    blob = db.execute("SELECT pgp_sym_encrypt('x', %s, 'disable-mdc=1')", (PASSPHRASE,)).fetchone()[0]
    with pytest.raises(DecryptionError, match="no integrity protection"):
        key.decrypt(blob)


@pytest.mark.parametrize("text", TEXTS)
def test_gpg_decrypts_ours(gpg, key, text):
    out = gpg.run("--decrypt", data=key.encrypt(text.encode()))
    assert out.returncode == 0, out.stderr
    # The literal packet is UTF-8 text ('u'); gpg writes text with local (LF) line endings.
    assert out.stdout == text.replace("\r\n", "\n").encode()


def test_gpg_wrong_passphrase_fails(gpg, key, tmp_path):
    wrong = tmp_path / "wrong"
    wrong.write_text("not the passphrase")
    out = gpg.run("--decrypt", data=key.encrypt(b"+4930123456"), passphrase_file=wrong)
    assert out.returncode != 0
    assert b"+4930123456" not in out.stdout


@pytest.mark.parametrize("options", [
    [],  # gpg's defaults: AES-256 here, ZIP compression, SHA-1 S2K with a huge count
    ["--cipher-algo", "AES128", "--s2k-digest-algo", "SHA256", "--compress-algo", "zlib"],
    ["--cipher-algo", "AES192", "--s2k-mode", "1", "--compress-algo", "bzip2"],
    ["--compress-algo", "none", "--s2k-digest-algo", "SHA512", "--textmode"],
    ["--armor"],
])
def test_we_decrypt_gpg(gpg, key, options):
    out = gpg.run("--symmetric", *options, data=SDP.encode())
    assert out.returncode == 0, out.stderr
    blob = out.stdout
    if "--armor" in options:  # ASCII armour is not what columns hold; strip it here
        out = gpg.run("--dearmor", data=blob)
        blob = out.stdout
    assert key.decrypt(blob) == SDP.encode()


def test_wrong_key_is_a_clear_error(key):
    blob = key.encrypt(b"+4930123456")
    with pytest.raises(DecryptionError, match="wrong key") as e:
        MessageKey(b"another passphrase").decrypt(blob)
    assert "4930123456" not in str(e.value)


@pytest.mark.parametrize("where", [-1, -10, -25, 40])
def test_tampering_is_detected(key, where):
    plain = b"+4930123456 and some more text to tamper with"
    blob = bytearray(key.encrypt(plain))
    blob[where] ^= 0x01
    with pytest.raises(DecryptionError) as e:
        key.decrypt(bytes(blob))
    assert "+4930123456" not in str(e.value)


def test_tampered_mdc_is_named(key):
    blob = bytearray(key.encrypt(b"+4930123456"))
    blob[-1] ^= 0x80  # last byte of the MDC hash
    with pytest.raises(DecryptionError, match="integrity check"):
        key.decrypt(bytes(blob))


@pytest.mark.parametrize("blob", [b"", b"\x00\x01", b"plain text", b"\xc3\x0d\x04\x09", b"\xc3\x01\x04\xd2\x00"])
def test_garbage_is_a_clear_error(key, blob):
    with pytest.raises(DecryptionError):
        key.decrypt(blob)


def test_truncated_message_is_refused(key):
    blob = key.encrypt(b"+4930123456")
    for n in (1, 10, 16, len(blob) - 1):
        with pytest.raises(DecryptionError):
            key.decrypt(blob[:n])


def test_repr_hides_passphrase(key):
    assert PASSPHRASE not in repr(key)
    assert PASSPHRASE not in repr(key.derived)
    assert key.derived.key.hex() not in repr(key.derived)
