"""Fuzz every service's bus subjects with random and mutated msgpack bodies.

Rules: every request gets a reply in time, a ``{"r"}`` or an ``{"e": {code, message}}`` with a
contract code (never Internal 13, and Unknown 2 only where containerd answers it too); no
service process dies; the records made before
(a namespace, an image, a container, a blob, a lease, their snapshots) list byte-identical after
(but for ctr's column padding, its ages and Go's random label order).
Reproduce a failure with FLOTILLA_FUZZ_SEED=<the seed printed>.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import io
import json
import os
import random
import re
import tarfile
import time
import types
import typing
from typing import Any

import msgpack
import nats

from flotilla.libs.api import content, metadata, runtime, snapshots, transfer
from flotilla.libs.api.snapshots import SNAPSHOTTERS
from flotilla.libs.bus import Bus
from flotilla.libs.routes import Route
from flotilla.testing import PrivateSuite
from flotilla.testing.images import Entry, build_image

ROUNDS = 40          # bodies per subject at FLOTILLA_STRESS=1
TIMEOUT = 10.0       # seconds a reply may take (a gc.run is a whole collection)
IN_FLIGHT = 4        # requests at once: they overlap, and a 2-core machine keeps up
MAX_WAIT = 0.5       # tasks.wait's max_wait: the one method that legitimately waits (code 4)
OK_CODES = {1, 3, 5, 6, 7, 8, 9, 10, 11, 12, 14, 15, 16}  # never 2 Unknown, 13 Internal...
# ...but for the Unknowns containerd 1.6 itself answers such bodies with (checked against it): a
# task whose spec is no OCI spec fails in its shim's start (tests/runtime/test_engine.py pins it);
# a mount the kernel refuses fails a diff or an apply; a checkpoint to restore from that the
# content store does not hold fails a create (tests/integration/test_checkpoint.py pins it)
CONTAINERD_UNKNOWN = {runtime.CREATE.method: ("failed to start shim: invalid OCI spec: ", "content digest "),
                      snapshots.DIFF.method: ("failed to mount ",), snapshots.APPLY.method: ("failed to mount ",)}
# methods that change no record (by the last word of their name): they may name records exactly
READS = {"get", "list", "list_resources", "info", "read", "local_path", "status", "statuses", "namespace_held",
         "mounts", "stat", "usage", "pids", "metrics", "wait"}
PATHS = ["../../etc/passwd", "/", "a/../b", "..", "", ".", "a//b", "/proc/self/root"]
ODD = ["\x00", "a\x00b", "ünïcødé ✓ 😀", "%", "*", ">", "a b", "\n", "-", "labels", "labels.a",
       "sha256:", "name==x", 'labels."a"~=(a+)+$', "|x", "a,,b", "x" * 300]
INTS = [0, 1, -1, 2**31, 2**63 - 1, 2**63, 2**64 - 1, -2**63]
MEDIA = ["application/vnd.oci.image.layer.v1.tar", "application/vnd.oci.image.layer.v1.tar+gzip"]
NOT_FS = ["nofs", "../../etc/passwd", "ü"]  # Mount.type: no filesystem, no bind: a mount makes nothing
_BAD = object()


def decode(data: bytes) -> Any:
    """What a service decodes ``data`` to (libs/wire.unpack), or _BAD."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException):  # as libs/wire.unpack
        return _BAD


def methods(module: types.ModuleType) -> dict[str, type | None]:
    """Method -> request record, from the contract's route table (libs/routes.py)."""
    return {r.method: r.request for r in vars(module).values() if isinstance(r, Route)}


def subjects(prefix: str, host: str) -> dict[str, tuple[str, type | None]]:
    out = {mod.subject(prefix, m): (m, r) for mod in (metadata, content) for m, r in methods(mod).items()
           if not m.startswith("w.")}  # a write session's methods are on its instance's subjects
    return out | {mod.subject(prefix, host, m): (m, r) for mod in (snapshots, runtime, transfer)
                  for m, r in methods(mod).items()}


