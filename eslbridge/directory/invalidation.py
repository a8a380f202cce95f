"""Cache invalidation (DESIGN section 5): the users trigger's NOTIFY -> our cache, the standby's
fences, and FreeSWITCH's own cache (``flush_hook``, i.e. ``xml_flush_cache``)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

from eslbridge.accounts.users import valid_identity
from eslbridge.directory.cache import DirectoryCache
from eslbridge.directory.replica import ReplicaRouter

log = logging.getLogger("eslbridge.directory.service")  # one name for the service's log lines, as before

FlushHook = Callable[[str, str], None]


class Invalidation:
    """``on_listen`` and ``on_notify`` are the NotifyListener's callbacks."""

    def __init__(self, cache: DirectoryCache, replica: ReplicaRouter | None, flush_hook: FlushHook | None,
                 count: Callable[[str], None]) -> None:
        self.cache = cache
        self.replica = replica
        self._flush_hook = flush_hook
        self._count = count

    def on_listen(self) -> None:
        """(Re)connected: what changed while we were away is unknown, so forget everything."""
        keys = self.cache.clear()
        log.debug("directory cache: LISTEN (re)connected, cleared %d entries", len(keys))
        if self.replica is not None:
            self.replica.fence_all()
        for username, realm in keys:
            self._flush(username, realm)

    def on_notify(self, payload: dict[str, Any]) -> None:
        self._count("invalidation")
        table, op = payload.get("table"), payload.get("op")
        log.debug("directory cache: invalidating after %s on %s", op, table)
        if table == "users" and op == "TRUNCATE":
            self.on_listen()
        elif table == "users":
            # Validated before use (the payload is whatever a database client wrote); an UPDATE names
            # the user twice (new and old key, mostly equal): one flush each.
            named = ((payload.get(u), payload.get(r))
                     for u, r in (("username", "realm"), ("old_username", "old_realm")))
            for username, realm in dict.fromkeys(key for key in named if valid_identity(*key)):
                self.cache.invalidate((username, realm))
                if self.replica is not None:
                    self.replica.fence((username, realm))
                self._flush(username, realm)
        elif table == "roles":
            try:
                role_id = uuid.UUID(str(payload.get("role_id")))
            except ValueError:
                return
            if self.replica is not None:  # the role reaches users the cache never saw
                self.replica.fence_all()
            for username, realm in self.cache.invalidate_role(role_id):
                self._flush(username, realm)

    def _flush(self, username: str, realm: str) -> None:
        if self._flush_hook is None:
            return
        try:
            self._flush_hook(username, realm)
        except Exception:  # the ESL link may be down; our own cache is already right
            log.warning("xml_flush_cache for a directory user failed", exc_info=True)
