"""msgpack encoding of wire records (dataclasses) for the bus.

Records are plain dataclasses; ``to_wire`` turns one (recursively) into msgpack-able
builtins and ``from_wire`` rebuilds it from the field types. Unknown keys are ignored so
a newer peer can add fields without breaking an older one; a value of the wrong type, a
missing field without a default or bytes that are not msgpack are a ``WireError``
(InvalidArgument), so bad input from the bus never reaches a store.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from functools import lru_cache
from typing import Any, TypeVar

import msgpack

from .errors import InvalidArgument

T = TypeVar("T")

# bytes of payload per bus message: NATS' own limit is 8 MB in our server config; chunks
# stay well under it
MAX_CHUNK = 1 << 20


class WireError(InvalidArgument):
    """Bytes or a map that do not make the record they should."""


def pack(obj: Any) -> bytes:
    return msgpack.packb(to_wire(obj), use_bin_type=True)


def unpack(data: bytes) -> Any:
    if not data:
        return None
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:  # also unhashable map keys
        raise WireError(f"not msgpack ({type(exc).__name__}): invalid argument") from None


_LEAVES = frozenset({str, int, bytes, float, bool, type(None)})


class Wired(dict):  # type: ignore[type-arg]
    """A map already in wire form all through (maps, lists, leaves): ``to_wire`` passes it as
    it is. A list's page of thousands of records walked again cost a third of its query."""


def to_wire(obj: Any) -> Any:
    # plain builtins first: lists of thousands of records are mostly these (4x faster)
    kind = type(obj)
    if kind in _LEAVES or kind is Wired:
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


Check = typing.Callable[[Any], bool]
_SCALARS: dict[Any, tuple[type, ...]] = {
    str: (str,), bytes: (bytes,), bool: (bool,), int: (int,), float: (float, int)}


@lru_cache(maxsize=None)
def _checker(tp: Any) -> Check:
    """Whether a decoded value is of type ``tp`` (deeply, for lists and maps)."""
    if tp is Any or isinstance(tp, TypeVar):
        return lambda v: True
    if tp is type(None):
        return lambda v: v is None
    if tp in _SCALARS:
        kinds = _SCALARS[tp]
        if tp is int:  # True is an int to Python, not to the wire
            return lambda v: type(v) is int
        return lambda v: type(v) in kinds
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        options = [_checker(a) for a in args]
        return lambda v: any(ok(v) for ok in options)
    if origin in (list, tuple) or tp in (list, tuple):
        item = _checker(args[0]) if args else _checker(Any)
        return lambda v: type(v) is list and all(item(x) for x in v)
    if origin is dict or tp is dict:
        key, value = (_checker(args[0]), _checker(args[1])) if args else (_checker(Any), _checker(Any))
        return lambda v: type(v) is dict and all(key(k) and value(x) for k, x in v.items())
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return lambda v: type(v) is dict  # its fields are checked when it is rebuilt
    return lambda v: True  # a type the wire does not describe (e.g. a Literal): as sent


@lru_cache(maxsize=None)
def _plan(cls: type) -> tuple[tuple[str, Any, Check], ...]:
    """Per field: its name, its type or None where the value is plain builtins as sent (most
    fields, so decoding skips the type walk for them), and its type check."""
    hints = typing.get_type_hints(cls)
    return tuple((f.name, hints[f.name] if _holds_record(hints[f.name]) else None, _checker(hints[f.name]))
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
    if type(data) is not dict:
        raise WireError(f"{cls.__name__}: a map expected, not {type(data).__name__}: invalid argument")
    kwargs = {}
    for name, tp, ok in _plan(cls):
        value = data.get(name, _MISSING)
        if value is not _MISSING:
            if not ok(value):
                raise WireError(f"{cls.__name__}.{name}: not of type {_type_name(cls, name)}: invalid argument")
            kwargs[name] = value if tp is None else _convert(tp, value)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a field without a default is missing
        raise WireError(f"{cls.__name__}: {exc}: invalid argument") from None


def _type_name(cls: type, field: str) -> str:
    tp = typing.get_type_hints(cls)[field]
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
