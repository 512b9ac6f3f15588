from dataclasses import dataclass, field

from flotilla.libs.wire import from_wire, pack, to_wire, unpack


@dataclass
class Inner:
    name: str
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class Outer:
    items: list[Inner]
    one: Inner | None = None
    raw: bytes = b""


def test_round_trip_nested_records() -> None:
    value = Outer(items=[Inner("a", {"k": "v"}), Inner("b")], one=Inner("c"), raw=b"\x00\xff")
    assert from_wire(Outer, unpack(pack(value))) == value


def test_unknown_keys_are_ignored_and_missing_take_defaults() -> None:
    assert from_wire(Inner, {"name": "x", "new_field": 1}) == Inner("x")
    assert to_wire(Inner("x")) == {"name": "x", "labels": {}}
