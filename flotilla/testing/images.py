"""OCI images built offline from busybox-static, for tests and benchmarks.

Layers are made in memory as tar streams; an ``Image`` is pushed to a registry with the
plain registry v2 HTTP API (this is a test fixture, not Flotilla's distribution client).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import stat
import tarfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BUSYBOX = "/bin/busybox"
APPLETS = ("sh", "echo", "cat", "ls", "sleep", "true", "false", "env", "id", "ps", "mkdir",
           "rm", "touch", "head", "tail", "wc", "sync", "hostname", "top", "grep", "dd", "stat")

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Entry:
    """One tar member: a file (data), a directory, a symlink or a hardlink."""
    path: str
    kind: str = "file"          # file | dir | symlink | hardlink
    data: bytes = b""
    target: str = ""            # symlink or hardlink target
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = 1_700_000_000


def whiteout(path: str) -> Entry:
    """OCI whiteout: deletes ``path`` from the layers below."""
    head, _, name = path.rstrip("/").rpartition("/")
    return Entry(f"{head}/.wh.{name}" if head else f".wh.{name}")


def opaque(directory: str) -> Entry:
    """OCI opaque marker: hides everything below ``directory`` from lower layers."""
    return Entry(f"{directory.rstrip('/')}/.wh..wh..opq")


def tar_layer(entries: list[Entry]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.path)
            info.mode, info.uid, info.gid, info.mtime = e.mode, e.uid, e.gid, e.mtime
            if e.kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, e.mode if e.mode != 0o644 else 0o755
                tar.addfile(info)
            elif e.kind == "symlink":
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, e.target, 0o777
                tar.addfile(info)
            elif e.kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, e.target
                tar.addfile(info)
            else:
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
    return buf.getvalue()


def busybox_entries() -> list[Entry]:
    """A minimal root filesystem: busybox and its applets, /etc/passwd, empty mount points."""
    entries = [Entry(d, "dir") for d in ("bin", "etc", "proc", "sys", "dev", "root", "var")]
    entries.append(Entry("tmp", "dir", mode=0o1777))
    entries.append(Entry("bin/busybox", data=Path(BUSYBOX).read_bytes(), mode=0o755))
    entries += [Entry(f"bin/{a}", "symlink", target="busybox") for a in APPLETS]
    entries.append(Entry("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n"))
    entries.append(Entry("etc/group", data=b"root:x:0:\nnogroup:x:65534:\n"))
    return entries


def write_rootfs(root: Path) -> Path:
    """The busybox root filesystem as a plain directory (for `ctr run --rootfs`)."""
    for e in busybox_entries():
        p = root / e.path
        if e.kind == "dir":
            p.mkdir(parents=True, exist_ok=True)
        elif e.kind == "symlink":
            p.parent.mkdir(parents=True, exist_ok=True)
            if not p.is_symlink():
                p.symlink_to(e.target)
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(e.data)
            p.chmod(e.mode)
    return root


@dataclass
class Blob:
    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return sha256(self.data)

    def descriptor(self, **extra: object) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.data), **extra}


@dataclass
class Image:
    manifest: Blob
    config: Blob
    layers: list[Blob]
    index: Blob | None = None           # for multi-platform images
    children: list["Image"] = field(default_factory=list)

    @property
    def top(self) -> Blob:
        return self.index or self.manifest

    def blobs(self) -> list[Blob]:
        if self.index is not None:
            return [b for child in self.children for b in child.blobs()] + [self.index]
        return [*self.layers, self.config, self.manifest]


def build_image(layers: list[list[Entry]], *, compress: bool = True, arch: str = "amd64",
                cmd: tuple[str, ...] = ("/bin/sh",), env: tuple[str, ...] = ("PATH=/bin",)) -> Image:
    raw = [tar_layer(entries) for entries in layers]
    blobs = [Blob(MT_LAYER_GZIP, gzip.compress(r, 6, mtime=0)) if compress else Blob(MT_LAYER_TAR, r)
             for r in raw]
    config = {
        "architecture": arch, "os": "linux",
        "config": {"Env": list(env), "Cmd": list(cmd), "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [sha256(r) for r in raw]},
        "history": [{"created_by": "flotilla test fixture"} for _ in raw],
    }
    config_blob = Blob(MT_CONFIG, json.dumps(config, sort_keys=True).encode())
    manifest = {"schemaVersion": 2, "mediaType": MT_MANIFEST, "config": config_blob.descriptor(),
                "layers": [b.descriptor() for b in blobs]}
    return Image(Blob(MT_MANIFEST, json.dumps(manifest, sort_keys=True).encode()), config_blob, blobs)


def busybox_image(arch: str = "amd64") -> Image:
    return build_image([busybox_entries()], arch=arch)


def multilayer_image() -> Image:
    """Three layers with added, changed and deleted files and an opaque directory."""
    base = busybox_entries() + [
        Entry("data", "dir"), Entry("data/keep", data=b"keep\n"), Entry("data/gone", data=b"gone\n"),
        Entry("data/change", data=b"v1\n"), Entry("opaque", "dir"), Entry("opaque/old", data=b"old\n"),
        Entry("data/link", "symlink", target="keep"), Entry("data/hard", "hardlink", target="data/keep"),
    ]
    second = [Entry("data", "dir"), Entry("data/change", data=b"v2\n"), whiteout("data/gone"),
              Entry("data/new", data=b"new\n", mode=0o600, uid=1000, gid=1000)]
    third = [Entry("opaque", "dir"), opaque("opaque"), Entry("opaque/fresh", data=b"fresh\n")]
    return build_image([base, second, third])


def random_layers_image(total_mib: int, layers: int = 4) -> Image:
    """Incompressible layers (for throughput figures) on top of busybox."""
    per = total_mib // layers
    extra = [[Entry(f"blob{i}", data=os.urandom(per << 20))] for i in range(layers)]
    return build_image([busybox_entries(), *extra])


def tree_entries(root: Path, under: str) -> list[Entry]:
    """A directory tree of this machine as entries under ``under``: its directories, files
    and symlinks as they are (modes, targets), owned by root."""
    entries = [Entry("/".join(under.split("/")[:i + 1]), "dir") for i in range(under.count("/") + 1)]
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        at = under if rel == "." else f"{under}/{rel}"
        if rel != ".":
            entries.append(Entry(at, "dir", mode=stat.S_IMODE(os.lstat(dirpath).st_mode)))
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                entries.append(Entry(f"{at}/{name}", "symlink", target=os.readlink(path)))
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    entries.append(Entry(f"{at}/{name}", data=f.read(), mode=stat.S_IMODE(st.st_mode)))
        dirnames[:] = sorted(d for d in dirnames if not os.path.islink(os.path.join(dirpath, d)))
    return entries


def small_files_entries(count: int = 10_000, dirs: int = 100, seed: int = 28) -> list[Entry]:
    """``count`` files of 1-8 KiB in ``dirs`` directories, text that compresses about 2x."""
    rnd = random.Random(seed)
    entries: list[Entry] = [Entry("data", "dir")]
    for d in range(dirs):
        entries.append(Entry(f"data/d{d:03d}", "dir"))
        for f in range(count // dirs):
            size = rnd.randint(1024, 8192)
            entries.append(Entry(f"data/d{d:03d}/f{f:04d}.txt", data=rnd.randbytes(size // 2 + 1).hex().encode()[:size]))
    return entries


def many_files_image() -> Image:
    """Layers of many small files, as real images mostly are: busybox, this machine's
    ``/usr/lib/python3*`` trees (about 4,500 files here), and 10,000 files of 1-8 KiB."""
    python = [e for tree in sorted(Path("/usr/lib").glob("python3*")) if tree.is_dir()
              for e in tree_entries(tree, f"usr/lib/{tree.name}")]
    return build_image([busybox_entries(), python, small_files_entries()])


def multiplatform_image(arches: tuple[str, ...] = ("amd64", "arm64")) -> Image:
    children = []
    for arch in arches:
        # a marker file tells which platform's layer was unpacked
        children.append(build_image([busybox_entries() + [Entry("etc/arch", data=arch.encode() + b"\n")]], arch=arch))
    index = {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [
        c.manifest.descriptor(platform={"architecture": a, "os": "linux"}) for c, a in zip(children, arches)]}
    img = Image(children[0].manifest, children[0].config, children[0].layers,
                index=Blob(MT_INDEX, json.dumps(index, sort_keys=True).encode()), children=children)
    return img


def push(registry: str, repo: str, tag: str, image: Image, auth: tuple[str, str] | None = None) -> str:
    """Push ``image`` to ``http://registry/repo:tag``; returns the top digest."""
    headers = {}
    if auth:
        import base64
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()

    def call(method: str, url: str, data: bytes | None = None, extra: dict[str, str] | None = None) -> urllib.request.addinfourl:
        req = urllib.request.Request(url, data=data, method=method, headers={**headers, **(extra or {})})
        return urllib.request.urlopen(req, timeout=120)

    base = f"http://{registry}/v2/{repo}"
    for blob in image.blobs():
        if blob.media_type in (MT_MANIFEST, MT_INDEX):
            continue
        try:
            call("HEAD", f"{base}/blobs/{blob.digest}")
            continue
        except urllib.error.HTTPError:
            pass
        start = call("POST", f"{base}/blobs/uploads/")
        location = start.headers["Location"]
        if location.startswith("/"):
            location = f"http://{registry}{location}"
        sep = "&" if "?" in location else "?"
        call("PUT", f"{location}{sep}digest={blob.digest}", blob.data, {"Content-Type": "application/octet-stream"})
    manifests = [c.manifest for c in image.children] if image.index else [image.manifest]
    for m in manifests:
        call("PUT", f"{base}/manifests/{m.digest}", m.data, {"Content-Type": m.media_type})
    top = image.top
    call("PUT", f"{base}/manifests/{tag}", top.data, {"Content-Type": top.media_type})
    return top.digest
