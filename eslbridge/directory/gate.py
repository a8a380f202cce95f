"""Who may ask the directory (DESIGN section 5): the allow list, basic auth, the one path, POST.

Requests from outside ``allow`` or without the right basic-auth credentials get 403 and nothing
else; each refusal is logged once a minute per reason (FreeSWITCH falls back to its static
directory on a 403: an operator must hear of it), never with the credentials.
"""

from __future__ import annotations

import base64
import hmac
import logging
from collections.abc import Callable, Container, Mapping

from eslbridge.config import DirectoryConfig
from eslbridge.ops.logs import LogOnce

log = logging.getLogger("eslbridge.directory.service")  # one name for the service's log lines, as before


class RequestGate:
    """``check(...)``: None when the request may be answered, else the (status, body) to send.
    ``count(outcome)`` counts each refusal (forbidden, bad_path, bad_method)."""

    def __init__(self, config: DirectoryConfig, allow: Container[str], count: Callable[[str], None]) -> None:
        self._allow = allow
        self._count = count
        self._path = config.path.encode()
        self._credentials = f"{config.username}:{config.password.reveal()}".encode()
        # What libcurl sends, byte for byte: one comparison for the common case.
        self._basic = b"Basic " + base64.b64encode(self._credentials)
        self._refusal_log = LogOnce(log)

    def check(self, client_ip: str, method: bytes, path: bytes,
              headers: Mapping[bytes, bytes]) -> tuple[int, bytes] | None:
        refusal = self._refusal(client_ip, headers.get(b"authorization"))
        if refusal is not None:
            self._count("forbidden")
            # FreeSWITCH falls back to its static directory on a 403: an operator must hear of it.
            self._refusal_log.warning(refusal, "directory: refused a request from %s: %s", client_ip, refusal)
            return 403, b""
        if path != self._path:
            self._count("bad_path")
            return 404, b""
        if method != b"POST":
            self._count("bad_method")
            return 405, b""
        return None

    def _refusal(self, client_ip: str, header: bytes | None) -> str | None:
        """Why a request gets 403 (a few fixed texts: they key the rate limit), None when it may pass."""
        if client_ip not in self._allow:
            return "address not in directory.allow"
        if self._authorized(header):
            return None
        if not header:
            return "no basic auth credentials (set gateway-credentials in xml_curl.conf.xml)"
        return "wrong basic auth credentials (compare gateway-credentials with directory.username/password_file)"

    def _authorized(self, header: bytes | None) -> bool:
        if header is not None and hmac.compare_digest(header, self._basic):  # constant time in the content
            return True
        scheme, _, encoded = (header or b"").partition(b" ")
        try:
            given = base64.b64decode(encoded.strip(), validate=True)
        except ValueError:
            given = b""
        ok = hmac.compare_digest(given, self._credentials)  # constant time in the secret's content
        return ok and scheme.lower() == b"basic"
