"""Client loops under component kills, as an operator would try it (issue 22).

``Chaos`` runs Debian's ctr in loops against one socket (cold pulls, ``run --rm`` with exit
codes, detached runs killed and waited, lists, a 64 MiB ingest) while a ``Killer`` ends one
component at a time. Every call is recorded, so a test can say which failed and a benchmark
can count failures per kill. The same loops serve Flotilla and containerd: what differs is
only the set of components and how one is killed.
"""

from __future__ import annotations

import os
import random
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from .peers import CTR, ctr

Kill = Callable[[], None]  # ends one component; returns as soon as it was killed (not restarted)


@dataclass(frozen=True)
class Call:
    loop: str
    args: tuple[str, ...]
    started: float
    ended: float
    returncode: int
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


@dataclass(frozen=True)
class KillRecord:
    component: str
    at: float


@dataclass
class Record:
    calls: list[Call] = field(default_factory=list)
    kills: list[KillRecord] = field(default_factory=list)
    wrong_exit_codes: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def failed(self) -> list[Call]:
        return [c for c in self.calls if not c.ok]

    def in_flight_at_kill(self, call: Call, component: str, slack: float = 0.5) -> bool:
        """Whether ``component`` was killed while ``call`` was under way."""
        return any(k.component == component and call.started - slack <= k.at <= call.ended
                   for k in self.kills)


class Chaos:
    """ctr loops against ``address``; ``image`` is a ref pullable with --plain-http."""

    CALL_TIMEOUT = 120.0

    LOOPS = ("pulls", "runs", "detached", "lists", "ingests")

    def __init__(self, address: str, image: str, *, ingest_mib: int = 64, namespace: str = "",
                 enter: list[str] | None = None) -> None:
        """``enter``: a command prefix ctr runs under (a farm host's network namespace)."""
        self.address, self.image = address, image
        self.enter = list(enter or [])
        self.ingest_mib = ingest_mib
        self.namespace = namespace or "chaos-" + uuid.uuid4().hex[:6]
        self.record = Record()
        self.stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.pull_namespaces: list[str] = []
        self.ingested: list[str] = []

    # -- one call ------------------------------------------------------------------------

    def ctr(self, loop: str, *args: str, namespace: str = "", input_path: str = "") -> Call:
        started = time.monotonic()
        stdin = open(input_path, "rb") if input_path else subprocess.DEVNULL
        try:
            proc = subprocess.run([*self.enter, CTR, "--address", self.address, "--namespace", namespace or self.namespace,
                                   *args], stdin=stdin, capture_output=True, timeout=self.CALL_TIMEOUT)
            code, err = proc.returncode, proc.stderr.decode(errors="replace").strip()
        except subprocess.TimeoutExpired:
            code, err = -1, f"no answer within {self.CALL_TIMEOUT:.0f}s"
        finally:
            if input_path:
                stdin.close()  # type: ignore[union-attr]
        call = Call(loop, args, started, time.monotonic(), code, err)
        with self.record.lock:
            self.record.calls.append(call)
        return call

    # -- the loops -----------------------------------------------------------------------

    def _pulls(self) -> None:
        for i in range(1000):
            if self.stop.is_set():
                return
            ns = f"{self.namespace}-pull{i}"  # a new namespace owns no content: a cold pull
            self.pull_namespaces.append(ns)
            self.ctr("pull", "images", "pull", "--plain-http", self.image, namespace=ns)

    def _runs(self) -> None:
        for i in range(10000):
            if self.stop.is_set():
                return
            code = i % 7
            call = self.ctr("run", "run", "--rm", self.image, f"rm-{uuid.uuid4().hex[:8]}",
                            "sh", "-c", f"exit {code}")
            # ctr exits with the container's exit code; a call that failed says why on stderr,
            # and exits 1: "exit 1" with an error is a failure, not the container's code
            failed = "ctr: " in call.stderr
            if call.returncode != code and not failed:
                with self.record.lock:
                    self.record.wrong_exit_codes.append(f"exit {code} returned {call.returncode}")
            elif call.returncode == code and not failed:
                object.__setattr__(call, "returncode", 0)  # the call did what it should

    def _detached(self) -> None:
        for _ in range(10000):
            if self.stop.is_set():
                return
            cid = f"d-{uuid.uuid4().hex[:8]}"
            if not self.ctr("detached", "run", "-d", self.image, cid, "sleep", "60").ok:
                continue
            self.ctr("detached", "task", "kill", "-s", "KILL", cid)
            self.ctr("detached", "task", "rm", "-f", cid)
            self.ctr("detached", "containers", "rm", cid)

    def _lists(self) -> None:
        lists = (("images", "ls"), ("containers", "ls"), ("tasks", "ls"), ("namespaces", "ls"),
                 ("snapshots", "ls"), ("leases", "ls"))
        for i in range(100000):
            if self.stop.wait(0.2):
                return
            self.ctr("list", *lists[i % len(lists)])

    def _ingests(self) -> None:
        with tempfile.NamedTemporaryFile(prefix="flotilla-chaos-") as blob:
            for i in range(1000):
                if self.stop.is_set():
                    return
                blob.seek(0)
                blob.write(os.urandom(self.ingest_mib << 20))  # new bytes: a new digest each time
                blob.flush()
                ref = f"chaos-ingest-{uuid.uuid4().hex[:8]}"
                if self.ctr("ingest", "content", "ingest", ref, input_path=blob.name).ok:
                    self.ingested.append(ref)

    def start(self, loops: tuple[str, ...] = LOOPS) -> None:
        for name in loops:
            loop = getattr(self, "_" + name)
            t = threading.Thread(target=loop, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def finish(self, timeout: float = 180.0) -> None:
        self.stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def clean(self) -> None:
        """Remove the containers (and their tasks) that failed calls left in the loops'
        namespace: a run whose connection died with the gateway, or with containerd."""
        for cid in ctr(self.address, "containers", "ls", "-q", namespace=self.namespace).stdout.split():
            ctr(self.address, "task", "rm", "-f", cid, namespace=self.namespace)
            ctr(self.address, "containers", "rm", cid, namespace=self.namespace)

    def note_kill(self, component: str) -> None:
        with self.record.lock:
            self.record.kills.append(KillRecord(component, time.monotonic()))


class Killer:
    """Ends a random component every ``every`` seconds, waiting after each for ``ready()``
    (the component answers again) so that one kill's effects are not mixed with the next's."""

    def __init__(self, chaos: Chaos, components: dict[str, Kill], ready: Callable[[str], bool], *,
                 every: float = 4.0, seed: int | None = None) -> None:
        self.chaos, self.components, self.ready = chaos, components, ready
        self.every = every
        self.random = random.Random(seed)
        self.recovery: dict[str, list[float]] = {}

    def kill(self, name: str, timeout: float = 60.0) -> float:
        """Kill ``name`` and return the seconds until it answered again."""
        self.components[name]()  # it may first look the process up: the kill is when it returns
        self.chaos.note_kill(name)
        killed = time.monotonic()
        deadline = killed + timeout
        while not self.ready(name):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} did not come back within {timeout:.0f}s")
            time.sleep(0.05)
        took = time.monotonic() - killed
        self.recovery.setdefault(name, []).append(took)
        return took

    def run(self, kills: int, order: list[str] | None = None) -> None:
        """``kills`` kills, every component in turn (shuffled) before any comes twice."""
        names: list[str] = []
        while len(names) < kills:
            batch = list(order or self.components)
            self.random.shuffle(batch)
            names += batch
        for name in names[:kills]:
            if self.chaos.stop.wait(self.every):
                return
            self.kill(name)
