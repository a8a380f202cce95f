"""Which configured FreeSWITCH node (``freeswitch[].name``) a channel belongs to.

What the outbound socket hands over names FreeSWITCH's own identity (``Core-UUID``,
``FreeSWITCH-Hostname``), never the name the operator gave the node, which is what every
row the correlator writes carries. Each node's inbound link teaches the map the identity its
events report. A channel is then matched by Core-UUID (one per FreeSWITCH process), else by
host name when a single node reports it (two FreeSWITCH on one host share it; a freshly
restarted one has a new Core-UUID until its first event arrives), else, with one node
configured, that node.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


class NodeMap:
    def __init__(self, names: Iterable[str]) -> None:
        self._names = tuple(names)
        self._core_of: dict[str, str] = {}  # node -> its current Core-UUID
        self._node_of_core: dict[str, str] = {}
        self._host_of: dict[str, str] = {}  # node -> FreeSWITCH-Hostname

    def learn(self, node: str, event: Mapping[str, str]) -> None:
        """Note the identity in one of ``node``'s events (cheap: called for every event)."""
        core = event.get("Core-UUID")
        if not core or self._core_of.get(node) == core:
            return
        old = self._core_of.get(node)
        if old is not None:
            self._node_of_core.pop(old, None)  # that FreeSWITCH process is gone
        self._core_of[node] = core
        self._node_of_core[core] = node
        host = event.get("FreeSWITCH-Hostname")
        if host:
            self._host_of[node] = host

    def resolve(self, channel: Mapping[str, str]) -> str | None:
        """The configured name of the node ``channel`` came from; None when it cannot be told."""
        node = self._node_of_core.get(channel.get("Core-UUID") or "")
        if node is not None:
            return node
        host = channel.get("FreeSWITCH-Hostname")
        same_host = [n for n, h in self._host_of.items() if h == host] if host else []
        if len(same_host) == 1:
            return same_host[0]
        return self._names[0] if len(self._names) == 1 else None
