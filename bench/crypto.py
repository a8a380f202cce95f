"""Cost of personal-data encryption and blind indexes (DESIGN sections 8 and 11).

Anchor: encrypting a phone number takes microseconds, not milliseconds, because the S2K runs
once per key. Compared in the same run with the naive way, a fresh S2K per message at
pgcrypto's default counts (65536..253952 bytes, SHA-1) and at gpg's (65011712, SHA-1).

    python -m bench.crypto [--n 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from collections.abc import Callable

from eslbridge.keys.keyring import Keyring, generate_keyring
from eslbridge.keys.openpgp import MessageKey, s2k, s2k_count

NUMBER = "+4930123456"
SDP = ("v=0\r\no=FreeSWITCH 1709300000 1709300001 IN IP4 192.0.2.10\r\ns=FreeSWITCH\r\nc=IN IP4 192.0.2.10\r\n"
       "t=0 0\r\nm=audio 16384 RTP/AVP 0 8 9 101 13\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
       "a=rtpmap:9 G722/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\n")


def per_call_us(fn: Callable[[], object], n: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="iterations per measurement")
    n = parser.parse_args().n
    tmp = f"/tmp/eslbridge-bench-crypto-{os.getpid()}"
    generate_keyring(f"{tmp}/keyring.yaml")
    ring = Keyring.load(f"{tmp}/keyring.yaml")
    shutil.rmtree(tmp)
    passphrase = ring.passphrase(ring.active_id).encode()

    start = time.perf_counter()
    MessageKey(passphrase)
    print(f"key load (one S2K, count {s2k_count(0x60)}, SHA-256): {(time.perf_counter() - start) * 1e3:.2f} ms once")
    result = {"bench": "crypto"}
    for label, text in (("phone number", NUMBER), (f"SDP ({len(SDP)} bytes)", SDP)):
        blob = ring.encrypt(text)
        enc = per_call_us(lambda text=text: ring.encrypt(text), n)
        dec = per_call_us(lambda blob=blob: ring.decrypt(blob, ring.active_id), n)
        print(f"{label:>20}: encrypt {enc:7.1f} us   decrypt {dec:7.1f} us   ({len(blob)} bytes)")
        result.setdefault("encrypt_number_us", round(enc, 1))
    for kind, value in (("number", "+49 (30) 123-456"), ("uri", '"Bob" <sip:1000@Example.COM:5060;transport=udp>'),
                        ("ip", "2001:db8::1")):
        print(f"{'blind index ' + kind:>20}: {per_call_us(lambda k=kind, v=value: ring.blind_index(k, v), n):7.1f} us")

    naive_n = max(20, n // 500)
    for label, count_byte, hash_algo in (("pgcrypto min count", 0x60, 2), ("pgcrypto max count", 0x7E, 2),
                                         ("gpg default count", 0xFF, 2)):
        salt = os.urandom(8)
        iters = naive_n if count_byte < 0xFF else 5
        us = per_call_us(lambda c=count_byte, h=hash_algo, s=salt: s2k(passphrase, 32, h, s, s2k_count(c)), iters)
        print(f"{'naive: S2K per msg':>20}: {us:9.1f} us per message ({label}, {s2k_count(count_byte)} bytes SHA-1)")
        result.setdefault("naive_s2k_us", round(us, 1))
    print("bench-result: " + json.dumps(result))


if __name__ == "__main__":
    main()
