"""containerd's filter syntax, parsed once and matched against any record.

    filter   := selector ("," selector)*          all must match
    selector := fieldpath [("==" | "!=" | "~=") value]
    fieldpath:= field ("." field)*                 a field may be quoted with " / or |

Several filter strings in one request match when any one matches. A bare field path
matches when the field is present. Records answer ``lookup(path) -> (value, present)``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from .errors import InvalidArgument

Lookup = Callable[[Sequence[str]], "tuple[str, bool]"]

_OPERATORS = ("==", "!=", "~=")
_FIELD = re.compile(r"[A-Za-z0-9_]+")
_VALUE = re.compile(r"[^\s,]+")
_QUOTES = "\"/|"  # containerd's quote runes; /.../ suits regular expressions


@dataclass(frozen=True)
class Selector:
    path: tuple[str, ...]
    op: str = ""          # "" = field present
    value: str = ""
    regex: re.Pattern[str] | None = None

    def matches(self, lookup: Lookup) -> bool:
        value, present = lookup(self.path)
        if self.op == "":
            return present
        if self.op == "==":
            return present and value == self.value
        if self.op == "!=":
            return value != self.value  # containerd: an absent field ("") differs too
        # containerd compiles lazily and a bad expression simply never matches
        return self.regex is not None and self.regex.search(value) is not None


@dataclass(frozen=True)
class Filter:
    any_of: tuple[tuple[Selector, ...], ...]  # OR of ANDs; empty matches everything

    def matches(self, lookup: Lookup) -> bool:
        return not self.any_of or any(all(s.matches(lookup) for s in conj) for conj in self.any_of)


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text, self.pos = text, 0

    def error(self, what: str) -> InvalidArgument:
        # containerd's shape: the input split around the failing position, or whole at its end
        if self.pos < len(self.text):
            where = (f"{self.text[:self.pos]} >|{self.text[self.pos]}|< {self.text[self.pos + 1:]}")
        else:
            where = self.text
        return InvalidArgument(f"filters: parse error: [{where}]: {what}: invalid argument")

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self, token: str) -> bool:
        self.skip_space()
        return self.text.startswith(token, self.pos)

    def at_end(self) -> bool:
        self.skip_space()
        return self.pos >= len(self.text)

    def quoted(self) -> str:
        quote = self.text[self.pos]
        end = self.pos + 1
        out: list[str] = []
        while end < len(self.text) and self.text[end] != quote:
            if self.text[end] == "\\" and end + 1 < len(self.text):
                end += 1
            out.append(self.text[end])
            end += 1
        if end >= len(self.text):
            raise self.error("unterminated quoted string")
        self.pos = end + 1
        return "".join(out)

    def field(self) -> str:
        self.skip_space()
        if self.pos < len(self.text) and self.text[self.pos] in _QUOTES:
            return self.quoted()
        m = _FIELD.match(self.text, self.pos)
        if not m:
            raise self.error("expected field or quoted")
        self.pos = m.end()
        return m.group(0)

    def value(self) -> str:
        self.skip_space()
        if self.pos < len(self.text) and self.text[self.pos] in _QUOTES:
            return self.quoted()
        m = _VALUE.match(self.text, self.pos)
        if not m:
            raise self.error("expected value or quoted")
        self.pos = m.end()
        return m.group(0)


def _parse_one(text: str) -> tuple[Selector, ...]:
    scan = _Scanner(text)
    selectors: list[Selector] = []
    while True:
        path = [scan.field()]
        while scan.peek(".") and not any(scan.peek(op) for op in _OPERATORS):
            scan.pos += 1
            path.append(scan.field())
        op = next((o for o in _OPERATORS if scan.peek(o)), "")
        if not op and not scan.at_end() and not scan.peek(","):
            raise scan.error('expected an operator ("=="|"!="|"~=")')
        value, regex = "", None
        if op:
            scan.pos += 2
            value = scan.value()
            if op == "~=":
                try:
                    regex = re.compile(value)
                except re.error:
                    regex = None
        selectors.append(Selector(tuple(path), op, value, regex))
        if scan.at_end():
            return tuple(selectors)
        if not scan.peek(","):
            raise scan.error(f"unexpected input: {scan.text[scan.pos]}")
        scan.pos += 1


def parse(filters: Iterable[str]) -> Filter:
    return Filter(tuple(_parse_one(f) for f in filters if f.strip()))


def lookup_fields(fields: dict[str, str], labels: dict[str, str] | None = None) -> Lookup:
    """A lookup over flat fields plus an optional ``labels.<key>`` map."""
    def lookup(path: Sequence[str]) -> tuple[str, bool]:
        if labels is not None and path[0] == "labels":
            key = ".".join(path[1:])
            return (labels.get(key, ""), key in labels)
        if len(path) == 1 and path[0] in fields:
            return fields[path[0]], bool(fields[path[0]])
        return "", False
    return lookup
