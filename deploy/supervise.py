"""``python -m flotilla.deploy.supervise -c CONF [-n]``: supervisord, with two changes to its
start, for every suite (``Suite.up``) and for the containerd stand-in
(flotilla/testing/daemon.py), which runs it in the foreground.

* supervisord spawns its programs only after its main loop's first wait, a whole second in
  which nothing is started: here that first wait returns at once (a suite, a host of a
  farm, a stand-in answers a second sooner).
* It makes an fcgi-program's socket once to check it, closes it (the file stays, and a
  client dialing then gets "connection refused", on which containerd's client gives up) and
  makes it again a few milliseconds later: here the first one is kept, so the socket goes
  from absent (a client waits) to accepting (connections queue for the gateway).

* At its shutdown it stops its programs one after the other, in reverse priority, but
  moves on to the next only on its main loop's next turn: a second later when nothing else
  happens. Here the next one is stopped as soon as the one before it has, and the loop turns
  every 50 ms while stopping. Optionally (``stop_together``: the stand-in, whose gateway
  drains nothing) every program is stopped at once, then nats-server.

All are supervisor 4's internals; if they are not there, supervisord runs as it is.
"""

from __future__ import annotations

import sys

STOPPING_TURN = 0.05  # seconds per turn of supervisord's main loop while it stops its programs
_stopping: list[bool] = []  # [True] once the shutdown began


def _patch() -> None:
    from supervisor import poller, socket_manager

    get_socket = getattr(socket_manager.SocketManager, "get_socket", None)
    if get_socket is not None:
        def get_and_keep(self: socket_manager.SocketManager) -> object:
            proxy = get_socket(self)
            self.__dict__.setdefault("_kept", proxy)  # a reference held: never closed
            return proxy

        socket_manager.SocketManager.get_socket = get_and_keep  # type: ignore[method-assign]

    poll = getattr(poller.Poller, "poll", None)
    if poll is not None:
        first = [True]

        def poll_first_at_once(self: poller.Poller, timeout: float) -> object:
            if first and first.pop():
                return poll(self, 0)
            # while stopping, a child's exit must be seen soon: Python resumes a poll that a
            # SIGCHLD interrupts (PEP 475), so only the timeout ends the wait
            return poll(self, min(timeout, STOPPING_TURN) if _stopping else timeout)

        poller.Poller.poll = poll_first_at_once  # type: ignore[method-assign]


def _stop_quickly(together: bool) -> None:
    from supervisor import supervisord

    sup = supervisord.Supervisor
    if not hasattr(sup, "ordered_stop_groups_phase_1") or not hasattr(sup, "ordered_stop_groups_phase_2"):
        return

    def stop_next(self: supervisord.Supervisor) -> None:
        _stopping[:] = [True]
        groups = self.stop_groups or []
        # together: all but the first (nats-server: the others' calls need it until they are done)
        for group in (groups[1:] or groups) if together else groups[-1:]:
            group.stop_all()  # (a no-op for the processes already stopping)

    def pop_stopped(self: supervisord.Supervisor) -> None:
        stopped = False
        while self.stop_groups and not self.stop_groups[-1].get_unstopped_processes():
            self.stop_groups.pop()
            stopped = True
        if stopped:
            stop_next(self)  # now, not on the next turn

    sup.ordered_stop_groups_phase_1 = stop_next  # type: ignore[method-assign]
    sup.ordered_stop_groups_phase_2 = pop_stopped  # type: ignore[method-assign]


def main(argv: list[str], stop_together: bool = False) -> None:
    from supervisor import supervisord
    _patch()
    _stop_quickly(stop_together)
    supervisord.main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