class Gen:
    """Bodies: values of the right and of wrong types for each field of a request record."""

    def __init__(self, rng: random.Random, tag: str, namespaces: list[str], real: dict[str, list[str]]) -> None:
        # ``real``: field name -> the records made before that such a field may name
        self.rng, self.tag, self.namespaces, self.real = rng, tag, namespaces, real
        self.exact = False  # the method reads only: it may name those records exactly
        self.typed = False  # every field there and of its type: the body gets past the decoding
        self.session = ""   # the live write session's id

    def near(self, v: str) -> str:
        """A near miss of a record made before: none may act on it."""
        return self.rng.choice([v + "\x00", v.upper(), "../" + v, v + "/..", v[:-1], v + " ", " " + v, v + "*"])

    def wrong(self, depth: int = 0) -> Any:
        """Any value: a scalar, or lists and maps (with keys of any type) of such."""
        r, pick = self.rng, self.rng.random()
        if depth < 3 and pick < 0.2:
            return [self.wrong(depth + 1) for _ in range(r.randrange(4))]
        if depth < 3 and pick < 0.4:
            return {self.wrong(3) if r.random() < 0.4 else self.text(): self.wrong(depth + 1) for _ in range(3)}
        return r.choice([lambda: None, lambda: r.random() < 0.5, lambda: r.choice(INTS),
                         lambda: r.choice([1.5, float("nan"), float("-inf")]), lambda: r.choice(PATHS + ODD),
                         lambda: r.randbytes(r.randrange(8)), lambda: msgpack.ExtType(5, b"x"), self.text])()

    def text(self, name: str = "") -> str:
        r = self.rng
        if name == "namespace":  # the records' own half the time
            return self.namespaces[0] if r.random() < 0.5 else r.choice(self.namespaces)
        if name == "session" and r.random() < 0.7:
            return self.session
        if name in ("snapshotter", "media_type") and r.random() < 0.6:  # valid ones: the call gets further
            return r.choice(SNAPSHOTTERS if name == "snapshotter" else MEDIA)
        if name in ("digest", "expected") and r.random() < 0.5:
            return "sha256:" + hashlib.sha256(r.randbytes(8)).hexdigest()
        own, pick = self.real.get(name), r.random()
        if own and pick < 0.4:  # exactly only where the method changes nothing
            return r.choice(own) if self.exact and r.random() < 0.7 else self.near(r.choice(own))
        if pick < 0.35:
            return r.choice(PATHS + ODD)
        if pick < 0.4:  # very long: up to 1 MiB
            return r.choice("a/.\x00ü") * r.choice([4097, 70000, 1 << 20])
        if pick < 0.55:
            return self.near(r.choice([v for vs in self.real.values() for v in vs]))
        return f"{self.tag}-{r.randrange(1000)}"  # a valid identifier: may create (purged after)

    def value(self, tp: Any, name: str, depth: int) -> Any:
        r, origin, args = self.rng, typing.get_origin(tp), typing.get_args(tp)
        if not self.typed and (depth > 4 or r.random() < 0.12):
            return self.wrong(depth)
        if origin in (typing.Union, types.UnionType):
            return self.value(r.choice(args), name, depth)
        if tp in (str, bool, int, float, bytes, type(None)):
            return {str: lambda: self.text(name), bool: lambda: r.random() < 0.5, type(None): lambda: None,
                    int: lambda: r.choice(INTS + [r.randrange(-5, 5000)]),
                    float: lambda: r.choice([0.0, -1.0, 1e308, float("nan"), float("inf"), 0.1]),
                    bytes: lambda: r.choice([b"", b"{}", b"null", b'{"process": 1}', r.randbytes(r.randrange(64)),
                                             b"\x00" * 70000])}[tp]()
        many = r.randrange(4 if depth < 4 else 1)
        if origin is list:
            return [self.value(args[0], name, depth + 1) for _ in range(many)]
        if origin is dict:
            return {self.text(): self.value(args[1], "", depth + 1) for _ in range(many)}
        if dataclasses.is_dataclass(tp):
            return self.record(tp, depth + 1)
        return self.wrong(depth)  # a type the wire does not describe

    def record(self, cls: type, depth: int = 0) -> dict[Any, Any]:
        hints, out = typing.get_type_hints(cls), dict[Any, Any]()
        for f in dataclasses.fields(cls):
            if self.typed or self.rng.random() >= 0.1:  # else a missing field
                out[f.name] = self.value(hints[f.name], f.name, depth)
        if cls is snapshots.Mount and type(out.get("type")) is str:
            out["type"] = self.rng.choice(NOT_FS)  # a bind of "/" would let apply/diff touch the host
        if not self.typed and self.rng.random() < 0.1:
            out[self.text()] = self.wrong()  # a field the record does not have
        return out

    def body(self, method: str, cls: type | None) -> bytes:
        r, pick = self.rng, self.rng.random()
        self.exact, self.typed = method.rsplit(".", 1)[-1] in READS, pick >= 0.6
        if pick < 0.12:  # bytes that are not msgpack
            raw = r.choice([r.randbytes(r.randrange(1, 64)), b"\xa2\xff\xfe", msgpack.packb({"a": 1})[:-1],
                            msgpack.packb({"a": [1, 2]}) + b"\x01", msgpack.packb({(1, 2): 3})])
            return raw if decode(raw) is _BAD else b"\xc1" + raw
        if pick < 0.24 or cls is None:
            return msgpack.packb(self.wrong(), use_bin_type=True)
        data = bytearray(msgpack.packb(self.record(cls), use_bin_type=True))
        if pick < 0.34:  # mutated bytes of a well-formed body
            for _ in range(r.randrange(1, 4)):
                data[r.randrange(len(data))] = r.randrange(256)
            data = data[:r.randrange(1, len(data) + 1)] if r.random() < 0.3 else data
        return bytes(data)


