"""The runtime service's subjects and message schemas.

The contract itself lives in ``flotilla.libs.api.runtime`` so the gateway can use it without
importing this service.
"""

from flotilla.libs.api.runtime import *  # noqa: F401,F403
from flotilla.libs.api.runtime import (  # noqa: F401  (named for type checkers)
    CHECKPOINT, CLOSE_IO, CREATE, DELETE, EXEC, GET, KILL, LIST, METRICS, PAUSE, PIDS, RESIZE, RESUME, START,
    UPDATE, WAIT, Checkpoint, CheckpointResult, CloseIO, CreateTask, Exec, Exit, Kill, MetricsQuery, PidInfo,
    ProcessInfo, ProcessRef, Resize, RuntimeClient, TaskList, TaskMetrics, Update, WaitFor, stem, subject,
)
