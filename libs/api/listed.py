"""containerd's protobuf encoding of the records its lists carry, made once when a record is
written and kept beside it (services/metadata): a list of thousands then travels as the
bytes of its answer, never decoded and encoded again on the way. (Rows into maps, maps into
msgpack and back, maps into protobuf messages: 3-4 times containerd's time for a list of
10,000, measured here.)

Each record's bytes are one entry of the list answer's ``repeated`` field 1: an image's are
an entry of ``ListImagesResponse.images``; a container's, without its spec, one of
``ListContainersResponse.containers`` (and a whole ``ListContainerMessage`` of a stream)
once ``container_entry`` has added the spec (kept once, in its own column). Entries join
into an answer by concatenation. Pure functions, no IO; tests compare them with the
generated messages' own encoding.
"""

from __future__ import annotations

from collections.abc import Iterator

from .metadata import AnyValue, Container, Image

_BYTE = [bytes((i,)) for i in range(128)]
_TYPE_URLS: dict[str, bytes] = {}  # a spec's type URL, encoded


def _varint(n: int) -> bytes:
    if 0 <= n < 0x80:
        return _BYTE[n]
    if 0 < n < 0x4000:  # two bytes: most lengths of a list's fields (no loop: 5x faster)
        return bytes(((n & 0x7F) | 0x80, n >> 7))
    if n < 0:  # int64 on the wire: two's complement, ten bytes
        n += 1 << 64
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes, message); ``tag`` its key byte."""
    n = len(payload)
    return tag + (_BYTE[n] if n < 0x80 else _varint(n)) + payload


def _string(tag: bytes, value: str) -> bytes:
    return _field(tag, value.encode()) if value else b""  # proto3 leaves defaults out


def _string_map(tag: bytes, m: dict[str, str]) -> bytes:
    return b"".join(_field(tag, _string(b"\x0a", k) + _string(b"\x12", v)) for k, v in sorted(m.items()))


def _any(tag: bytes, value: AnyValue | None) -> bytes:
    if value is None:
        return b""
    return _field(tag, _string(b"\x0a", value.type_url) + (_field(b"\x12", value.value) if value.value else b""))


def _timestamp(tag: bytes, ns: int) -> bytes:
    # always present, as containerd's (non-nullable) timestamps are
    seconds, nanos = divmod(ns, 1_000_000_000)
    return _field(tag, (b"\x08" + _varint(seconds) if seconds else b"") + (b"\x10" + _varint(nanos) if nanos else b""))


def image(i: Image) -> bytes:
    """An image as an entry of ``ListImagesResponse.images``."""
    t = i.target
    target = (_string(b"\x0a", t.media_type) + _string(b"\x12", t.digest)
              + (b"\x18" + _varint(t.size) if t.size else b"") + _string_map(b"\x2a", t.annotations))
    return _field(b"\x0a", _string(b"\x0a", i.name) + _string_map(b"\x12", i.labels) + _field(b"\x1a", target)
                  + _timestamp(b"\x3a", i.created_at) + _timestamp(b"\x42", i.updated_at))


def container_without_spec(c: Container) -> bytes:
    """A container's message but its spec (field 5: protobuf takes fields in any order)."""
    r = c.runtime
    runtime = _string(b"\x0a", r.name) + _any(b"\x12", r.options)
    return (_string(b"\x0a", c.id) + _string_map(b"\x12", c.labels) + _string(b"\x1a", c.image)
            + _field(b"\x22", runtime) + _string(b"\x32", c.snapshotter) + _string(b"\x3a", c.snapshot_key)
            + _timestamp(b"\x42", c.created_at) + _timestamp(b"\x4a", c.updated_at)
            + b"".join(_field(b"\x52", _string(b"\x0a", k) + _any(b"\x12", v)) for k, v in sorted(c.extensions.items())))


def container(c: Container) -> bytes:
    """A container as an entry of ``ListContainersResponse.containers``, from its record."""
    spec = (c.spec.type_url, c.spec.value) if c.spec is not None else (None, b"")
    return container_entry(container_without_spec(c), *spec)


def container_entry(without_spec: bytes, spec_type_url: str | None, spec_value: bytes) -> bytes:
    """A container as an entry of ``ListContainersResponse.containers``: its message but its
    spec, and the spec (type URL None: it has none)."""
    if spec_type_url is not None:  # (on every entry of a list: no record made for it)
        type_url = _TYPE_URLS.get(spec_type_url)
        if type_url is None:  # specs share a type URL or two: a few kept
            type_url = _string(b"\x0a", spec_type_url)
            if len(_TYPE_URLS) < 16:
                _TYPE_URLS[spec_type_url] = type_url
        without_spec += _field(b"\x2a", type_url + (_field(b"\x12", spec_value) if spec_value else b""))
    return _field(b"\x0a", without_spec)


def entries(encoded: bytes) -> Iterator[bytes]:
    """The entries of a joined list, each as it was made (a container's: a whole
    ``ListContainerMessage``)."""
    view, pos, end = memoryview(encoded), 0, len(encoded)
    while pos < end:
        start, pos, n, shift = pos, pos + 1, 0, 0  # past the field's key byte: its length
        while True:
            b = encoded[pos]
            pos += 1
            n |= (b & 0x7F) << shift
            if b < 0x80:
                break
            shift += 7
        pos += n
        yield bytes(view[start:pos])
