"""What a mod_xml_curl directory request asks for.

mod_xml_curl POSTs the fetch's event headers form-encoded (``section``, ``tag_name``,
``key_name``, ``key_value``, then the params: ``action``, ``key``, ``user``, ``domain``,
``sip_auth_*``, ...). ``switch_xml_locate_user`` appends ``key``/``user``/``domain`` after any
merged channel variables, so for repeated fields the last one is the one FreeSWITCH looks up;
``parse_form`` keeps the last.

Served (a user lookup by id): ``action=sip_auth`` (REGISTER/INVITE digest), ``action=user_call``
(bridging to ``user/U@D``) and lookups without an action (``user_data``, ``user_exists``,
``set_user``). Everything else is answered "not found": other actions (``message-count``,
``reverse-auth-lookup``, ``group_call``, ``jsonrpc-authenticate``, ...), ``purpose=gateways``
and ``purpose=network-list`` (no gateways or ACLs here), other sections and keys.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import NamedTuple
from urllib.parse import unquote_plus

from eslbridge.accounts.users import REALM_RE, USERNAME_RE

SERVED_ACTIONS = frozenset({"sip_auth", "user_call", ""})
# The only fields the decision needs, found in one C-level scan of "&" + body (a real body has
# ~50 fields; splitting them all in Python took twice as long); the rest is never decoded.
# A field is "&name=value" or a bare "&name"; the lookahead makes the name match exactly.
_WANTED = re.compile(rb"&(section|tag_name|key_name|key_value|action|purpose|key|user|domain)(?:=([^&]*))?(?=&|\Z)")


class BadRequest(ValueError):
    """The body is not a form this service can read."""


class Lookup(NamedTuple):
    username: str
    realm: str  # lower-cased: realms are stored lower-case (users.check_realm)
    domain: str  # as FreeSWITCH asked (key_value), for <domain name=...>
    action: str


def lookup_of(body: bytes) -> Lookup | None:
    """``classify(parse_form(body))``, remembered per distinct set of wanted fields: a phone
    re-registers with the same user, domain and action every time (only nonces and such differ,
    and they are not among the wanted fields), so most requests skip decoding and validation."""
    return _lookup_of_fields(tuple(_WANTED.findall(b"&" + body)))


@functools.lru_cache(maxsize=10_000)
def _lookup_of_fields(found: tuple[tuple[bytes, bytes], ...]) -> Lookup | None:
    return classify(_decode(found))


def parse_form(body: bytes) -> dict[str, str]:
    """The wanted fields of an ``application/x-www-form-urlencoded`` body (last occurrence wins)."""
    return _decode(_WANTED.findall(b"&" + body))


def _decode(found: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    fields: dict[str, str] = {}
    for name, value in found:
        try:
            text = value.decode("ascii")
            # Most values need no decoding; unquote_plus is pure Python (a third of parse_form).
            fields[name.decode("ascii")] = unquote_plus(text, errors="strict") if b"%" in value or b"+" in value \
                else text
        except UnicodeError:
            raise BadRequest(f"field {name.decode('ascii')!r} is not valid percent-encoded UTF-8") from None
    return fields


def classify(fields: dict[str, str]) -> Lookup | None:
    """The user lookup this request asks for, or None when the answer is "not found"."""
    if fields.get("section") != "directory" or fields.get("purpose"):
        return None
    if fields.get("tag_name") != "domain" or fields.get("key_name") != "name":
        return None
    action = fields.get("action", "")
    if action not in SERVED_ACTIONS or fields.get("key", "id") != "id":
        return None
    user, domain, key_value = fields.get("user", ""), fields.get("domain", ""), fields.get("key_value", "")
    if domain and key_value and domain.lower() != key_value.lower():
        return None  # ambiguous: the document's domain must be the one FreeSWITCH searches for
    domain = domain or key_value
    realm = domain.lower()
    # Names that users.py would never store cannot exist: no database round trip for them.
    if not USERNAME_RE.fullmatch(user) or len(realm) > 253 or not REALM_RE.fullmatch(realm):
        return None
    return Lookup(user, realm, domain, action)
