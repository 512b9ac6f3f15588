"""supervisord keeps the gateway's listening socket open for the suite's whole life.

supervisord creates an ``[fcgi-program]``'s socket and hands it to each of its processes as
file descriptor 0, but it counts references and closes the socket when the last process of
the group exits, so a lone gateway killed would still leave clients "connection refused"
until its successor starts. This rpcinterface factory (supervisord loads it at start-up,
after it made the process groups) takes one more reference per named group and keeps it:
the socket then outlives every gateway process, and connections made while none runs wait
in its backlog for the next one (issue 22, docs/operations.md).
"""

from __future__ import annotations

from typing import Any


class SocketHolder:
    """The rpcinterface namespace ``flotilla``; holding is its whole job."""

    def __init__(self, supervisord: Any, groups: list[str]) -> None:
        self._held = []
        for name in groups:
            group = supervisord.process_groups.get(name)
            if group is None or not hasattr(group, "socket_manager"):
                raise ValueError(f"socket holder: no fcgi-program group {name!r}")
            self._held.append(group.socket_manager.get_socket())

    def held(self) -> int:
        """How many sockets are held (``supervisorctl`` has no command for it; for tests)."""
        return len(self._held)


def make(supervisord: Any, **config: str) -> SocketHolder:
    return SocketHolder(supervisord, config.get("groups", "").split())
