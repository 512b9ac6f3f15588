"""libs.wire's fast path for builtins (used by the metadata lists) gives the same encoding."""

from __future__ import annotations

from dataclasses import dataclass, field

from flotilla.libs.wire import from_wire, pack, to_wire, unpack


@dataclass
class Inner:
    name: str
    data: bytes = b""


@dataclass
class Outer:
    items: list[dict[str, object]]
    inner: Inner | None = None
    tags: tuple[str, ...] = ()
    maps: dict[str, Inner] = field(default_factory=dict)


class MyStr(str):
    pass


def test_builtins_dataclasses_and_subclasses_encode_as_before() -> None:
    value = Outer(items=[{"a": 1, "b": [True, None, 1.5, b"\x00"], "c": {"d": Inner("x", b"y")}}],
                  inner=Inner("i"), tags=("t1", "t2"), maps={"k": Inner("v")})
    wire = to_wire(value)
    assert wire == {"items": [{"a": 1, "b": [True, None, 1.5, b"\x00"], "c": {"d": {"name": "x", "data": b"y"}}}],
                    "inner": {"name": "i", "data": b""}, "tags": ["t1", "t2"],
                    "maps": {"k": {"name": "v", "data": b""}}}
    assert from_wire(Outer, unpack(pack(value))).maps == {"k": Inner("v")}
    assert to_wire([MyStr("s")]) == ["s"]
