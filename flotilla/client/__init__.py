"""Flotilla's async Python client for containerd's gRPC API (Flotilla's gateway or containerd).

    from flotilla.client import Client, with_process_args
    async with Client("/run/flotilla/flotilla.sock", "default") as c:
        image = await c.pull("127.0.0.1:5000/busybox:latest")
        await c.new_container("demo", image.name, with_process_args("echo", "hi"))
        task = await start_task(c, "demo")
        print((await task.wait()).status)
"""

from flotilla.libs.distribution import Credentials, Descriptor, Platform
from flotilla.libs.errors import (AlreadyExists, FailedPrecondition, FlotillaError, InvalidArgument, NotFound,
                                  Unauthenticated, Unavailable, Unimplemented)

from .cio import FifoSet
from .client import DEFAULT_ADDRESS, Client, dumps
from .containers import Container
from .content import ContentInfo, WriteStatus
from .events import Event
from .images import Image
from .imageutil import ResolvedImage, chain_ids
from .leases import Lease
from .namespaces import Namespace
from .process import RunningTask, start_task
from .pull import Progress, PullOptions
from .push import PushOptions
from .snapshots import SnapshotInfo, Usage
from .spec import (ImageConfig, Resources, Spec, SpecOpt, bind_mount, compose, default_spec, exec_process,
                   generate_spec, parse_mount, with_added_capabilities, with_annotations, with_capabilities,
                   with_cgroup, with_default_path_env, with_default_unix_devices, with_dropped_capabilities,
                   with_env, with_host_hosts_file, with_host_namespace, with_host_resolvconf, with_hostname,
                   with_image_config, with_linux_namespace, with_memory_limit, with_mounts,
                   with_no_new_privileges, with_privileged, with_process_args, with_process_cwd,
                   with_resources, with_rootfs_readonly, with_tty, with_tty_size, with_user, with_user_id,
                   without_mounts)
from .tasks import Exit, Process
from .types import Mount
from .version import Version

__all__ = [name for name in dir() if not name.startswith("_")]
