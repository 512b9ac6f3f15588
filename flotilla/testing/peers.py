"""Start and stop real peers in temporary directories on free ports.

Nothing here touches a suite started by ``make up`` or containerd's own directories.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

from flotilla.deploy import DEFAULT_INSTANCES, SERVICES, Suite, enter_netns, free_port, parse_instances
from flotilla.deploy.credentials import Permissions
from flotilla.libs.bus import Bus

CTR = shutil.which("ctr") or "/usr/bin/ctr"
P = TypeVar("P", bound="Peer")


def ctr(address: str, *args: str, namespace: str = "default", timeout: float = 60,
        input: str | None = None, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run Debian's ctr against ``address``."""
    return subprocess.run([CTR, "--address", address, "--namespace", namespace, *args],
                          capture_output=True, text=True, timeout=timeout, input=input, check=check,
                          stdin=subprocess.DEVNULL if input is None else None)  # never the terminal's


class Peer:
    """A process the tests start and must stop: a context manager that also cleans up
    after a start that failed half-way."""

    def start(self) -> object:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self: "P") -> "P":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def terminate(proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGTERM, then SIGKILL when ``proc`` has not exited within ``timeout``."""
    if proc is None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class PrivateSuite(Peer):
    """A whole Flotilla suite in its own temporary directories, ports and subject prefix.
    Its nats-server knows one more user than a production suite's: ``tester``, who may
    publish and subscribe to anything, for the tests that watch or drive the bus."""

    TESTER = "tester"

    def __init__(self, base: Path | None = None, *, auth: bool = True, instances: dict[str, int] | None = None,
                 **extra_env: str) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="flotilla-suite-", dir=base))
        self.suite = Suite(root=self.base / "root", state=self.base / "state",
                           nats_port=free_port(), metrics_base=0,
                           prefix="ft" + uuid.uuid4().hex[:8], extra_env=dict(extra_env), isolated=True,
                           auth=auth, cluster=None,
                           instances=parse_instances(DEFAULT_INSTANCES) if instances is None else dict(instances),
                           services=tuple(name for name, _ in SERVICES))  # never the host's choice
        if auth:
            self.suite.credentials.grant(self.TESTER, Permissions((">",), (">",)))

    async def bus(self, name: str = "test") -> Bus:
        """A bus connection to the suite's nats-server as ``tester``."""
        seed = self.suite.credentials.seed_file(self.TESTER) if self.suite.auth else ""
        return await Bus.connect(self.suite.nats_url, name, credentials=seed)

    @property
    def address(self) -> str:
        return str(self.suite.socket)

    def ctr(self, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
        return ctr(self.address, *args, **kw)  # type: ignore[arg-type]

    def env(self, name: str = "client") -> dict[str, str]:
        return {**os.environ, **self.suite.env(name)}

    def start(self, timeout: float = 60) -> float:
        return self.suite.up(timeout)

    def stop(self, keep: bool = False) -> None:
        self.suite.down()
        if not keep:
            shutil.rmtree(self.base, ignore_errors=True)


# containerd's own stores a proxy plugin replaces (docs/integrators.md): its content store,
# which the metadata plugin would otherwise pick at random among two, and its snapshotters,
# so that nothing lands in its root by mistake
BUILTIN_STORES = ("io.containerd.content.v1.content", "io.containerd.snapshotter.v1.overlayfs",
                  "io.containerd.snapshotter.v1.native", "io.containerd.snapshotter.v1.btrfs",
                  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
                  "io.containerd.snapshotter.v1.aufs")


def proxy_config(address: str | Path, snapshotter: str = "flotilla", content: str = "flotilla-content") -> str:
    """containerd's ``[proxy_plugins]``: its content store and snapshotter ``snapshotter``
    served on ``address`` (a Flotilla consumer's socket)."""
    return (f'[proxy_plugins]\n  [proxy_plugins."{content}"]\n    type = "content"\n    address = "{address}"\n'
            f'  [proxy_plugins."{snapshotter}"]\n    type = "snapshot"\n    address = "{address}"\n')


class ContainerdPeer(Peer):
    """Debian's containerd with its own root, state and socket, CRI disabled. With
    ``proxy`` (a Flotilla consumer's socket) its content store and snapshotter are
    Flotilla's, as proxy plugins, and its own are disabled; ``extra_config`` is appended to
    its config.toml."""

    def __init__(self, proxy: str | Path | None = None, *, snapshotter: str = "flotilla",
                 extra_config: str = "", netns: str = "") -> None:
        self.base = Path(tempfile.mkdtemp(prefix="flotilla-containerd-"))
        self.address = str(self.base / "containerd.sock")
        self.proc: subprocess.Popen[bytes] | None = None
        self.proxy, self.snapshotter, self.extra_config = proxy, snapshotter, extra_config
        self.netns = netns  # a network namespace it runs in (a farm host's, for side-by-side figures)

    @property
    def root(self) -> Path:
        return self.base / "root"

    @property
    def log(self) -> Path:
        return self.base / "containerd.log"

    def start(self, timeout: float = 30) -> None:
        conf = self.base / "config.toml"
        disabled = ["io.containerd.grpc.v1.cri", *(BUILTIN_STORES if self.proxy is not None else ())]
        extra = self.extra_config
        if self.proxy is not None:
            extra = proxy_config(self.proxy, self.snapshotter) + extra
        conf.write_text(f"""version = 2
root = "{self.base / 'root'}"
state = "{self.base / 'state'}"
disabled_plugins = [{", ".join(f'"{d}"' for d in disabled)}]
[grpc]
  address = "{self.address}"
[ttrpc]
  address = "{self.address}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
""" + extra)
        with open(self.base / "containerd.log", "wb") as log:
            enter = ["ip", "netns", "exec", self.netns] if self.netns else []
            self.proc = subprocess.Popen([*enter, shutil.which("containerd") or "/usr/bin/containerd", "--config", str(conf)],
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if os.path.exists(self.address) and ctr(self.address, "version", timeout=5).returncode == 0:
                return
            time.sleep(0.05)
        raise TimeoutError("containerd did not start; see " + str(self.base / "containerd.log"))

    def stop(self) -> None:
        terminate(self.proc, 15)
        # its shims outlive it by design (a task whose client died with a killed containerd
        # keeps one): they are ours, named by our socket, and so are their containers
        for pid in _with_descendants(_pids_naming(self.address)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # containerd may leave shims' and snapshotters' mounts under its root
        with open("/proc/mounts") as f:
            mounts = [line.split()[1] for line in f if str(self.base) in line]
        for m in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", m], check=False)
        shutil.rmtree(self.base, ignore_errors=True)


def _pids_naming(text: str) -> list[int]:
    """The processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:  # gone meanwhile
                pass
    return found


def _with_descendants(pids: list[int]) -> list[int]:
    """``pids`` and every process below them."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:  # the parent is the 2nd field after the command's closing parenthesis
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], list(pids)
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def serving(socket: str | Path, timeout: float = 0.5) -> bool:
    """Whether the daemon on ``socket`` answers gRPC health SERVING now (one new connection:
    a client's reconnection backoff is not measured with it)."""
    import grpc

    from flotilla._api.grpc.health.v1 import health_pb2, health_pb2_grpc
    with grpc.insecure_channel(f"unix://{socket}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


@contextlib.contextmanager
def nats_server() -> Iterator[str]:
    """A private nats-server on a free loopback port; yields its URL."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="flotilla-nats-") as tmp:
        conf = Path(tmp) / "nats.conf"
        conf.write_text(f"listen: 127.0.0.1:{port}\nmax_payload: 8MB\n")
        proc = subprocess.Popen([shutil.which("nats-server") or "nats-server", "-c", str(conf)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            import socket
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                    break
                time.sleep(0.02)
            yield f"nats://127.0.0.1:{port}"
        finally:
            terminate(proc, 10)


class Registry(Peer):
    """Debian's docker-registry on 127.0.0.1 with storage in a temporary directory;
    with ``auth`` it asks for HTTP basic credentials (htpasswd, bcrypt)."""

    def __init__(self, auth: tuple[str, str] | None = None, *, log_requests: bool = False) -> None:
        """``log_requests``: every request in the logs, for ``blob_gets``."""
        self.log_requests = log_requests
        self.base = Path(tempfile.mkdtemp(prefix="flotilla-registry-"))
        self.port = free_port()
        self.auth = auth
        self.proc: subprocess.Popen[bytes] | None = None
        self.others: list[subprocess.Popen[bytes]] = []

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> None:
        self.proc = self._serve(f"127.0.0.1:{self.port}", "registry")
        import urllib.error
        import urllib.request
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1)
                return
            except urllib.error.HTTPError:
                return  # 401 with auth: it answers
            except OSError:
                time.sleep(0.05)
        raise TimeoutError("docker-registry did not start; see " + str(self.base / "registry.log"))

    def _serve(self, addr: str, name: str, enter: list[str] | None = None) -> subprocess.Popen[bytes]:
        auth = ""
        if self.auth:
            if not (self.base / "htpasswd").exists():
                line = subprocess.run(["htpasswd", "-Bbn", *self.auth], capture_output=True, text=True,
                                      check=True).stdout
                (self.base / "htpasswd").write_text(line.strip() + "\n")
            auth = f"auth:\n  htpasswd:\n    realm: flotilla-test\n    path: {self.base / 'htpasswd'}\n"
        conf = self.base / f"{name}.yml"
        conf.write_text(f"""version: 0.1
log:
  level: {'info' if self.log_requests else 'warn'}
storage:
  filesystem:
    rootdirectory: {self.base / 'data'}
  delete:
    enabled: true
http:
  addr: {addr}
{auth}""")
        with open(self.base / f"{name}.log", "wb") as log:
            return subprocess.Popen([*(enter or []), shutil.which("docker-registry") or "/usr/bin/docker-registry",
                                     "serve", str(conf)], stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)

    def serve_in(self, netns: str, address: str, port: int = 5000, timeout: float = 30) -> str:
        """The same storage served by a second registry in network namespace ``netns`` too
        (a simulated farm's hosts reach no loopback of this one); returns its host:port."""
        enter = enter_netns(netns)
        self.others.append(self._serve(f"{address}:{port}", f"registry-{netns}", enter))
        probe = ("import socket, sys, time\n"
                 f"end = time.monotonic() + {timeout}\n"
                 "while time.monotonic() < end:\n"
                 f"    try: socket.create_connection(({address!r}, {port}), 1).close(); sys.exit(0)\n"
                 "    except OSError: time.sleep(0.05)\n"
                 "sys.exit(1)\n")
        if subprocess.run([*enter, sys.executable, "-c", probe], timeout=timeout + 10).returncode != 0:
            raise TimeoutError(f"docker-registry did not start in {netns}; see {self.base}")
        return f"{address}:{port}"

    def _served(self) -> list[tuple[str, int]]:
        """(digest, bytes sent) of each blob GET so far, from the logs of every process
        serving this registry (``log_requests`` must be on)."""
        found = []
        for log in self.base.glob("registry*.log"):
            for line in log.read_text(errors="replace").splitlines():
                if "response completed" in line and "http.request.method=GET" in line and "/blobs/sha256:" in line:
                    digest = "sha256:" + line.split("/blobs/sha256:", 1)[1][:64]
                    sent = line.split("http.response.written=", 1)[1].split()[0] if "written=" in line else "0"
                    found.append((digest, int(sent)))
        return found

    def blob_gets(self) -> list[str]:
        """The digests of the blobs served so far (GET, not HEAD), one per request."""
        return [digest for digest, _ in self._served()]

    def blob_bytes(self, digest: str) -> int:
        """The bytes of blob ``digest`` sent so far, over all its requests."""
        return sum(sent for d, sent in self._served() if d == digest)

    def stop(self) -> None:
        for proc in (self.proc, *self.others):
            terminate(proc, 10)
        shutil.rmtree(self.base, ignore_errors=True)
