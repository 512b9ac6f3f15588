"""The bus' trust boundary (docs/security.md), on a real suite: nats-server refuses whoever
has no credential of the suite's, and holds each component to its contract."""

from __future__ import annotations

import asyncio
import os
import shlex
import stat
import subprocess
import time
from pathlib import Path

import nats
import nkeys
import pytest

from flotilla.libs.api.metadata import MetadataClient
from flotilla.libs.bus import Bus
from flotilla.libs.errors import DeadlineExceeded, InvalidArgument
from flotilla.libs.events import Event
from flotilla.libs.wire import pack
from flotilla.testing import CTR, PrivateSuite

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]

# who calls whom, by the contract (docs/security.md); the gateway calls everyone
CALLS = {"metadata": {"content", "snapshots"}, "content": set(), "snapshots": {"content"},
         "runtime": {"content"}, "transfer": {"content", "metadata", "snapshots"}}  # runtime: checkpoints
SERVICES = ("metadata", "content", "snapshots", "runtime", "transfer")


def _nats_text_protocol(port: int, user: list[str], lines: str) -> str:
    """What nats-server answers ``lines`` of the plain text protocol, sent by bash alone. A
    suite's nats-server restarted by an earlier test may take a moment to listen again: a
    refused connection is tried again (bounded)."""
    script = (f"exec 3<>/dev/tcp/127.0.0.1/{port} || exit 9; printf '%b' {shlex.quote(lines)} >&3; "
              "timeout 5 cat <&3; true")
    out = None
    for _ in range(10):
        out = subprocess.run([*user, "bash", "-c", script], capture_output=True, text=True, timeout=30)
        if out.returncode != 9 and out.stdout:
            return out.stdout
        time.sleep(0.5)
    raise AssertionError(f"no answer from nats-server on {port}: rc={out.returncode if out else None} "
                         f"{out.stderr if out else ''}")


def test_a_local_user_without_credentials_gets_nothing(suite: PrivateSuite) -> None:
    s = suite.suite
    inbox = "_INBOX.nobody"
    lines = (r'CONNECT {"verbose":false,"pedantic":false,"headers":true,"no_responders":true}\r\n'
             f"SUB {inbox}.> 1\\r\\nSUB {s.prefix}.> 2\\r\\nSUB > 3\\r\\n"
             f"PUB {s.prefix}.metadata.namespaces.list {inbox}.1 1\\r\\n\\xc0\\r\\nPING\\r\\n")
    for who in (NOBODY, []):  # uid 65534, and root without a key: both refused
        answer = _nats_text_protocol(s.nats_port, who, lines)
        assert "INFO" in answer and "nonce" in answer  # it is nats-server, asking for a signature
        assert "Authorization Violation" in answer
        assert "MSG" not in answer and "PONG" not in answer
    # the gRPC socket is root's alone, as containerd's is
    st = os.stat(s.socket)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o660)
    os.chmod(s.state, 0o755)  # let uid 65534 reach the socket itself: the socket must refuse it
    try:
        out = subprocess.run([*NOBODY, CTR, "--address", str(s.socket), "version"],
                             capture_output=True, text=True, timeout=30)
    finally:
        os.chmod(s.state, 0o700)
    assert out.returncode != 0 and "permission denied" in out.stderr
    assert suite.ctr("version").returncode == 0


async def test_a_key_the_suite_never_issued_is_refused(suite: PrivateSuite, tmp_path: Path) -> None:
    seed = tmp_path / "stranger.nk"
    seed.write_bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))
    with pytest.raises(Exception, match="[Aa]uthorization"):
        await nats.connect(suite.suite.nats_url, nkeys_seed=str(seed), connect_timeout=2,
                           allow_reconnect=False, max_reconnect_attempts=0)


