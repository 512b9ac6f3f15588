"""Digest strings, validated as go-digest does (same error texts)."""

from __future__ import annotations

import re

# go-digest's algorithms: name -> hex length
ALGORITHMS = {"sha256": 64, "sha384": 96, "sha512": 128}
_HEX = re.compile(r"[a-f0-9]+")
_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")


def digest_error(digest: str) -> str:
    """go-digest's Validate: "" when ``digest`` is valid, else its error text."""
    i = digest.find(":")
    if i <= 0 or i + 1 == len(digest):
        return "invalid checksum digest format"
    alg, hexpart = digest[:i], digest[i + 1:]
    if alg not in ALGORITHMS:
        return "invalid checksum digest format" if not _DIGEST.fullmatch(digest) else "unsupported digest algorithm"
    if len(hexpart) != ALGORITHMS[alg]:
        return "invalid checksum digest length"
    if not _HEX.fullmatch(hexpart):
        return "invalid checksum digest format"
    return ""
