"""Running the whole suite under supervisord with its own nats-server.

``Suite`` renders supervisord's and nats-server's configuration into the state
directory and starts, checks and stops them; ``make up``, the tests and the benchmarks
all go through it, each with its own directories and ports.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from flotilla.libs import config as config_mod
from flotilla.libs.config import START_NICE

from .credentials import (
    CredentialStore, Permissions, authorization, component_permissions, nats_accepts, write_private,
)
from .farm import Cluster

# The processes of the suite, in start order: (name, module).
SERVICES: tuple[tuple[str, str], ...] = (
    ("metadata", "flotilla.services.metadata"),
    ("content", "flotilla.services.content"),
    ("snapshots", "flotilla.services.snapshots"),
    ("runtime", "flotilla.services.runtime"),
    ("transfer", "flotilla.services.transfer"),
    ("network", "flotilla.services.network"),  # before the gateway, which attaches through it
    ("gateway", "flotilla.services.gateway"),
)
DEFAULT_NATS_PORT = 14222
DEFAULT_METRICS_BASE = 19100  # gateway 19100, then one port per service in SERVICES order
NATS_THREADS = os.environ.get("FLOTILLA_NATS_GOMAXPROCS", "1")  # Go threads of the suite's nats-server
# Processes that may run as several instances (queue groups share their work); the
# host-local ones own host state (containers' supervisors, mounts) and run once.
SCALABLE = frozenset({"gateway", "metadata", "content"})
# Two gateways by default: while one restarts (drains, then imports for about 2 s) the other
# answers new connections at once. With one, they wait in the backlog, and containerd's
# client gives a connection only about a second to answer its handshake (its dial sets no
# MinConnectTimeout, so grpc-go's first backoff, 1 s, bounds it). About 63 MiB RSS (45 PSS)
# more (docs/operations.md).
DEFAULT_INSTANCES = "gateway=2"
GATEWAY_START_NICE = -10  # see Suite._program
# seconds supervisord gives a stopping process before SIGKILL: the gateway drains the calls
# it runs (Config.drain_grace, 20 s) before it exits
STOP_WAIT = {"gateway": 25}


def running(pid: int) -> bool:
    """Whether process ``pid`` runs: a killed one its parent has not reaped yet does not."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def enter_netns(name: str) -> list[str]:
    """The command prefix that runs a program in network namespace ``name`` (only its
    network: the mount namespace stays the machine's)."""
    return ["nsenter", f"--net=/run/netns/{name}", "--"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(name: str, default: str) -> str:
    """FLOTILLA_<NAME> from the environment, else ``<name>`` from the TOML file, as the
    services read their configuration (libs/config.py)."""
    if name in os.environ:
        return os.environ[name]
    value = config_mod.toml_values(os.environ).get(name.removeprefix("FLOTILLA_").lower())
    if isinstance(value, list):
        return ",".join(map(str, value))
    return default if value is None else str(value)


def parse_services(text: str) -> tuple[str, ...]:
    """``gateway,runtime`` -> the programs this host runs, in SERVICES order; "" = all. A farm
    host may leave a shared service (content, metadata) to the other hosts (docs/farm.md)."""
    names = {n for n, _ in SERVICES}
    chosen = {part.strip() for part in text.split(",") if part.strip()}
    if not chosen:
        return tuple(n for n, _ in SERVICES)
    unknown = chosen - names
    if unknown:
        raise ValueError(f"FLOTILLA_SERVICES: no service {', '.join(sorted(unknown))}: "
                         f"expected some of {', '.join(n for n, _ in SERVICES)}")
    if "gateway" not in chosen:
        raise ValueError("FLOTILLA_SERVICES: every host runs a gateway")
    return tuple(n for n, _ in SERVICES if n in chosen)


def parse_instances(text: str) -> dict[str, int]:
    """``gateway=2,metadata=2`` -> {"gateway": 2, "metadata": 2}; only SCALABLE processes."""
    counts: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, count = item.partition("=")
        if name not in SCALABLE or not count.isdigit() or not 1 <= int(count) <= 16:
            raise ValueError(f"FLOTILLA_INSTANCES: {item!r}: expected NAME=1..16 with NAME one of "
                             f"{', '.join(sorted(SCALABLE))}")
        counts[name] = int(count)
    return counts


@dataclass
class Suite:
    root: Path = field(default_factory=lambda: Path(_env("FLOTILLA_ROOT", "/var/lib/flotilla")))
    state: Path = field(default_factory=lambda: Path(_env("FLOTILLA_STATE", "/run/flotilla")))
    nats_port: int = field(default_factory=lambda: int(_env("FLOTILLA_NATS_PORT", str(DEFAULT_NATS_PORT))))
    metrics_base: int = field(default_factory=lambda: int(_env("FLOTILLA_METRICS_BASE", str(DEFAULT_METRICS_BASE))))
    prefix: str = field(default_factory=lambda: _env("FLOTILLA_PREFIX", "flotilla"))
    python: str = sys.executable
    extra_env: dict[str, str] = field(default_factory=dict)
    # a private suite (tests, benchmarks) takes nothing from the host's configuration, so it
    # can never bind the production socket or write into the production database
    isolated: bool = False
    # nats-server asks every connection for its credential (docs/security.md); only the
    # benchmark turns it off, to measure what it costs
    auth: bool = True
    # the routes to the other hosts of a farm (docs/security.md), none for a single host
    cluster: Cluster | None = field(default_factory=Cluster.from_env)
    # instances per process where more than one (SCALABLE only), e.g. {"gateway": 2};
    # FLOTILLA_INSTANCES="gateway=2,metadata=2" (docs/operations.md)
    instances: dict[str, int] = field(
        default_factory=lambda: parse_instances(_env("FLOTILLA_INSTANCES", DEFAULT_INSTANCES)))
    # the programs this host runs (FLOTILLA_SERVICES, default all of SERVICES)
    services: tuple[str, ...] = field(default_factory=lambda: parse_services(_env("FLOTILLA_SERVICES", "")))
    # a network namespace (/run/netns/NAME) to run the whole suite in: a simulated farm host
    # (flotilla/testing/farm.py). Only the network is entered, so the host's processes share
    # one mount namespace with each other and with the containers they leave running
    netns: str = ""
    # where the gateway listens, if not <state>/flotilla.sock (a containerd stand-in listens
    # at the address containerd was given: flotilla/testing/daemon.py)
    listen: Path | None = None
    # every program dies with supervisord, even a SIGKILLed one (a parent-death signal,
    # setpriv's): for a suite that runs in the foreground as one daemon. Processes the
    # programs start (containers' supervisors) have none and stay
    pdeathsig: bool = False
    # the programs' output goes to supervisord's own stdout, not to files: a suite run in the
    # foreground as one daemon, whose output is its log (containerd's stand-in)
    console: bool = False

    @property
    def socket(self) -> Path:
        return self.listen or self.state / "flotilla.sock"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def conf(self) -> Path:
        return self.state / "supervisord.conf"

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.nats_port}"

    @property
    def credentials(self) -> CredentialStore:
        return CredentialStore(self.root / "credentials")

    @property
    def host(self) -> str:
        """This host's token in host-local subjects, as the services will work it out."""
        return config_mod.load({**os.environ, **self.env("gateway")}).host

    def metrics_port(self, name: str) -> int:
        names = [n for n, _ in SERVICES]
        order = ["gateway"] + [n for n in names if n != "gateway"]
        return self.metrics_base + order.index(name) if self.metrics_base else 0

    def env(self, name: str) -> dict[str, str]:
        env = {
            "FLOTILLA_ROOT": str(self.root),
            "FLOTILLA_STATE": str(self.state),
            "FLOTILLA_NATS_URL": self.nats_url,
            "FLOTILLA_NATS_PORT": str(self.nats_port),  # so `flotilla credentials` finds this suite's
            "FLOTILLA_PREFIX": self.prefix,
            "FLOTILLA_METRICS_PORT": str(self.metrics_port(name)),
            "FLOTILLA_SOCKET": str(self.socket),  # the suite decides where the gateway listens
            "PYTHONUNBUFFERED": "1",
        }
        if self.auth:
            env["FLOTILLA_NATS_CREDENTIALS"] = str(self.credentials.seed_file(name))
        if self.isolated:
            env.update({"FLOTILLA_CONFIG": str(self.state / "no-config.toml"),
                        "FLOTILLA_DB_URL": "", "FLOTILLA_HOST_ID": ""})
        env.update(self.extra_env)
        return env

    def render(self) -> None:
        for d in (self.root, self.state, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        self.render_nats()
        # One Go thread: the suite's own nats-server serves a handful of local processes;
        # handing each message between Go threads cost it a third more CPU per forwarded
        # call here, for no gain in latency (docs/DEVELOPING.md)
        programs = [self._program("nats", f"{shutil.which('nats-server') or 'nats-server'} "
                                          f"-c {self.state / 'nats.conf'}", {"GOMAXPROCS": NATS_THREADS},
                                  priority=1)]
        for i, (name, module) in enumerate(SERVICES):
            if name not in self.services:
                continue
            programs.append(self._program(name, f"{self.python} -m {module}", self.env(name),
                                          priority=10 + i, numprocs=self.instances.get(name, 1)))
        self.conf.write_text(f"""\
[supervisord]
logfile={self.logs / 'supervisord.log'}
pidfile={self.state / 'supervisord.pid'}
childlogdir={self.logs}
loglevel=info

[unix_http_server]
file={self.state / 'supervisor.sock'}
chmod=0700

[supervisorctl]
serverurl=unix://{self.state / 'supervisor.sock'}

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[rpcinterface:flotilla]
supervisor.rpcinterface_factory = flotilla.deploy.holder:make
groups = gateway

""" + "\n".join(programs))

    def render_nats(self) -> None:
        """nats-server's configuration: loopback only for clients, every user's key and
        permissions, the farm's routes. Written 0600: it names who may do what."""
        conf = (f"listen: 127.0.0.1:{self.nats_port}\n"
                # NATS' default of 1 MiB kills the connection when a 1 MiB chunk carries headers
                "max_payload: 8MB\n"
                "write_deadline: \"10s\"\n")
        if self.auth:
            store = self.credentials
            users: dict[str, tuple[str, Permissions]] = {
                name: (store.ensure(name), perms)
                for name, perms in component_permissions(self.prefix, self.host).items()}
            users.update({name: (store.ensure(name), perms) for name, perms in store.integrators().items()})
            conf += authorization(users)
        if self.cluster is not None:
            conf += self.cluster.render()
        write_private(self.state / "nats.conf", conf.encode())

    def grant(self, user: str, perms: Permissions) -> Path:
        """Issue (or change) integrator ``user``'s credential; a running nats-server takes it
        at once. Returns the seed file."""
        if user in component_permissions(self.prefix, self.host):
            raise ValueError(f"credential name {user!r} is a component's")
        seed = self.credentials.grant(user, perms)
        key = seed.read_bytes()
        self.reload_nats(lambda: nats_accepts(self.nats_port, key))
        return seed

    def revoke(self, user: str) -> bool:
        seed = self.credentials.seed_file(user)
        key = seed.read_bytes() if seed.exists() else b""
        gone = self.credentials.revoke(user)
        if gone:
            self.reload_nats(lambda: not key or not nats_accepts(self.nats_port, key))
        return gone

    def reload_nats(self, taken: Callable[[], bool], timeout: float = 10.0) -> None:
        """Render nats-server's configuration again; a running one reloads it (SIGHUP), and
        this returns once ``taken()`` says it has."""
        self.render_nats()
        if self.pid() is None:
            return
        self.ctl("signal", "HUP", "nats")
        deadline = time.monotonic() + timeout
        while not taken():
            if time.monotonic() > deadline:
                raise TimeoutError(f"nats-server did not take its new configuration; see {self.logs / 'nats.log'}")
            time.sleep(0.05)

    def _program(self, name: str, command: str, env: dict[str, str], priority: int, numprocs: int = 1) -> str:
        if name == "gateway":
            # supervisord owns the listening socket and hands it down as fd 0 (deploy/holder.py)
            env = {**env, "FLOTILLA_SOCKET_FD": "0"}
            head = (f"[fcgi-program:{name}]\nsocket=unix://{self.socket}\nsocket_mode=0660\n"
                    f"socket_backlog=1024\n")
        else:
            head = f"[program:{name}]\n"
        if numprocs > 1:
            env = {**env, "FLOTILLA_INSTANCE": "%(process_num)d"}
            head += f"numprocs={numprocs}\nprocess_name=%(program_name)s-%(process_num)d\n"
        if name == "gateway" and os.geteuid() == 0:
            # every program starts at once on a suite's start: the gateway's imports get the
            # CPU first (health answered 0.7-1.0 s after a stand-in's start, not 1.6-2.1 s,
            # here), and it takes the normal priority back once it serves (libs/process.py)
            command = f"{shutil.which('nice') or 'nice'} -n {GATEWAY_START_NICE} {command}"
            env = {**env, START_NICE: str(GATEWAY_START_NICE)}
        if self.pdeathsig:
            command = f"{shutil.which('setpriv') or 'setpriv'} --pdeathsig KILL -- {command}"
        envline = ",".join(f'{k}="{v}"' for k, v in env.items())
        output = "stdout_logfile=/dev/stdout\nstdout_logfile_maxbytes=0" if self.console else (
            f"stdout_logfile={self.logs / (name + ('-%(process_num)d' if numprocs > 1 else '') + '.log')}\n"
            "stdout_logfile_maxbytes=20MB\nstdout_logfile_backups=2")
        return head + f"""\
command={command}
priority={priority}
autostart=true
autorestart=true
startsecs=0
startretries=1000
stopsignal=TERM
stopwaitsecs={STOP_WAIT.get(name, 10)}
stopasgroup=true
killasgroup=true
redirect_stderr=true
{output}
{('environment=' + envline) if envline else ''}
"""

    # -- control -----------------------------------------------------------------------

    def pid(self) -> int | None:
        """supervisord's pid while it runs."""
        try:
            pid = int((self.state / "supervisord.pid").read_text())
        except (OSError, ValueError):
            return None
        return pid if running(pid) else None

    def up(self, timeout: float = 60.0) -> float:
        """Start the suite (if not running) and return the seconds until the socket answered."""
        started = time.monotonic()
        if self.pid() is None:
            self.render()
            subprocess.run([*self.enter(), self.python, "-m", "flotilla.deploy.supervise", "-c", str(self.conf)],
                           check=True)
        self.wait_ready(timeout)
        return time.monotonic() - started

    def enter(self) -> list[str]:
        """The command prefix that runs a program in this suite's network namespace."""
        return enter_netns(self.netns) if self.netns else []

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.answers():
                return
            time.sleep(0.05)
        raise TimeoutError(f"{self.socket} did not answer within {timeout:.0f}s; see {self.logs}")

    def answers(self) -> bool:
        """True when the gateway serves and every service answers its ping through it (a
        service answers its ping only once all its subjects are served)."""
        if not self.socket.exists():
            return False
        import grpc  # only here: the suite's control path needs no grpc otherwise
        from flotilla._api.containerd.api.services.introspection.v1 import introspection_pb2, introspection_pb2_grpc
        try:
            with grpc.insecure_channel(f"unix://{self.socket}") as channel:
                plugins = introspection_pb2_grpc.IntrospectionStub(channel).Plugins(
                    introspection_pb2.PluginsRequest(), timeout=2).plugins
        except grpc.RpcError:
            return False
        return not any(p.init_err.code == grpc.StatusCode.UNAVAILABLE.value[0] for p in plugins)

    def restart(self, name: str, timeout: float = 120.0) -> float:
        """Restart program ``name`` gracefully, one instance at a time, each only once the
        suite answers again (so a second gateway or metadata keeps serving meanwhile).
        A stopping process drains: it takes no new call and answers those it runs. Returns
        the seconds taken."""
        started = time.monotonic()
        procs = [proc for proc in self.status() if proc == name or proc.startswith(name + ":")]
        if not procs:
            raise ValueError(f"no component {name!r} in this suite (see `flotilla status`)")
        deadline = started + timeout
        for proc in procs:
            out = self.ctl("restart", proc)
            if "started" not in out.stdout:
                raise RuntimeError(f"supervisorctl restart {proc}: {out.stdout.strip()} {out.stderr.strip()}")
            # the suite answers through the other instances at once: wait for this one too,
            # or the next one stops while it still starts (gRPC clients give a connection
            # about a second to answer its handshake)
            while name in SCALABLE and self.instances_answering(name) < len(procs):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{proc} did not answer within {timeout:.0f}s; see {self.logs}")
                time.sleep(0.05)
            self.wait_ready(max(1.0, deadline - time.monotonic()))
        return time.monotonic() - started

    def instances_answering(self, name: str, listen: float = 0.3) -> int:
        """How many instances of shared service ``name`` answer their ping (each answers
        its own: libs/service.py), asked on the bus as the gateway (who may call anything)."""
        import asyncio

        import nats

        from flotilla.libs.subjects import inbox, shared

        async def count() -> int:
            auth = {}
            if self.auth:
                auth = {"nkeys_seed": str(self.credentials.seed_file("gateway")), "inbox_prefix": inbox("gateway")}
            nc = await nats.connect(self.nats_url, connect_timeout=2, allow_reconnect=False, **auth)
            try:
                reply = nc.new_inbox()
                sub = await nc.subscribe(reply, max_msgs=64)
                await nc.publish(shared(self.prefix, name, "ping"), b"", reply=reply)
                await asyncio.sleep(listen)
                return sub.pending_msgs
            finally:
                await nc.close()
        try:
            return asyncio.run(count())
        except Exception:  # nats-server restarting: nobody answers yet
            return 0

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.python, "-m", "supervisor.supervisorctl", "-c", str(self.conf), *args],
                              capture_output=True, text=True)

    def status(self) -> dict[str, int]:
        """Each process supervisord runs (``name`` or ``group:name-N``) and its pid, 0 when
        it is not running."""
        procs = {}
        for line in self.ctl("status").stdout.splitlines():
            parts = line.replace(",", " ").split()
            if parts:
                procs[parts[0]] = int(parts[parts.index("pid") + 1]) if "pid" in parts else 0
        return procs

    def program_pids(self, name: str = "") -> list[int]:
        """The running processes' pids: all of them, or those of program ``name``."""
        return [pid for proc, pid in self.status().items()
                if pid and (not name or proc == name or proc.startswith(name + ":"))]

    def down(self) -> None:
        pid = self.pid()
        if pid is None:
            return
        programs = self.program_pids()
        os.kill(pid, signal.SIGTERM)  # supervisord stops every program, then exits
        # it stops programs one priority at a time, each allowed stopwaitsecs (10 s)
        deadline = time.monotonic() + 10 * len(SERVICES) + max(STOP_WAIT.values()) + 5
        while time.monotonic() < deadline:
            if not running(pid):
                return
            time.sleep(0.05)
        for p in (pid, *programs):  # never leave a program orphaned behind a stuck supervisord
            try:
                os.killpg(p, signal.SIGKILL) if p != pid else os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def program_pid(self, name: str) -> int:
        """The pid of program ``name`` (its first instance), 0 while none runs."""
        pids = self.program_pids(name)
        return pids[0] if pids else 0
