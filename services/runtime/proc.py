"""Running short commands (runc, crun, mount, the supervisor) without blocking the event loop.

Not asyncio's subprocesses: under uvloop (what every service runs on) they are spawned with
fork(), measured here at 8-25 ms each, while ``subprocess`` uses vfork() (2-3 ms). Every task
start runs several commands, so they go through ``subprocess.run`` on a dedicated thread pool.
"""

from __future__ import annotations

import asyncio
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from . import sealed

# its own pool: commands (a CRIU dump can take long) must not starve the loop's file work
_POOL = ThreadPoolExecutor(max_workers=16, thread_name_prefix="runtime-cmd")


@dataclass
class Result:
    returncode: int
    stdout: bytes
    stderr: bytes


def _run(argv: list[str], stdin: bytes | None, merge: bool, runtime: bool) -> Result:
    # a session of its own: supervisord stops (and kills) the runtime with its whole process
    # group, which would cut a create or exec in flight half-way (a supervisor dead before it
    # reported, with no error to show); the command finishes, and its caller's repeat finds it
    p = subprocess.run(argv, executable=sealed.exec_path(argv[0]) if runtime else None, input=stdin,
                       stdin=subprocess.DEVNULL if stdin is None else None, start_new_session=True,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT if merge else subprocess.PIPE)
    return Result(p.returncode, p.stdout, p.stderr or b"")


async def run(argv: list[str], stdin: bytes | None = None, merge: bool = False, runtime: bool = False) -> Result:
    """Run ``argv`` to completion; ``merge`` puts stderr into stdout. ``runtime``: argv[0] is
    the OCI runtime, run from its sealed copy where it has one (see ``sealed``)."""
    return await asyncio.get_running_loop().run_in_executor(_POOL, _run, argv, stdin, merge, runtime)
