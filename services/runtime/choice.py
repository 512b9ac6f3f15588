"""Which OCI runtime runs a task, and how a failure to start it reads (containerd's words)."""

from __future__ import annotations

import os
from pathlib import Path

from flotilla.libs.api.runtime import RUNC_V2, RUNTIME_V1
from flotilla.libs.errors import Unknown

from .oci import OciRuntime, exec_error, log_error, preferred_binary



def default_binary() -> str:
    """The OCI runtime used when the container names none: ``FLOTILLA_OCI_RUNTIME``, where
    ``auto`` (the default) is crun if it loses nothing against runc on this host, else runc."""
    name = os.environ.get("FLOTILLA_OCI_RUNTIME", "auto")
    return preferred_binary() if name == "auto" else name


def binary_for(runtime_name: str, binary: str, root: str = "") -> str:
    """runc options' BinaryName wins; a runtime name mentioning crun or runc selects it. A
    client naming the runtime's Root may work on the state there (containerd's own tests run
    ``runc delete`` on it): that state is containerd's default runtime's, runc's."""
    if binary:
        return binary
    last = runtime_name.rsplit("/", 1)[-1]
    for known in ("crun", "runc"):
        if known in last and last != RUNC_V2 and "runc.v1" not in last:
            return known
    return "runc" if root else default_binary()


def unknown(text: str) -> Unknown:
    return Unknown(text if text.endswith(": unknown") else f"{text}: unknown")


def create_failed(runtime_name: str, text: str) -> Unknown:
    """containerd's shim manager prefixes a failed create; its deprecated v1 linux runtime does not."""
    v1 = runtime_name.startswith(RUNTIME_V1)
    return unknown(text if v1 else f"failed to create shim task: {text}")


def spawn_error(logf: Path, oci: OciRuntime, exc: Exception) -> str:
    """Why the runtime's create (or exec) failed: its log's last error, else, as go-runc says
    it, that its binary cannot be run."""
    text = log_error(logf)
    if text:
        return text
    missing = exec_error(oci.binary)
    if missing:
        return f"unable to retrieve OCI runtime error (open {logf}: no such file or directory): {missing}"
    return str(exc)
