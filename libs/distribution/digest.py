"""Digests: validation and incremental verification."""

from __future__ import annotations

import hashlib

from ..digests import digest_error
from .errors import DigestMismatch, InvalidArgument

def validate(digest: str) -> tuple[str, str]:
    if digest_error(digest):
        raise InvalidArgument(f"invalid digest {digest!r}: invalid argument")
    algo, _, hexpart = digest.partition(":")
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
