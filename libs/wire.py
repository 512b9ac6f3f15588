"""msgpack encoding of wire records (dataclasses) for the bus.

Records are plain dataclasses; ``to_wire`` turns one (recursively) into msgpack-able
builtins and ``from_wire`` rebuilds it from the field types. Unknown keys are ignored so
a newer peer can add fields without breaking an older one.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from functools import lru_cache
from typing import Any, TypeVar

import msgpack

T = TypeVar("T")


def pack(obj: Any) -> bytes:
    return msgpack.packb(to_wire(obj), use_bin_type=True)


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False) if data else None


_LEAVES = frozenset({str, int, bytes, float, bool, type(None)})


def to_wire(obj: Any) -> Any:
    # plain builtins first: lists of thousands of records are mostly these (4x faster)
    kind = type(obj)
    if kind in _LEAVES:
        return obj
    if kind is dict:
        return {k: to_wire(v) for k, v in obj.items()}
    if kind is list:
        return [to_wire(v) for v in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_wire(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_wire(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_wire(v) for k, v in obj.items()}
    return obj


def _holds_record(tp: Any) -> bool:
    """Whether values of type ``tp`` may contain a dataclass that needs rebuilding."""
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return True
    return any(_holds_record(a) for a in typing.get_args(tp))


@lru_cache(maxsize=None)
def _plan(cls: type) -> tuple[tuple[str, Any], ...]:
    """Per field: its name and its type, or None where the value is plain builtins as sent
    (most fields), so decoding skips the type walk for them."""
    hints = typing.get_type_hints(cls)
    return tuple((f.name, hints[f.name] if _holds_record(hints[f.name]) else None)
                 for f in dataclasses.fields(cls))


def _convert(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(args[0], value) if len(args) == 1 else value
    if origin in (list, tuple):
        (arg, *_) = typing.get_args(tp) or (Any,)
        return [_convert(arg, v) for v in value]
    if origin is dict:
        _, arg = typing.get_args(tp) or (Any, Any)
        return {k: _convert(arg, v) for k, v in value.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return from_wire(tp, value)
    return value


_MISSING = object()


def from_wire(cls: type[T], data: dict[str, Any]) -> T:
    kwargs = {}
    for name, tp in _plan(cls):
        value = data.get(name, _MISSING)
        if value is not _MISSING:
            kwargs[name] = value if tp is None else _convert(tp, value)
    return cls(**kwargs)