class _AsComponent:
    """A second connection with a component's own key, which records what nats-server refuses."""

    def __init__(self, suite: PrivateSuite, name: str) -> None:
        self.suite, self.name = suite, name
        self.refused: list[str] = []

    async def __aenter__(self) -> "_AsComponent":
        async def on_error(exc: Exception) -> None:
            self.refused.append(str(exc))
        seed = self.suite.suite.credentials.seed_file(self.name)
        self.nc = await nats.connect(self.suite.suite.nats_url, nkeys_seed=str(seed), error_cb=on_error,
                                     inbox_prefix=f"_INBOX.{self.name}", allow_reconnect=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.nc.close()

    async def settle(self) -> None:
        await self.nc.flush()
        await asyncio.sleep(0.2)  # -ERR lines arrive after the PONG of the flush at worst


def _service_subject(prefix: str, host: str, service: str, method: str) -> str:
    return f"{prefix}.{service}.{method}" if service in ("metadata", "content") else f"{prefix}.{service}.{host}.{method}"


async def test_each_component_may_only_do_what_its_contract_says(suite: PrivateSuite) -> None:
    p, h = suite.suite.prefix, suite.suite.host
    spy = await suite.bus("spy")
    seen: list[str] = []

    async def record(msg: nats.aio.msg.Msg) -> None:
        seen.append(msg.subject)
    await spy.nc.subscribe(f"{p}.security-probe.>", cb=record)
    await spy.nc.subscribe(f"{p}.events", cb=record)
    await spy.nc.subscribe(f"{p}.content.delete", cb=record)
    await spy.nc.subscribe(f"{p}.runtime.{h}.tasks.create", cb=record)
    await spy.nc.flush()
    try:
        for name in (*SERVICES, "gateway"):
            async with _AsComponent(suite, name) as c:
                # impersonation: nobody else's requests, and nobody else's replies
                others = [s for s in SERVICES if s != name]
                refused_subs = [_service_subject(p, h, s, "ping") for s in others]
                refused_subs += ["_INBOX.>", "_INBOX.gateway.>" if name != "gateway" else "_INBOX.metadata.>", ">"]
                for subject in refused_subs:
                    await c.nc.subscribe(subject)
                # calls outside its contract
                refused_pubs = []
                if name != "gateway":
                    refused_pubs += [f"{p}.security-probe.{name}"]
                    refused_pubs += [_service_subject(p, h, s, "ping") for s in others if s not in CALLS[name]]
                if name not in ("gateway", "metadata"):
                    refused_pubs.append(f"{p}.content.delete")  # only GC and clients delete blobs
                if name != "gateway":
                    refused_pubs.append(f"{p}.runtime.{h}.tasks.create")  # only clients start tasks
                for subject in refused_pubs:
                    await c.nc.publish(subject, b"\xc0")
                # what it may do goes through: its events (the gateway: anything)
                allowed = f"{p}.security-probe.{name}" if name == "gateway" else f"{p}.events"
                await c.nc.publish(allowed, pack(Event("/security/probe", "security-probe", "probe")))
                await c.settle()
            expected = len(refused_subs) + len(refused_pubs)
            violations = [e for e in c.refused if "permissions violation" in e.lower()]
            assert len(violations) == expected, (name, c.refused)
        await spy.nc.flush()
        await asyncio.sleep(0.2)
        # nothing refused was delivered; each allowed probe was
        assert sorted(seen) == sorted([f"{p}.events"] * len(SERVICES) + [f"{p}.security-probe.gateway"])
    finally:
        await spy.close()


async def test_an_integrator_credential_reaches_only_what_it_was_given(suite: PrivateSuite) -> None:
    env = suite.env("cli")
    flotilla = str(Path(os.sys.executable).parent / "flotilla")
    out = subprocess.run([flotilla, "credentials", "create", "reporter", "--service", "metadata"],
                         env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    seed = suite.suite.credentials.seed_file("reporter")
    assert stat.S_IMODE(seed.stat().st_mode) == 0o600 and stat.S_IMODE(seed.parent.stat().st_mode) == 0o700
    bus = await Bus.connect(suite.suite.nats_url, "integrator", credentials=seed)  # taken: create waited for it
    try:
        names = [ns.name for ns in await MetadataClient(bus, suite.suite.prefix).list_namespaces()]
        assert isinstance(names, list)
        with pytest.raises(DeadlineExceeded):  # refused by nats-server: the request never arrives
            await bus.request(f"{suite.suite.prefix}.runtime.{suite.suite.host}.tasks.list", {"namespace": "x"},
                              timeout=0.5)
        listed = subprocess.run([flotilla, "credentials", "ls"], env=env, capture_output=True, text=True, timeout=30)
        assert listed.stdout.startswith("reporter\t")
        assert subprocess.run([flotilla, "credentials", "rm", "reporter"], env=env, timeout=30).returncode == 0
        assert not seed.exists()
        for _ in range(50):  # a revoked key's connection is closed by the reload (bounded wait)
            if not bus.nc.is_connected:
                break
            await asyncio.sleep(0.1)
        assert not bus.nc.is_connected
    finally:
        await bus.nc.close()  # (not a drain: the connection may be gone)
    bad = subprocess.run([flotilla, "credentials", "create", "gateway", "--service", "runtime"],
                         env=env, capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "component" in bad.stderr



async def test_transfer_sends_progress_only_to_an_inbox(suite: PrivateSuite) -> None:
    """A caller cannot make the transfer service publish on another service's subject."""
    bus = await suite.bus("progress")
    try:
        for progress in (f"{suite.suite.prefix}.events", f"{suite.suite.prefix}.content.delete", "_INBOX.>"):
            with pytest.raises(InvalidArgument, match="not an inbox"):
                await bus.request(f"{suite.suite.prefix}.transfer.{suite.suite.host}.pull",
                                  {"namespace": "default", "ref": "127.0.0.1:1/nothing:here", "progress": progress},
                                  timeout=10)
    finally:
        await bus.close()
