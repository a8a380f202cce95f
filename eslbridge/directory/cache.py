"""The directory cache: rendered answers per (username, realm), for ``cache_seconds``.

Both found and not-found answers are cached: a user created later is announced by the
INSERT notification, which evicts the negative entry, and not caching misses would let
anyone who can reach FreeSWITCH turn random user names into database queries. The size is
bounded (oldest entries go first), so random names cannot grow memory either.

Invalidation races: a lookup that read the database before an invalidation arrived must not
store its (possibly old) answer after it. ``generation`` counts invalidations; ``put`` is
given the generation seen before the query and refuses to store when it has moved.
"""

from __future__ import annotations

import time
import uuid
from typing import NamedTuple

MAX_ENTRIES = 100_000


class Entry(NamedTuple):
    expires: float  # time.monotonic()
    body: bytes  # the XML answer
    role_id: uuid.UUID | None  # so a role change can find its users; None for not-found


class DirectoryCache:
    def __init__(self, ttl: float, max_entries: int = MAX_ENTRIES) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.generation = 0
        self._entries: dict[tuple[str, str], Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple[str, str]) -> Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires <= time.monotonic():
            del self._entries[key]
            return None
        return entry

    def put(self, key: tuple[str, str], body: bytes, role_id: uuid.UUID | None, generation: int) -> bool:
        if self.ttl <= 0 or generation != self.generation:
            return False
        if key not in self._entries and len(self._entries) >= self.max_entries:
            del self._entries[next(iter(self._entries))]  # dicts keep insertion order: the oldest
        self._entries[key] = Entry(time.monotonic() + self.ttl, body, role_id)
        return True

    def invalidate(self, key: tuple[str, str]) -> None:
        self.generation += 1
        self._entries.pop(key, None)

    def invalidate_role(self, role_id: uuid.UUID) -> list[tuple[str, str]]:
        """Drop the entries of users holding ``role_id``; returns their keys."""
        self.generation += 1
        keys = [k for k, e in self._entries.items() if e.role_id == role_id]
        for key in keys:
            del self._entries[key]
        return keys

    def clear(self) -> list[tuple[str, str]]:
        """Drop everything; returns the keys that were cached."""
        self.generation += 1
        keys = list(self._entries)
        self._entries.clear()
        return keys
