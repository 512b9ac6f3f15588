from dataclasses import dataclass, field

import pytest

from flotilla.libs.errors import InvalidArgument
from flotilla.libs.wire import WireError, from_wire, pack, to_wire, unpack


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


@pytest.mark.parametrize("data, what", [
    ({"items": "x"}, "Outer.items"),                        # not a list
    ({"items": [{"name": 1}]}, "Inner.name"),              # a nested field of the wrong type
    ({"items": [], "one": {"name": "c", "labels": {"k": 2}}}, "Inner.labels"),  # a label that is no string
    ({"items": [], "raw": "text"}, "Outer.raw"),           # str where bytes belong
    ({}, "Outer"),                                         # a field without a default is missing
    ([1, 2], "Outer"),                                     # not a map at all
    ({"items": None}, "Outer.items"),                      # None is no list
])
def test_a_map_that_is_not_the_record_is_invalid_argument(data: object, what: str) -> None:
    with pytest.raises(WireError, match=what) as info:
        from_wire(Outer, data)  # type: ignore[arg-type]
    assert info.value.code == InvalidArgument.code


def test_bytes_that_are_not_msgpack_are_invalid_argument() -> None:
    for data in (b"\xc1", b"\x92\x01", b"\x81\x91\x01\x02"):  # a reserved byte, short array, list as key
        with pytest.raises(WireError):
            unpack(data)
