"""The runtime service's subjects and message schemas.

The contract itself lives in ``flotilla.libs.api.runtime`` so the gateway can use it without
importing this service.
"""

from flotilla.libs.api.runtime import *  # noqa: F401,F403
from flotilla.libs.api.runtime import (  # noqa: F401  (named for type checkers)
    CHECKPOINT, CLOSE_IO, CREATE, DELETE, EXEC, GET, KILL, LIST, METRICS, PAUSE, PIDS, RESIZE, RESUME, START,
    UPDATE, WAIT, Checkpoint, CloseIO, CreateTask, Exec, Kill, MetricsQuery, ProcessRef, Resize, RuntimeClient,
    TaskList, Update, WaitFor, subject,
)