def safe(method: str, data: bytes, session: str) -> bytes:
    """Bodies that must not do what they could, judged on what the service will decode."""
    body = decode(data)
    if not isinstance(body, dict):
        return data  # refused before (or ignored by) any handler
    if method in (transfer.PULL.method, transfer.PUSH.method) and type(body.get("ref", "")) is str:
        # never a parseable image reference: a pull or push would reach the network. A map
        # whose ref is not a string is refused by from_wire before anything runs
        body["ref"] = 0
    elif method in (snapshots.DIFF.method, snapshots.APPLY.method) and any(
            isinstance(m, dict) and type(m.get("type")) is str and m["type"] not in NOT_FS
            for k in ("left", "right", "mounts") for m in (body.get(k) if isinstance(body.get(k), list) else [])):
        return b"\xc1"  # a mutation made a mount that could mount something: not sent
    elif method == runtime.WAIT.method and isinstance(body.get("max_wait"), (int, float)) and not body["max_wait"] <= MAX_WAIT:
        body["max_wait"] = MAX_WAIT
    elif method.startswith("containers.") and isinstance(body.get("host"), str) and body["host"]:
        body["host"] = ""  # another host's containers: no purge could find them (docs/farm.md)
    elif method == content.W_WRITE.method and body.get("session") == session and type(body.get("offset")) is int \
            and body["offset"] > 0:
        body["offset"] = 0  # a chunk ahead waits (by design) up to 60 s for the ones before it
    else:
        return data
    return msgpack.packb(body, use_bin_type=True)


def check(method: str, data: bytes) -> tuple[int, str]:
    """The reply's code (0: a result) and what breaks the contract ("": nothing)."""
    reply = decode(data)
    if isinstance(reply, dict) and set(reply) == {"r"}:
        return 0, ""
    err = reply.get("e") if isinstance(reply, dict) and set(reply) == {"e"} else None
    if not isinstance(err, dict) or set(err) != {"code", "message"} or type(err["code"]) is not int \
            or type(err["message"]) is not str:
        return -1, f"malformed reply {reply!r:.200}"
    code, message = err["code"], err["message"]
    if code in OK_CODES or (code == 4 and method == runtime.WAIT.method) or \
            (code == 2 and method in CONTAINERD_UNKNOWN and message.startswith(CONTAINERD_UNKNOWN[method])):
        return code, ""
    return code, f"code {code}: {message:.300}"


