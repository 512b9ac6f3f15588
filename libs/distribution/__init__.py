"""An OCI distribution (registry v2) client usable by the Python client and by services.

``RegistryClient`` resolves references, fetches manifests and blobs (verified, resumable) and
pushes them; ``reference``, ``platforms``, ``manifest`` and ``media`` are the vocabulary.
"""

from . import media, platforms
from .auth import Credentials
from .digest import Verifier
from .errors import (AuthFailed, BadManifest, Denied, DigestMismatch, RefNotFound, RegistryUnavailable,
                     ShortRead)
from .manifest import Index, Manifest, diff_ids, parse as parse_manifest
from .media import Descriptor, Platform
from .reference import Reference, is_loopback, parse as parse_reference

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .registry import RegistryClient

__all__ = ["AuthFailed", "BadManifest", "Credentials", "Denied", "Descriptor", "DigestMismatch", "Index",
           "Manifest", "Platform", "RefNotFound", "Reference", "RegistryClient", "RegistryUnavailable",
           "ShortRead", "Verifier", "diff_ids", "is_loopback", "media", "parse_manifest",
           "parse_reference", "platforms"]


def __getattr__(name: str) -> object:
    # the HTTP side (urllib.request and friends) loads on first use: a CLI command that
    # only names images should not pay for it at start-up
    if name == "RegistryClient":
        from .registry import RegistryClient
        return RegistryClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
