"""The ``flotilla`` command's client side: thin commands over ``flotilla.client``.

``register`` adds them to the CLI's parser; a parsed command carries its ``handler`` and
``run(args)`` executes it.
"""

from __future__ import annotations

from typing import Any

from . import containers, images, stores
from ._base import connection_options, run

__all__ = ["register", "run", "connection_options"]


def register(sub: Any, content_sub: Any) -> None:
    images.register(sub)
    containers.register(sub)
    stores.register(sub)
    stores.register_content(content_sub)
