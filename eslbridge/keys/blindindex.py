"""Blind indexes: equality search over encrypted columns without decrypting (DESIGN section 8).

A blind index is ``HMAC-SHA256(blind key, kind + NUL + normalise(kind, value))``. The kind is
part of the MAC so a number and a URI that happen to read the same never collide. Writers
and searchers must use the same normalisation, so it lives here, public:

``number`` (``normalize_number``)
    Whitespace, ``-``, ``.``, ``/``, ``(`` and ``)`` are removed; a leading ``00`` becomes
    ``+``; a leading ``+`` is kept; anything else (digits, ``*``, ``#``, letters such as
    ``anonymous``) is kept as is. ``+49 (30) 1234-56`` and ``0049301234 56`` are equal;
    ``030123456`` is not (national numbers are not expanded: that needs the caller's country).
    A ``tel:`` URI is reduced to its number.
``uri`` (``normalize_uri``)
    ``[display name] <scheme:user@host:port;params?headers>`` becomes ``scheme:user@host``:
    the scheme and host are lower-cased, the port, URI parameters and headers are dropped
    (``transport=udp`` or ``:5060`` name the route, not the party), percent-escapes in the
    user part are decoded (RFC 3261 19.1.4 compares them decoded) and the user part keeps its
    case (RFC 3261 user parts are case-sensitive). IP hosts take ``normalize_ip`` form. A URI
    without a scheme is taken as ``sip:``. ``sip`` and ``sips`` stay different (RFC 3261).
    So ``"Bob" <sip:1000@Example.COM:5060;transport=udp>`` equals ``sip:1000@example.com``.
``ip`` (``normalize_ip``)
    ``ipaddress`` canonical form; brackets around IPv6 are removed and IPv4-mapped IPv6
    addresses become IPv4.
``call_id`` (``normalize_call_id``)
    A SIP Call-ID (``1-16590@127.0.0.1``) with surrounding whitespace removed and nothing else
    changed: RFC 3261 compares Call-IDs byte for byte, case included.

Empty or malformed values raise ``ValueError``.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from urllib.parse import unquote

_NUMBER_NOISE = re.compile(r"[\s\-./()]")


def normalize_number(value: str) -> str:
    """Canonical form of a phone number (see the module docstring)."""
    number = value.strip()
    if number[:4].lower() == "tel:":
        number = number[4:].split(";", 1)[0]
    number = _NUMBER_NOISE.sub("", number)
    if number.startswith("00"):
        number = "+" + number[2:]
    if not number or number == "+":
        raise ValueError("empty phone number")
    return number


def normalize_ip(value: str) -> str:
    """Canonical form of an IPv4 or IPv6 address."""
    text = value.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"not an IP address: {value!r}") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.compressed


def _normalize_host(host: str) -> str:
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            raise ValueError("unterminated IPv6 host in SIP URI")
        return "[" + normalize_ip(host[1:end]) + "]"
    host = host.split(":", 1)[0].rstrip(".").lower()
    if host.strip("0123456789."):
        return host  # a domain name: only digits and dots can be an IPv4 literal (ipaddress is slow to refuse)
    try:
        return normalize_ip(host)
    except ValueError:
        return host


def normalize_uri(value: str) -> str:
    """Canonical ``scheme:user@host`` form of a SIP URI (see the module docstring)."""
    text = value.strip()
    if "<" in text:  # name-addr: "Display" <sip:...>
        start = text.rfind("<")
        end = text.find(">", start)
        if end < 0:
            raise ValueError("unterminated <...> in SIP URI")
        text = text[start + 1:end].strip()
    scheme, sep, rest = text.partition(":")
    if not sep or "@" in scheme or not scheme.isalpha():
        scheme, rest = "sip", text
    scheme = scheme.lower()
    if scheme == "tel":
        return "tel:" + normalize_number(rest)
    user, at, hostpart = rest.rpartition("@")
    # Parameters and headers follow the host (user parts may hold ';', e.g. phone-context).
    host = _normalize_host(re.split(r"[;?]", hostpart, maxsplit=1)[0].strip())
    if not host:
        raise ValueError("SIP URI without a host")
    return f"{scheme}:{unquote(user)}@{host}" if at else f"{scheme}:{host}"


def normalize_call_id(value: str) -> str:
    """A SIP Call-ID as compared (see the module docstring)."""
    call_id = value.strip()
    if not call_id:
        raise ValueError("empty Call-ID")
    return call_id


NORMALIZERS = {"number": normalize_number, "uri": normalize_uri, "ip": normalize_ip, "call_id": normalize_call_id}


def blind_index(key: bytes, kind: str, value: str) -> bytes:
    """HMAC-SHA256 of the normalised value: 32 bytes for a ``*_hash`` column."""
    normalize = NORMALIZERS.get(kind)
    if normalize is None:
        raise ValueError(f"unknown blind index kind {kind!r}; expected one of {sorted(NORMALIZERS)}")
    message = kind.encode() + b"\0" + normalize(value).encode("utf-8")
    return hmac.digest(key, message, "sha256")  # one-shot: OpenSSL's HMAC without the hmac.HMAC object
