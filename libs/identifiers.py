"""Validation of names and labels, with containerd's rules and messages."""

from __future__ import annotations

import re

from .errors import InvalidArgument

MAX_IDENTIFIER = 76
MAX_LABEL_SIZE = 4096
# Python's $ also matches before a final newline, Go's does not: use fullmatch
_IDENTIFIER = re.compile(r"[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*")
_SHOWN = "^" + _IDENTIFIER.pattern + "$"  # as containerd prints it


def validate_identifier(name: str) -> None:
    if not name:
        raise InvalidArgument("identifier must not be empty: invalid argument")
    if len(name) > MAX_IDENTIFIER:
        raise InvalidArgument(
            f'identifier "{name}" greater than maximum length ({MAX_IDENTIFIER} characters): invalid argument')
    if not _IDENTIFIER.fullmatch(name):
        raise InvalidArgument(f'identifier "{name}" must match {_SHOWN}: invalid argument')


def validate_labels(labels: dict[str, str]) -> None:
    for key, value in labels.items():
        if len(key.encode()) + len(value.encode()) > MAX_LABEL_SIZE:  # Go counts bytes
            shown = key if len(key) <= 10 else key[:10]
            raise InvalidArgument(
                f"label key and value greater than maximum size ({MAX_LABEL_SIZE} bytes), "
                f"key: {shown}: invalid argument")
