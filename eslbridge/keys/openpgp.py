"""OpenPGP symmetric messages (RFC 4880) for personal data at rest (DESIGN section 8).

Written by hand on top of ``cryptography`` because DESIGN requires it and no maintained Python
OpenPGP library works with current ``cryptography`` releases; only the symmetric subset is here.

What we write, per message::

    SKESK v4 (tag 3): AES-256, S2K type 3 (iterated + salted), SHA-256, count 65536
    SEIPD v1 (tag 18): AES-256 CFB, zero IV, over
        random prefix (16 bytes + its last two repeated)
        literal data packet (tag 11, format 'u' = UTF-8 text, no file name, date 0)
        MDC packet (tag 19: SHA-1 of everything before it, including the 0xD3 0x14 header)

PostgreSQL's ``pgp_sym_decrypt`` reads it (it refuses format 'b' with "Not text data", so
we mark the data as UTF-8 text; 'u' also tells pgcrypto to convert it to the database
encoding) and so does ``gpg --decrypt``.

Why the session key is the S2K output with a fixed salt per key, not a fresh session key
per message: iterated S2K is slow by design (a hash over ``count`` bytes), and paying it on
every phone number would cost milliseconds. So each key's S2K salt is fixed (derived from
its passphrase, see ``DerivedKey.for_passphrase``) and the S2K runs once per key. Every
message still starts with a fresh random 16-byte prefix; under CFB with a zero IV the
first ciphertext block is then random, which makes it CFB with a random IV: ciphertexts of
equal plaintexts differ and reusing the key across messages is sound (as for any CFB key).
The alternative, a per-message session key wrapped in the SKESK by a fixed S2K key, is
worse: RFC 4880 wraps it in CFB with a zero IV, so with a fixed wrapping key every SKESK
XORs its session key with the same keystream, and two messages leak the XOR of their keys.

Why count 65536 (pgcrypto's smallest default) rather than gpg's millions: our passphrases
are 32 random bytes, which no iteration count makes stronger, while ``pgp_sym_decrypt`` in
SQL (GDPR export, ``decrypt_data``) pays the S2K again for every row it decrypts.

Reading accepts what pgcrypto and gpg write: S2K types 0, 1 and 3 with MD5, SHA-1 and
SHA-2 hashes; AES-128/192/256; a session key in the SKESK or not; old or new packet headers
with partial body lengths; uncompressed, ZIP, ZLIB or BZip2 data. The MDC is always checked;
messages without one (tag 9) are refused.
"""

from __future__ import annotations

import bz2
import hashlib
import hmac
import os
import struct
import threading
import zlib
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.ciphers.modes import ECB
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

try:  # cryptography >= 48 keeps CFB (OpenPGP's mode) among the "decrepit" ciphers; 49 removes the old name
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:  # pragma: no cover - older cryptography
    from cryptography.hazmat.primitives.ciphers.modes import CFB

from eslbridge.errors import EslBridgeError

# Largest plaintext we inflate: a compressed message must not become a memory bomb.
MAX_PLAINTEXT = 64 * 1024 * 1024

CIPHER_KEY_SIZES = {7: 16, 8: 24, 9: 32}  # AES-128, AES-192, AES-256
HASHES = {1: "md5", 2: "sha1", 8: "sha256", 9: "sha384", 10: "sha512", 11: "sha224"}

OUR_CIPHER = 9  # AES-256
OUR_HASH = 8  # SHA-256
OUR_COUNT_BYTE = 0x60  # (16 + 0) << (6 + 6) = 65536 bytes hashed

TAG_SKESK, TAG_SED, TAG_COMPRESSED, TAG_MARKER, TAG_LITERAL, TAG_SEIPD, TAG_MDC = 3, 9, 8, 10, 11, 18, 19
MDC_HEADER = b"\xd3\x14"  # new-format tag 19, length 20
BLOCK = 16  # AES block size


class DecryptionError(EslBridgeError):
    """A message could not be decrypted. The message text never contains plaintext or keys."""


