"""The content service's subjects and message schemas.

The contract itself lives in ``flotilla.libs.api.content`` so the gateway and other
services can use it without importing this service.
"""

from flotilla.libs.api.content import *  # noqa: F401,F403
from flotilla.libs.api.content import (  # noqa: F401  (named for type checkers)
    ContentClient, Info, LocalFile, Status, WriterSession, instance_stem, instance_subject, stem, subject,
)
