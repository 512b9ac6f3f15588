"""Digests: validation and incremental verification."""

from __future__ import annotations

import hashlib
import re

from .errors import DigestMismatch, InvalidArgument

_ALGOS = {"sha256": 64, "sha384": 96, "sha512": 128}
_HEX = re.compile(r"^[a-f0-9]+$")


def validate(digest: str) -> tuple[str, str]:
    algo, _, hexpart = digest.partition(":")
    if algo not in _ALGOS or len(hexpart) != _ALGOS[algo] or not _HEX.match(hexpart):
        raise InvalidArgument(f"invalid digest {digest!r}: invalid argument")
    return algo, hexpart


def of(data: bytes, algo: str = "sha256") -> str:
    return f"{algo}:{hashlib.new(algo, data).hexdigest()}"


class Verifier:
    """Hashes bytes as they pass; ``check`` raises DigestMismatch if they were not ``digest``."""

    def __init__(self, digest: str) -> None:
        self.algo, _ = validate(digest)
        self.digest = digest
        self.hash = hashlib.new(self.algo)
        self.size = 0

    def update(self, data: bytes) -> None:
        self.hash.update(data)
        self.size += len(data)

    @property
    def actual(self) -> str:
        return f"{self.algo}:{self.hash.hexdigest()}"

    def check(self, what: str = "blob") -> None:
        if self.actual != self.digest:
            raise DigestMismatch(f"{what}: digest mismatch: got {self.actual}, expected {self.digest}: "
                                 "failed precondition")
