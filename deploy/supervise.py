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

Both are supervisor 4's internals; if they are not there, supervisord runs as it is.
"""

from __future__ import annotations

import sys


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
            return poll(self, 0 if first and first.pop() else timeout)

        poller.Poller.poll = poll_first_at_once  # type: ignore[method-assign]


def main(argv: list[str]) -> None:
    from supervisor import supervisord
    _patch()
    supervisord.main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