def s2k_count(count_byte: int) -> int:
    """Number of bytes an iterated S2K hashes (RFC 4880 3.7.1.3)."""
    return (16 + (count_byte & 15)) << ((count_byte >> 4) + 6)


def s2k(passphrase: bytes, key_size: int, hash_algo: int, salt: bytes = b"", count: int = 0) -> bytes:
    """String-to-key: simple (no salt), salted (count 0) or iterated and salted."""
    name = HASHES.get(hash_algo)
    if name is None:
        raise DecryptionError(f"unsupported S2K hash algorithm {hash_algo}")
    data = salt + passphrase
    count = max(count, len(data))
    key = b""
    preload = 0
    while len(key) < key_size:
        # Each further hash context is preloaded with one more zero byte (RFC 4880 3.7.1.1).
        h = hashlib.new(name, b"\0" * preload)
        if count == len(data):
            h.update(data)
        else:
            chunk = data * (65536 // len(data) + 1)
            full, rest = divmod(count, len(chunk))
            for _ in range(full):
                h.update(chunk)
            h.update(chunk[:rest])
        key += h.digest()
        preload += 1
    return key[:key_size]


@dataclass(frozen=True)
class DerivedKey:
    """A passphrase's S2K result for one fixed salt: what our messages are encrypted with."""

    key: bytes = field(repr=False)
    salt: bytes

    @classmethod
    def for_passphrase(cls, passphrase: bytes) -> DerivedKey:
        # The salt is public in every message; deriving it from the passphrase by a PRF keeps it
        # stable across restarts (so a message's salt names its key) and reveals nothing.
        salt = hmac.new(passphrase, b"eslbridge/s2k-salt/v1", hashlib.sha256).digest()[:8]
        key = s2k(passphrase, CIPHER_KEY_SIZES[OUR_CIPHER], OUR_HASH, salt, s2k_count(OUR_COUNT_BYTE))
        return cls(key, salt)


# --- packet framing -------------------------------------------------------------------------


def _new_header(tag: int, length: int) -> bytes:
    if length < 192:
        return bytes((0xC0 | tag, length))
    if length < 8384:
        length -= 192
        return bytes((0xC0 | tag, (length >> 8) + 192, length & 0xFF))
    return bytes((0xC0 | tag, 0xFF)) + struct.pack(">I", length)


def _packets(data: bytes) -> list[tuple[int, bytes]]:
    """Split a packet sequence into (tag, body), joining partial body lengths."""
    out = []
    pos = 0
    try:
        while pos < len(data):
            first = data[pos]
            pos += 1
            if not first & 0x80:
                raise DecryptionError("not an OpenPGP message")
            if first & 0x40:  # new format
                tag = first & 0x3F
                body = b""
                while True:
                    o = data[pos]
                    if o < 192:
                        n, pos = o, pos + 1
                    elif o < 224:
                        n, pos = ((o - 192) << 8) + data[pos + 1] + 192, pos + 2
                    elif o == 255:
                        n, pos = struct.unpack_from(">I", data, pos + 1)[0], pos + 5
                    else:  # partial body length: more chunks follow
                        n = 1 << (o & 0x1F)
                        body += data[pos + 1:pos + 1 + n]
                        pos += 1 + n
                        continue
                    body += data[pos:pos + n]
                    pos += n
                    break
            else:  # old format
                tag = (first >> 2) & 0x0F
                ltype = first & 3
                if ltype == 3:  # indeterminate: to the end
                    n = len(data) - pos
                else:
                    size = 1 << ltype
                    n = int.from_bytes(data[pos:pos + size], "big")
                    pos += size
                body = data[pos:pos + n]
                pos += n
            if pos > len(data):
                raise DecryptionError("truncated OpenPGP message")
            out.append((tag, body))
    except (IndexError, struct.error):
        raise DecryptionError("truncated OpenPGP message") from None
    return out


# --- encryption -----------------------------------------------------------------------------


def _cfb(key: bytes, iv: bytes = b"\0" * BLOCK):
    return Cipher(algorithms.AES(key), CFB(iv))


class _Encryptor:
    """Writes our messages under one derived key, through ONE long-lived CFB encryptor.

    Why not a Cipher per message: building one costs ~15 us, most of a short message's
    encryption. A SEIPD body is plain CFB with a zero IV over ``prefix + literal + MDC``, and
    CFB's state between blocks is just the previous ciphertext block. So each message starts
    at a block boundary of the shared stream with a fresh random block R: the stream yields
    C1 = R xor E(previous block), uniformly random like any C1 = E(0) xor random prefix, and the
    message's prefix is defined as C1 xor E(0). From C1 on, the stream encrypts the rest
    exactly as a fresh CFB(iv=0) would (it chains on C1). Zero filler then realigns the
    stream to a block boundary; its ciphertext is discarded. Readers see ordinary messages.
    """

    def __init__(self, derived: DerivedKey) -> None:
        self._skesk = _new_header(TAG_SKESK, 13) + bytes((4, OUR_CIPHER, 3, OUR_HASH)) + derived.salt \
            + bytes((OUR_COUNT_BYTE,))
        self._stream = _cfb(derived.key).encryptor()
        ecb = Cipher(algorithms.AES(derived.key), ECB()).encryptor()
        self._e_zero = int.from_bytes(ecb.update(b"\0" * BLOCK), "big")
        self._lock = threading.Lock()  # the stream's state is shared: one message at a time

    def encrypt(self, plaintext: bytes) -> bytes:
        """Encrypt UTF-8 text bytes into an OpenPGP message (see the module docstring)."""
        literal_body = b"u\0\0\0\0\0" + plaintext  # format, name length 0, date 0
        literal = _new_header(TAG_LITERAL, len(literal_body)) + literal_body
        with self._lock:
            c1 = self._stream.update(os.urandom(BLOCK))
            prefix = (int.from_bytes(c1, "big") ^ self._e_zero).to_bytes(BLOCK, "big")
            rest = prefix[-2:] + literal + MDC_HEADER
            rest += hashlib.sha1(prefix + rest).digest()
            body = self._stream.update(rest)
            self._stream.update(b"\0" * (-len(body) % BLOCK))
        seipd_len = 1 + BLOCK + len(body)
        return self._skesk + _new_header(TAG_SEIPD, seipd_len) + b"\x01" + c1 + body


# --- decryption -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Skesk:
    """A parsed SKESK packet: how to turn the passphrase into the message key."""

    cipher: int
    s2k_type: int
    hash_algo: int
    salt: bytes
    count: int
    encrypted_session_key: bytes

    @classmethod
    def parse(cls, body: bytes) -> Skesk:
        if len(body) < 4 or body[0] != 4:
            raise DecryptionError("unsupported SKESK packet version")
        cipher, s2k_type, hash_algo = body[1], body[2], body[3]
        if cipher not in CIPHER_KEY_SIZES:
            raise DecryptionError(f"unsupported cipher algorithm {cipher} (AES only)")
        if s2k_type == 0:
            salt, count, rest = b"", 0, body[4:]
        elif s2k_type == 1:
            salt, count, rest = body[4:12], 0, body[12:]
        elif s2k_type == 3:
            salt, count, rest = body[4:12], s2k_count(body[12]) if len(body) > 12 else 0, body[13:]
        else:
            raise DecryptionError(f"unsupported S2K type {s2k_type}")
        if s2k_type and (len(salt) != 8 or (s2k_type == 3 and len(body) < 13)):
            raise DecryptionError("truncated SKESK packet")
        return cls(cipher, s2k_type, hash_algo, salt, count, rest)

    def s2k_params(self) -> tuple[int, int, bytes, int]:
        """Everything the S2K output depends on besides the passphrase (a cache key)."""
        return self.cipher, self.hash_algo, self.salt, self.count

    def message_key(self, s2k_key: bytes) -> tuple[int, bytes]:
        """(cipher, key) of the data packet, given this packet's S2K output."""
        if not self.encrypted_session_key:
            return self.cipher, s2k_key
        dec = _cfb(s2k_key).decryptor()
        plain = dec.update(self.encrypted_session_key) + dec.finalize()
        cipher, key = plain[0], plain[1:]
        if CIPHER_KEY_SIZES.get(cipher) != len(key):
            raise DecryptionError("wrong key, or the message is corrupt")
        return cipher, key


def parse_message(blob: bytes) -> tuple[list[Skesk], bytes]:
    """The SKESK packets and the SEIPD body of a message."""
    skesks = []
    for tag, body in _packets(bytes(blob)):
        if tag == TAG_SKESK:
            skesks.append(Skesk.parse(body))
        elif tag == TAG_MARKER:
            continue
        elif tag == TAG_SEIPD:
            if not skesks:
                raise DecryptionError("message has no passphrase-encrypted session key")
            if not body or body[0] != 1:
                raise DecryptionError("unsupported encrypted data packet version")
            return skesks, body[1:]
        elif tag == TAG_SED:
            raise DecryptionError("message has no integrity protection (MDC); refused")
        else:
            raise DecryptionError(f"unexpected OpenPGP packet (tag {tag}) in a symmetric message")
    raise DecryptionError("message has no encrypted data packet")


def decrypt_data(cipher: int, key: bytes, encrypted: bytes) -> bytes:
    """Decrypt a SEIPD body (after its version byte), check the MDC, return the literal data."""
    if len(encrypted) < BLOCK + 2 + 22:
        raise DecryptionError("truncated OpenPGP message")
    dec = _cfb(key).decryptor()
    plain = dec.update(encrypted) + dec.finalize()
    if plain[BLOCK - 2:BLOCK] != plain[BLOCK:BLOCK + 2]:
        raise DecryptionError("wrong key, or the message is corrupt")
    body, mdc = plain[:-20], plain[-20:]
    if body[-2:] != MDC_HEADER or not hmac.compare_digest(hashlib.sha1(body).digest(), mdc):
        raise DecryptionError("integrity check (MDC) failed: the message was modified or is corrupt")
    return _literal_data(body[BLOCK + 2:-2])


def _literal_data(data: bytes, depth: int = 0) -> bytes:
    packets = _packets(data)
    if len(packets) != 1:
        raise DecryptionError("expected exactly one literal or compressed packet")
    tag, body = packets[0]
    if tag == TAG_LITERAL:
        if len(body) < 6:
            raise DecryptionError("truncated literal data packet")
        name_len = body[1]
        return body[2 + name_len + 4:]
    if tag == TAG_COMPRESSED and depth == 0:
        return _literal_data(_inflate(body), depth + 1)
    raise DecryptionError(f"unexpected OpenPGP packet (tag {tag}) inside the encrypted data")


def _inflate(body: bytes) -> bytes:
    algo, data = body[0], body[1:]
    if algo == 0:
        return data
    if algo in (1, 2):  # ZIP is raw deflate, ZLIB has a header
        d = zlib.decompressobj(-15 if algo == 1 else 15)
    elif algo == 3:
        d = bz2.BZ2Decompressor()
    else:
        raise DecryptionError(f"unsupported compression algorithm {algo}")
    try:
        out = d.decompress(data, MAX_PLAINTEXT + 1)
    except (zlib.error, OSError, ValueError):
        raise DecryptionError("compressed data is corrupt") from None
    if len(out) > MAX_PLAINTEXT:
        raise DecryptionError(f"decompressed message larger than {MAX_PLAINTEXT} bytes; refused")
    return out


class MessageKey:
    """One passphrase: encrypts our messages, decrypts anyone's. Never shows the passphrase.

    S2K results are cached per parameter set (bounded), so decrypting many messages written
    by pgcrypto with one salt, or by us, pays the iterated hash once.
    """

    CACHE_SIZE = 64

    def __init__(self, passphrase: bytes):
        if not passphrase:
            raise ValueError("empty passphrase")
        self._passphrase = passphrase
        self.derived = DerivedKey.for_passphrase(passphrase)
        self._encryptor = _Encryptor(self.derived)
        self._s2k_cache = {(OUR_CIPHER, OUR_HASH, self.derived.salt, s2k_count(OUR_COUNT_BYTE)): self.derived.key}

    def __repr__(self) -> str:
        return f"<MessageKey salt={self.derived.salt.hex()}>"

    def encrypt(self, plaintext: bytes) -> bytes:
        return self._encryptor.encrypt(plaintext)

    def wrote(self, blob: bytes) -> bool:
        """Whether the message uses this key's fixed S2K salt, i.e. we likely wrote it with this key."""
        try:
            return any(s.salt == self.derived.salt for s in parse_message(blob)[0])
        except DecryptionError:
            return False

    def decrypt(self, blob: bytes) -> bytes:
        skesks, encrypted = parse_message(blob)
        error = DecryptionError("wrong key, or the message is corrupt")
        for skesk in skesks:
            try:
                cipher, key = skesk.message_key(self._s2k(skesk))
                return decrypt_data(cipher, key, encrypted)
            except DecryptionError as e:
                error = e
        raise error

    def _s2k(self, skesk: Skesk) -> bytes:
        params = skesk.s2k_params()
        key = self._s2k_cache.get(params)
        if key is None:
            key = s2k(self._passphrase, CIPHER_KEY_SIZES[skesk.cipher], skesk.hash_algo, skesk.salt, skesk.count)
            if len(self._s2k_cache) >= self.CACHE_SIZE:
                # Drop the oldest foreign entry; our own derived key (first) stays.
                del self._s2k_cache[next(iter(list(self._s2k_cache)[1:]))]
            self._s2k_cache[params] = key
        return key


class Sealer:
    """AES-256-GCM for journal payloads (personal data at rest outside PostgreSQL).

    The journal needs no OpenPGP interop, so it uses an AEAD. Each Sealer draws a random
    16-byte salt; the record key is HKDF-SHA256(passphrase, salt) and the nonce is the
    record's sequence number, unique within one journal, so nonces never repeat under a key
    (random nonces would near GCM's 2**32 bound at a few thousand records per second over
    months). The sequence number is also the associated data, so records cannot be swapped.
    Sealed form: key id (2 bytes) + salt (16) + ciphertext and tag.
    """

    def __init__(self, passphrases: dict[int, bytes], active_id: int):
        self._passphrases = dict(passphrases)
        self._active_id = active_id
        self._salt = os.urandom(16)
        self._aeads: dict[tuple[int, bytes], AESGCM] = {}

    def __repr__(self) -> str:
        return f"<Sealer active={self._active_id}>"

    def _aead(self, key_id: int, salt: bytes) -> AESGCM:
        aead = self._aeads.get((key_id, salt))
        if aead is None:
            passphrase = self._passphrases.get(key_id)
            if passphrase is None:
                raise DecryptionError(f"journal record sealed with key {key_id}, which is not in the keyring")
            key = HKDF(hashes.SHA256(), 32, salt, b"eslbridge/journal/v1").derive(passphrase)
            if len(self._aeads) >= 64:
                self._aeads.clear()
            aead = self._aeads[(key_id, salt)] = AESGCM(key)
        return aead

    def seal(self, seq: int, data: bytes) -> bytes:
        aad = seq.to_bytes(8, "big")
        return (self._active_id.to_bytes(2, "big") + self._salt
                + self._aead(self._active_id, self._salt).encrypt(aad + b"\0" * 4, data, aad))

    def open(self, seq: int, blob: bytes) -> bytes:
        if len(blob) < 2 + 16 + 16:
            raise DecryptionError("sealed journal record too short")
        key_id, salt = int.from_bytes(blob[:2], "big"), blob[2:18]
        aad = seq.to_bytes(8, "big")
        try:
            return self._aead(key_id, salt).decrypt(aad + b"\0" * 4, blob[18:], aad)
        except InvalidTag:
            raise DecryptionError("journal record failed authentication (wrong key or modified)") from None
