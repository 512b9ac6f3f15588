"""Generate Python stubs for containerd's v1 API from Debian's packaged .proto files.

The protos are staged under ``flotilla/_api/`` (imports rewritten to match) so the
generated modules land inside our package instead of a top-level ``github`` package.
Proto package names (``containerd.services.*.v1``) are untouched, so the gRPC
method paths stay exactly containerd's.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

GOCODE = Path(os.environ.get("FLOTILLA_GOCODE", "/usr/share/gocode/src"))
CONTAINERD = GOCODE / "github.com/containerd/containerd"
GOGO = GOCODE / "github.com/gogo/protobuf/gogoproto/gogo.proto"
# gRPC's own health service (containerd's client checks it before anything else), as Debian's
# golang-google-grpc-dev ships its source; staged as grpc/health/v1 so its package stays grpc.health.v1
HEALTH = GOCODE / "google.golang.org/grpc/debian/missing-sources/grpc/grpc-proto/master/grpc/health/v1/health.proto"

# source prefix inside the Debian tree -> prefix inside our package
PREFIXES = {
    "github.com/containerd/containerd/": "flotilla/_api/containerd/",
    "gogoproto/": "flotilla/_api/gogoproto/",
}
EXTRA = [
    "protobuf/plugin/fieldpath.proto",
    "runtime/v2/runc/options/oci.proto",
    "runtime/linux/runctypes/runc.proto",
]
IMPORT_RE = re.compile(r'^(import\s+(?:weak\s+|public\s+)?")([^"]+)(";)', re.M)


def _rewrite(text: str) -> str:
    def sub(m: re.Match[str]) -> str:
        path = m.group(2)
        for src, dst in PREFIXES.items():
            if path.startswith(src):
                path = dst + path[len(src):]
                break
        return m.group(1) + path + m.group(3)

    return IMPORT_RE.sub(sub, text)


def main(out_root: Path) -> int:
    from grpc_tools import protoc  # imported late: only needed at install time
    import grpc_tools
    import google.rpc.status_pb2 as status_pb2

    if not CONTAINERD.is_dir() or not GOGO.is_file() or not HEALTH.is_file():
        print("missing Debian packages golang-github-containerd-containerd-dev / "
              "golang-github-gogo-protobuf-dev / golang-google-grpc-dev", file=sys.stderr)
        return 1
    sources = sorted((CONTAINERD / "api").rglob("*.proto"))
    sources += [CONTAINERD / p for p in EXTRA]
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp)
        staged: list[str] = []
        for src in sources:
            rel = "flotilla/_api/containerd/" + str(src.relative_to(CONTAINERD))
            if "/ttrpc/" in rel:
                continue  # the ttrpc events service duplicates message names; unused
            dst = stage / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text(_rewrite(src.read_text()))
            staged.append(rel)
        gogo_dst = stage / "flotilla/_api/gogoproto/gogo.proto"
        gogo_dst.parent.mkdir(parents=True, exist_ok=True)
        gogo_dst.write_text(GOGO.read_text())
        staged.append("flotilla/_api/gogoproto/gogo.proto")
        health_rel = "flotilla/_api/grpc/health/v1/health.proto"
        (stage / health_rel).parent.mkdir(parents=True, exist_ok=True)
        (stage / health_rel).write_text(HEALTH.read_text())
        staged.append(health_rel)

        api_dir = out_root / "flotilla/_api"
        shutil.rmtree(api_dir, ignore_errors=True)
        args = [
            "protoc",
            f"-I{stage}",
            f"-I{Path(grpc_tools.__file__).parent / '_proto'}",
            f"-I{Path(status_pb2.__file__).parents[2]}",
            f"--python_out={out_root}",
            f"--grpc_python_out={out_root}",
            *staged,
        ]
        rc = protoc.main(args)
        if rc != 0:
            return rc
    for d in [api_dir, *[p for p in api_dir.rglob("*") if p.is_dir()]]:
        (d / "__init__.py").touch()
    (api_dir / "__init__.py").write_text('"""Generated from containerd\'s .proto files at install time; not committed."""\n')
    print(f"generated {len(staged)} protos into {api_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1]))
