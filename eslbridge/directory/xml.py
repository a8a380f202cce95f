"""FreeSWITCH directory XML (mod_xml_curl answers), built as bytes.

The shape follows FreeSWITCH's documented response (a ``<user>`` directly under its
``<domain>``, which ``switch_xml_locate_user`` searches after the domain's groups):

    <document type="freeswitch/xml"><section name="directory"><domain name="D">
      <user id="U" cacheable="MS"><params><param name="a1-hash" .../><param name="dial-string" .../></params>
      <variables><variable name="user_context" .../>...</variables></user></domain></section></document>

Every attribute value goes through ``attr()``: escaped for a double-quoted attribute, with
characters XML 1.0 forbids removed, so no value from the database can break the document.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

NOT_FOUND = (
    b'<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n'
    b'<document type="freeswitch/xml">\n'
    b'  <section name="result">\n'
    b'    <result status="not found"/>\n'
    b"  </section>\n"
    b"</document>\n"
)

# The sofia part of FreeSWITCH's vanilla domain dial-string (conf/vanilla/directory/default.xml).
DIAL_STRING = (
    "{^^:sip_invite_domain=${dialed_domain}:presence_id=${dialed_user}@${dialed_domain}}"
    "${sofia_contact(*/${dialed_user}@${dialed_domain})}"
)

_INVALID_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;",
                          "\n": "&#10;", "\r": "&#13;", "\t": "&#9;"})


# Printable ASCII without markup needs nothing (most values): one scan instead of two passes.
_NEEDS_WORK = re.compile('[^\x20-\x7e]|[&<>"]')


def attr(value: str) -> str:
    """``value`` as the inside of a double-quoted XML attribute."""
    if _NEEDS_WORK.search(value) is None:
        return value
    return _INVALID_XML.sub("", value).translate(_ESCAPES)


def _pairs(tag: str, items: Iterable[tuple[str, str]], indent: str) -> str:
    return "".join(f'{indent}<{tag} name="{attr(n)}" value="{attr(v)}"/>\n' for n, v in items)


def user_document(
    domain: str,
    user_id: str,
    params: Iterable[tuple[str, str]],
    variables: Iterable[tuple[str, str]],
    cacheable_ms: int | None,
) -> bytes:
    """The directory document for one user. ``params`` must hold the credential (a1-hash):
    FreeSWITCH lets a user without password or a1-hash in without checking anything."""
    params = list(params)
    if not any(name == "a1-hash" and value for name, value in params):
        raise ValueError("a directory user needs an a1-hash")
    cacheable = f' cacheable="{cacheable_ms}"' if cacheable_ms else ""
    text = (
        '<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n'
        '<document type="freeswitch/xml">\n'
        '  <section name="directory">\n'
        f'    <domain name="{attr(domain)}">\n'
        f'      <user id="{attr(user_id)}"{cacheable}>\n'
        "        <params>\n"
        f"{_pairs('param', params, '          ')}"
        "        </params>\n"
        "        <variables>\n"
        f"{_pairs('variable', variables, '          ')}"
        "        </variables>\n"
        "      </user>\n"
        "    </domain>\n"
        "  </section>\n"
        "</document>\n"
    )
    return text.encode("utf-8")