def oci_archive(name: str) -> bytes:
    """A one-layer image as an OCI archive, for ctr image import (offline)."""
    img = build_image([[Entry("hello", data=b"fuzz\n")]], compress=False)
    index = {"schemaVersion": 2, "manifests": [img.manifest.descriptor(annotations={"io.containerd.image.name": name})]}
    files = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}', "index.json": json.dumps(index).encode(),
             **{"blobs/sha256/" + b.digest[7:]: b.data for b in img.blobs()}}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def listings(suite: PrivateSuite, ns: str, keep: set[str]) -> dict[str, list[str]]:
    """ctr's listings of the namespace: the header and the rows of the records in ``keep`` (and
    of look-alikes the fuzz made, e.g. with a trailing space: a column display cannot tell)."""
    out: dict[str, list[str]] = {}
    for what in ("namespaces", "images", "containers", "content", "leases", "snapshots"):
        head, *rows = suite.ctr(what, "ls", namespace=ns, check=True).stdout.splitlines()
        # ctr pads columns to the widest row (of any record), prints an age (not a time) and
        # Go's label maps in random order
        rows = [re.sub(r"\S+=\S+", lambda m: ",".join(sorted(m[0].split(","))), r) for r in rows
                if r.split()[:1] and r.split()[0] in keep]
        out[what] = [" ".join(re.sub(r"Less than a second|About a minute|\d+ seconds?|\d+ minutes?", "AGE", r)
                              .split()) for r in [head, *rows]]
    return out


async def purge(bus: Bus, prefix: str, host: str, ns: str) -> None:
    """Remove whatever the fuzz made in namespace ``ns``, and the namespace (errors ignored)."""
    md, cs = metadata.MetadataClient(bus, prefix), content.ContentClient(bus, prefix, local=False)
    sc = snapshots.SnapshotsClient(bus, prefix, host)

    async def each(listed: Any, drop: Any) -> None:
        with contextlib.suppress(Exception):
            await asyncio.gather(*(drop(item) for item in await listed), return_exceptions=True)
    await each(md.list_containers(ns), lambda c: md.delete_container(ns, c.id))
    await each(md.list_images(ns), lambda i: md.delete_image(ns, i.name))
    await each(md.list_leases(ns), lambda x: md.delete_lease(ns, x.id))
    for sn in SNAPSHOTTERS:
        for _ in range(4):  # children before parents
            await each(sc.list(ns, sn), lambda x, sn=sn: sc.remove(ns, sn, x.name))
    await each(cs.list_statuses(ns), lambda x: cs.abort(ns, x.ref))
    await each(cs.list(ns), lambda i: cs.delete(ns, i.digest))
    await asyncio.gather(md.delete_namespace(ns), return_exceptions=True)


