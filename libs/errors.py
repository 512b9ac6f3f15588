"""One error vocabulary for every process, mapped 1:1 to gRPC status codes.

Errors cross NATS as ``{"code": <int>, "message": <str>}`` and are rebuilt into the
same class on the other side, so the gateway answers with the status code the
service chose.
"""

from __future__ import annotations

from typing import ClassVar


class FlotillaError(Exception):
    """Base of every error a service reports to a client. ``code`` is the gRPC status code."""

    code: ClassVar[int] = 2  # UNKNOWN
    suffix: ClassVar[str] = "unknown"

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.suffix)
        self.message = message or self.suffix

    def to_wire(self) -> dict[str, object]:
        return {"code": self.code, "message": self.message}

    @staticmethod
    def from_wire(data: dict[str, object]) -> "FlotillaError":
        cls = BY_CODE.get(int(data.get("code", 2)), Unknown)  # type: ignore[arg-type]
        return cls(str(data.get("message", "")))


# Messages follow containerd's errdefs: "<what>: <suffix>", e.g. 'namespace "x": not found'.
class Canceled(FlotillaError):
    code, suffix = 1, "context canceled"


class Unknown(FlotillaError):
    code, suffix = 2, "unknown"


class InvalidArgument(FlotillaError):
    code, suffix = 3, "invalid argument"


class DeadlineExceeded(FlotillaError):
    code, suffix = 4, "context deadline exceeded"


class NotFound(FlotillaError):
    code, suffix = 5, "not found"


class AlreadyExists(FlotillaError):
    code, suffix = 6, "already exists"


class PermissionDenied(FlotillaError):
    code, suffix = 7, "permission denied"


class ResourceExhausted(FlotillaError):
    code, suffix = 8, "resource exhausted"


class FailedPrecondition(FlotillaError):
    code, suffix = 9, "failed precondition"


class Aborted(FlotillaError):
    code, suffix = 10, "aborted"


class OutOfRange(FlotillaError):
    code, suffix = 11, "out of range"


class Unimplemented(FlotillaError):
    code, suffix = 12, "not implemented"


class Internal(FlotillaError):
    code, suffix = 13, "internal"


class Unavailable(FlotillaError):
    code, suffix = 14, "unavailable"


class InstanceGone(Unavailable):
    """A call to one instance's own subjects found nobody there: it stopped or died."""


class DataLoss(FlotillaError):
    code, suffix = 15, "data loss"


class Unauthenticated(FlotillaError):
    code, suffix = 16, "unauthenticated"


BY_CODE: dict[int, type[FlotillaError]] = {
    c.code: c
    for c in (Canceled, Unknown, InvalidArgument, DeadlineExceeded, NotFound, AlreadyExists,
              PermissionDenied, ResourceExhausted, FailedPrecondition, Aborted, OutOfRange,
              Unimplemented, Internal, Unavailable, DataLoss, Unauthenticated)
}


def errorf(cls: type[FlotillaError], what: str) -> FlotillaError:
    """Build containerd's message shape: ``'<what>: <suffix>'``."""
    return cls(f"{what}: {cls.suffix}")
