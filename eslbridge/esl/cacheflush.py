"""FreeSWITCH's own directory cache follows a user change (DESIGN section 5).

FreeSWITCH caches what mod_xml_curl answered; when the directory learns that a user changed
(LISTEN/NOTIFY), every connected node is told ``bgapi xml_flush_cache id <user> <realm>``. Each
command runs in its own greenlet: a slow node delays no other and never the directory.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import gevent

from eslbridge.esl import protocol
from eslbridge.esl.inbound import InboundClient
from eslbridge.esl.protocol import UnsafeCommand

log = logging.getLogger(__name__)


class DirectoryCacheFlush:
    """``flush(username, realm)``: the directory's flush hook, fanned out to every connected node."""

    def __init__(self, clients: Mapping[str, InboundClient], timeout: float = 5.0) -> None:
        self._clients = clients
        self._timeout = timeout

    def __call__(self, username: str, realm: str) -> None:
        try:
            command = protocol.verb_line("xml_flush_cache", "id", username, realm)
        except UnsafeCommand as exc:  # the value came from the database: never let it shape a command
            log.warning("not flushing FreeSWITCH's cache for a directory user: %s", exc)
            return
        for name, client in self._clients.items():
            if client.connected:
                gevent.spawn(self._bgapi, name, client, command)

    def _bgapi(self, name: str, client: InboundClient, command: str) -> None:
        try:
            client.bgapi(command, timeout=self._timeout)
        except Exception as exc:
            log.warning("%s: %s failed: %s", name, command.split()[0], exc)