async def test_bus_fuzz(suite: PrivateSuite, stress: int) -> None:
    seed = int(os.environ.get("FLOTILLA_FUZZ_SEED", random.randrange(2**32)))
    print(f"fuzz seed {seed} (FLOTILLA_FUZZ_SEED={seed} reproduces it)")
    rng, started, s, tag = random.Random(seed), time.monotonic(), suite.suite, f"fz{seed:08x}"
    ns, image, ctr_id, lease = f"{tag}-recs", f"fuzz.local/{tag}:1", f"{tag}-ctr", f"{tag}-lease"
    blob = b"fuzz blob\n"
    # namespaces the fuzz may name: its own, a scratch one, near misses and malformed ones
    pool = [ns, f"{tag}-scratch", ns.upper(), ns + "\x00", "../" + ns, "x" * 300, *PATHS, *ODD[:4]]
    archive = suite.base / f"{tag}.tar"
    archive.write_bytes(oci_archive(image))
    bus = await suite.bus("fuzz")
    md = metadata.MetadataClient(bus, s.prefix)
    sessions: list[tuple[str, str]] = []  # write sessions opened (by fuzzed bodies too): closed after
    try:
        for step in (["namespaces", "create", ns, "team=fuzz"], ["image", "import", str(archive)],
                     ["containers", "create", "--label", "k=v", image, ctr_id],
                     ["leases", "create", "--id", lease, "a=b"]):
            suite.ctr(*step, namespace=ns, check=True)
        # held by the lease before it exists: no collection takes it between its ingest and its label
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        await md.add_lease_resource(ns, lease, metadata.Resource(digest, "content"))
        suite.ctr("content", "ingest", f"{tag}-ref", namespace=ns, input=blob.decode(), check=True)
        suite.ctr("content", "label", digest, "containerd.io/gc.root=fuzz", namespace=ns, check=True)
        blobs = sorted(suite.ctr("content", "ls", "-q", namespace=ns).stdout.split())
        keys = sorted(row.split()[0] for row in suite.ctr("snapshots", "ls", namespace=ns).stdout.splitlines()[1:])
        keep = {ns, image, ctr_id, lease, *blobs, *keys}
        before, pids = listings(suite, ns, keep), sorted(s.program_pids())
        gen = Gen(rng, tag, pool, {"name": [ns, image, *keys], "id": [ctr_id, lease], "lease": [lease], "key": keys,
                                   "parent": keys, "digest": blobs, "expected": blobs, "ref": [f"{tag}-ref"]})
        sent, codes, failures = collections.Counter[str](), collections.Counter[int](), list[str]()
        gate = asyncio.Semaphore(IN_FLIGHT)

        async def call(subject: str, method: str, data: bytes) -> None:
            async with gate:
                try:
                    msg = await bus.nc.request(subject, data, timeout=TIMEOUT)
                    code, problem = check(method, msg.data)
                    if method == content.WRITER_OPEN.method and code == 0:
                        sessions.append((decode(msg.data)["r"]["instance"], decode(msg.data)["r"]["session"]))
                except (TimeoutError, nats.errors.Error) as exc:  # no reply in time, or nobody serves
                    code, problem = -1, f"no reply: {type(exc).__name__} {exc}"
            sent[subject.split(".")[1]] += 1
            codes[code] += 1
            if problem:
                failures.append(f"{method} {data[:160]!r}: {problem}")

        table = subjects(s.prefix, s.host)
        for _ in range(ROUNDS * stress):
            # a live write session: its instance's subjects get bodies too
            opened = await bus.request(content.subject(s.prefix, content.WRITER_OPEN),
                                       content.WriterOpen(ns, f"{tag}-w", local=False), timeout=TIMEOUT)
            gen.session, mine = opened["session"], content.instance_subject(s.prefix, opened["instance"], "")
            sessions.append((opened["instance"], gen.session))
            work = [(subj, m, rec) for subj, (m, rec) in table.items()] + \
                [(mine + m, m, rec) for m, rec in methods(content).items() if m.startswith("w.")]
            rng.shuffle(work)
            await asyncio.gather(*(call(subj, m, safe(m, gen.body(m, rec), gen.session)) for subj, m, rec in work))
            await bus.request(mine + content.W_CLOSE.method, content.SessionRequest(gen.session), timeout=TIMEOUT)
        print(f"fuzz: {sum(sent.values())} requests in {time.monotonic() - started:.1f} s, by service "
              f"{sorted(sent.items())}, replies by code (0: a result) {sorted(codes.items())}, seed {seed}")
        assert not failures, f"seed {seed}: {len(failures)} replies broke the contract:\n" + "\n".join(failures[:30])
        assert sorted(s.program_pids()) == pids, f"seed {seed}: a service process died"
        after = listings(suite, ns, keep)
        changed = {what: [r for r in rows if r not in after[what]] for what, rows in before.items()}
        assert not any(changed.values()), f"seed {seed}: records changed: {changed}"
    finally:
        for instance, session in sessions:
            with contextlib.suppress(Exception):
                await bus.request(content.instance_subject(s.prefix, instance, content.W_CLOSE),
                                  content.SessionRequest(session), timeout=TIMEOUT)
        # the pool's namespaces and those namespaces.create made (also of near misses: an id upper-cased)
        names = set(pool) | {n.name for n in await md.list_namespaces() if n.name.lower().startswith(tag)}
        for name in names:
            await purge(bus, s.prefix, s.host, name)
        left = {n.name for n in await md.list_namespaces()} | \
            set(await content.ContentClient(bus, s.prefix).namespaces())
        await bus.close()
        archive.unlink(missing_ok=True)
    assert not left & names, f"the fuzz left namespaces behind: {sorted(left & names)!r:.300}"
