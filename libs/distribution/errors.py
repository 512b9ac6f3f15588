"""Errors of the distribution client, in the shared vocabulary (gRPC status codes)."""

from __future__ import annotations

from flotilla.libs.errors import (DataLoss, FailedPrecondition, InvalidArgument, NotFound,
                                  PermissionDenied, Unauthenticated, Unavailable)


class BadManifest(InvalidArgument):
    """A manifest or index that is not valid JSON or not a known shape."""


class DigestMismatch(FailedPrecondition):
    """Bytes that do not hash to the digest that named them."""


class ShortRead(DataLoss):
    """A blob that ended before its descriptor's size, even after resuming."""


class AuthFailed(Unauthenticated):
    """The registry refused our credentials, or asked for some and we had none."""


class Denied(PermissionDenied):
    """The registry knows who we are and says no."""


class RegistryUnavailable(Unavailable):
    """The registry could not be reached or answered 5xx."""


class RefNotFound(NotFound):
    """The reference or blob is not in the registry."""


__all__ = ["BadManifest", "DigestMismatch", "ShortRead", "AuthFailed", "Denied", "RegistryUnavailable",
           "RefNotFound", "InvalidArgument"]
