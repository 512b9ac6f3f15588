"""``python -m flotilla.deploy.supervise -c CONF [-n]``: supervisord, with two changes to its
start, for every suite (``Suite.up``) and for the containerd stand-in
(flotilla/testing/daemon.py), which runs it in the foreground.

* supervisord spawns its programs only after its main loop's first wait, a whole second in
  which nothing is started: here that first wait returns at once (a suite, a host of a
  farm, a stand-in answers a second sooner).
* Python resumes its poll when a signal interrupts it, so it saw a SIGTERM or a child's exit
  only at the end of its 1 s wait: here a signal ends the wait (``_signal_pipe``).
* It makes an fcgi-program's socket once to check it, closes it (the file stays, and a
  client dialing then gets "connection refused", on which containerd's client gives up) and
  makes it again a few milliseconds later: here the first one is kept, and it is made
  listening under another name and renamed into place, so the socket goes from absent (a
  client waits) to accepting (connections queue for the gateway), never bound and refusing.

* At its shutdown it stops its programs one after the other, in reverse priority, but
  moves on to the next only on its main loop's next turn: a second later when nothing else
  happens. Here the next one is stopped as soon as the one before it has, and the loop turns
  every 50 ms while stopping. Optionally (``stop_together``: the stand-in, whose gateway
  drains nothing) every program is stopped at once, then nats-server, and something is done
  first (``on_stop``: the stand-in removes its socket, as a stopping containerd does).

All are supervisor 4's internals; if they are not there, supervisord runs as it is.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
from collections.abc import Callable

STOPPING_TURN = 0.05  # seconds per turn of supervisord's main loop while it stops its programs
_stopping: list[bool] = []  # [True] once the shutdown began


def _patch() -> None:
    from supervisor import datatypes, poller, socket_manager

    prepare = getattr(socket_manager.SocketManager, "_prepare_socket", None)
    if prepare is not None:
        def prepare_listening(self: socket_manager.SocketManager) -> None:
            config = self.socket_config
            if self.prepared or not isinstance(config, datatypes.UnixStreamSocketConfig):
                return prepare(self)
            if self.logger:
                self.logger.info("Creating socket %s" % config)
            self.socket = _listening_unix_socket(config.path, config.get_mode(), config.get_owner(),
                                                 config.get_backlog() or socket.SOMAXCONN)
            self.prepared = True

        socket_manager.SocketManager._prepare_socket = prepare_listening  # type: ignore[method-assign]

    get_socket = getattr(socket_manager.SocketManager, "get_socket", None)
    if get_socket is not None:
        def get_and_keep(self: socket_manager.SocketManager) -> object:
            proxy = get_socket(self)
            self.__dict__.setdefault("_kept", proxy)  # a reference held: never closed
            return proxy

        socket_manager.SocketManager.get_socket = get_and_keep  # type: ignore[method-assign]

    poll = getattr(poller.Poller, "poll", None)
    if poll is not None and hasattr(poller.Poller, "register_readable"):
        first = [True]
        woken = _signal_pipe()

        def poll_soon(self: poller.Poller, timeout: float) -> tuple[list[int], list[int]]:
            if first and first.pop():
                timeout = 0
            elif _stopping:  # a child's exit is seen at once, or within a turn without the pipe
                timeout = min(timeout, STOPPING_TURN)
            if woken >= 0 and woken not in self.readables:
                self.register_readable(woken)
            readable, writable = poll(self, timeout)
            if woken in readable:  # a signal came: the loop handles it on this turn
                with contextlib.suppress(BlockingIOError):
                    os.read(woken, 512)
                readable = [fd for fd in readable if fd != woken]
            return readable, writable

        poller.Poller.poll = poll_soon  # type: ignore[method-assign]


def _listening_unix_socket(path: str, mode: int | None, owner: tuple[int, int] | None, backlog: int) -> socket.socket:
    """A UNIX socket bound and listening under a temporary name, then renamed to ``path``: a
    client dialing meanwhile finds no socket (containerd's client then waits) or a listening
    one, never one bound and not yet listening, which refuses it ("connection refused", on
    which containerd's client gives up): supervisord binds at the path and listens after."""
    temp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temp)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(temp)
        if owner is not None:
            os.chown(temp, *owner)
        if mode is not None:
            os.chmod(temp, mode)
        sock.listen(backlog)
        os.rename(temp, path)  # replaces a stale socket at once
    except BaseException:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    return sock


def _signal_pipe() -> int:
    """A pipe every caught signal writes a byte to (signal.set_wakeup_fd); its reading end,
    or -1. Python resumes a poll that a signal interrupts (PEP 475), so supervisord saw a
    SIGTERM or a child's SIGCHLD only when its 1 s poll timed out (0.8 s after a stand-in's
    SIGTERM, measured); polling this end too, it sees them at once."""
    try:
        read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(write_end)
    except (OSError, ValueError):  # not the main thread: as supervisord is
        return -1
    return read_end


def _stop_quickly(together: bool, on_stop: Callable[[], None] | None) -> None:
    from supervisor import supervisord

    sup = supervisord.Supervisor
    if not hasattr(sup, "ordered_stop_groups_phase_1") or not hasattr(sup, "ordered_stop_groups_phase_2"):
        return

    def stop_next(self: supervisord.Supervisor) -> None:
        if not _stopping and on_stop is not None:
            on_stop()
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


def main(argv: list[str], stop_together: bool = False, on_stop: Callable[[], None] | None = None) -> None:
    """supervisord with the changes above; ``on_stop`` is called once as its shutdown begins."""
    from supervisor import supervisord
    _patch()
    _stop_quickly(stop_together, on_stop)
    supervisord.main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
