"""How the metadata store's lists grow: 1,000, 10,000 and 100,000 images and containers in
one namespace of a SQLite store, each list read as the gateway asks for it (encoded entries,
page by page, libs/api/listed.py) and, for comparison, as before (wire maps, packed and
unpacked as on the bus, built into protobuf messages as the gateway did). No bus, no gRPC:
the store's part of a list, which is what grows with the records (`make bench`'s "metadata
list" measures the whole path at 1k and 10k against containerd; creating 100,000 records
through the API takes about a quarter of an hour per daemon here).

``.venv/bin/python tools/list_growth.py [SIZES...]``
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
from sqlalchemy import insert

from flotilla._api.containerd.api.services.containers.v1 import containers_pb2 as pbc
from flotilla._api.containerd.api.services.images.v1 import images_pb2 as pbi
from flotilla.libs.api.metadata import PAGE_BUDGET, AnyValue, Container, Descriptor, Image, Runtime
from flotilla.services.gateway.protomsg import constructor_fields
from flotilla.services.metadata import containers as mc
from flotilla.services.metadata import db
from flotilla.services.metadata import images as mi
from flotilla.services.metadata.store import MetadataStore

SPEC = AnyValue("types.containerd.io/opencontainers/runtime-spec/1/Spec", b'{"ociVersion":"1.0.2-dev"}' * 16)


def _fill(store: MetadataStore, n: int) -> None:
    now = time.time_ns()
    images = [Image(f"registry.example/bench/app-{i:06d}:v1", {"team": "bench", "idx": str(i)},
                    Descriptor("application/vnd.oci.image.manifest.v1+json", "sha256:" + f"{i:064x}", 1000 + i),
                    now, now) for i in range(n)]
    containers = [Container(f"bench-{i:06d}", {"team": "bench"}, f"registry.example/bench/app-{i:06d}:v1",
                            Runtime("io.containerd.runc.v2"), SPEC, "overlayfs", f"bench-{i:06d}", now, now)
                  for i in range(n)]
    with store.engine.begin() as conn:
        store._ensure_namespace(conn, "bench")
        conn.execute(insert(db.images), [dict(namespace="bench", name=i.name, **mi._values(i)) for i in images])
        conn.execute(insert(db.containers), [dict(namespace="bench", host="", id=c.id, **mc._values(c))
                                             for c in containers])


def _pages(read: Callable[[str], tuple[list[Any], str]]) -> list[Any]:
    items, after = [], ""
    while True:
        page, after = read(after)
        items.append(page)
        if not after:
            return items


def _best(fn: Callable[[], object], n: int = 5) -> float:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times) * 1000


def measure(n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="list-growth-") as tmp:
        store = MetadataStore.open(f"sqlite:///{Path(tmp) / 'meta.db'}")
        _fill(store, n)
        images = lambda encoded: _pages(lambda after: store.list_images_page("bench", [], after, PAGE_BUDGET, encoded))  # noqa: E731
        containers = lambda encoded: _pages(lambda after: store.list_containers_page(  # noqa: E731
            "bench", [], after, PAGE_BUDGET, "", encoded))

        def before(pages: list[Any], message: Any, field: str) -> None:
            for page in pages:  # as the bus carried them, then the gateway's protobuf
                items = msgpack.unpackb(msgpack.packb({"items": page}))["items"]
                message(**{field: [constructor_fields(i) for i in items]}).SerializeToString()

        out = {
            "images, encoded": _best(lambda: b"".join(b"".join(p) for p in images(True))),
            "images, before": _best(lambda: before(images(False), pbi.ListImagesResponse, "images")),
            "containers, encoded": _best(lambda: b"".join(b"".join(p) for p in containers(True))),
            "containers, before": _best(lambda: before(containers(False), pbc.ListContainersResponse, "containers")),
        }
        store.engine.dispose()
    return out


def main(sizes: list[int]) -> None:
    results = {n: measure(n) for n in sizes}
    print("| list (store part, ms, best of 5) | " + " | ".join(f"{n:,}" for n in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    for key in results[sizes[0]]:
        row = [results[n][key] for n in sizes]
        per = [f"{v:.1f} ({v * 1000 / n:.1f} us/record)" for v, n in zip(row, sizes)]
        print(f"| {key} | " + " | ".join(per) + " |")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [1_000, 10_000, 100_000])
