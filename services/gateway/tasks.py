"""containerd.services.tasks.v1.Tasks, backed by this host's runtime service.

Create reads the container (spec, runtime) from the metadata service, as containerd's tasks
service does (through the containers this gateway saw lately); every other call goes straight
to the runtime service, but for a Get of a task this gateway deleted a moment ago.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from datetime import timedelta
from typing import Any

from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, empty_pb2, message_factory
from google.protobuf.message import DecodeError, Message
from grpc import aio

from flotilla._api.containerd.api.services.tasks.v1 import tasks_pb2 as pbt
from flotilla._api.containerd.api.services.tasks.v1 import tasks_pb2_grpc as pbt_grpc
from flotilla._api.containerd.api.types import descriptor_pb2 as oci_descriptor_pb2
from flotilla._api.containerd.api.types.task import task_pb2
from flotilla._api.containerd.runtime.linux.runctypes import runc_pb2
from flotilla._api.containerd.runtime.v2.runc.options import oci_pb2
from flotilla.libs import filters
from flotilla.libs.api import events as ev
from flotilla.libs.api.metadata import expiring_lease
from flotilla.libs.api.runtime import (
    CHECKPOINT_TAR, Checkpoint, CloseIO, CreateTask, Descriptor, Exec, Exit, Kill, MetricsQuery, Mount,
    ProcessInfo, ProcessRef, Resize, RUNTIME_V1, RuntimeClient, Stdio, Update, is_task_not_found, task_not_found,
)
from flotilla.libs.bus import Bus
from flotilla.libs.config import Config
from flotilla.libs.errors import FlotillaError, InvalidArgument, NotFound, Unknown

from .containers import ContainerRecords
from .events import EventHub
from .network import NetworkClient, TaskNetworks
from .protomsg import fill, set_timestamp
from .records import RecordCache, event_key
from .rpc import namespace, timeout, unary
from .snapshots import lease

log = logging.getLogger("flotilla.gateway.tasks")
_STATUS = {"unknown": task_pb2.UNKNOWN, "created": task_pb2.CREATED, "running": task_pb2.RUNNING,
           "stopped": task_pb2.STOPPED, "paused": task_pb2.PAUSED, "pausing": task_pb2.PAUSING}
RUNC_OPTIONS = "containerd.runc.v1.Options"
RUNC_V1_OPTIONS = "containerd.linux.runc.RuncOptions"      # v1 linux runtime: the container's
RUNC_V1_CREATE = "containerd.linux.runc.CreateOptions"     # v1 linux runtime: the task's
PROCESS_DETAILS = "containerd.runc.v1.ProcessDetails"
# a checkpoint into the content store without a lease of its caller's is held by one of its
# own for as long as containerd's client keeps its default lease, then collected
CHECKPOINT_LEASE = timedelta(hours=24)


# containerd's cgroup metrics types (containerd/cgroups stats/v1 and v2 metrics.proto) are not in
# the generated API; the fields ctr reads are declared here and encoded with the same numbers.
_CG_V1: dict[str, list[tuple[str, int, str, bool]]] = {
    "Metrics": [("pids", 2, "PidsStat", False), ("cpu", 3, "CPUStat", False), ("memory", 4, "MemoryStat", False),
                ("memory_oom_control", 9, "MemoryOomControl", False)],
    "PidsStat": [("current", 1, "", False), ("limit", 2, "", False)],
    "CPUStat": [("usage", 1, "CPUUsage", False), ("throttling", 2, "Throttle", False)],
    "CPUUsage": [("total", 1, "", False), ("kernel", 2, "", False), ("user", 3, "", False), ("per_cpu", 4, "", True)],
    "Throttle": [("periods", 1, "", False), ("throttled_periods", 2, "", False), ("throttled_time", 3, "", False)],
    "MemoryStat": [(n, i + 1, "", False) for i, n in enumerate((
        "cache", "rss", "rss_huge", "mapped_file", "dirty", "writeback", "pg_pg_in", "pg_pg_out", "pg_fault",
        "pg_maj_fault", "inactive_anon", "active_anon", "inactive_file", "active_file", "unevictable",
        "hierarchical_memory_limit", "hierarchical_swap_limit", "total_cache", "total_rss", "total_rss_huge",
        "total_mapped_file", "total_dirty", "total_writeback", "total_pg_pg_in", "total_pg_pg_out",
        "total_pg_fault", "total_pg_maj_fault", "total_inactive_anon", "total_active_anon",
        "total_inactive_file", "total_active_file", "total_unevictable"))] + [
        ("usage", 33, "MemoryEntry", False), ("swap", 34, "MemoryEntry", False),
        ("kernel", 35, "MemoryEntry", False), ("kernel_tcp", 36, "MemoryEntry", False)],
    "MemoryEntry": [("limit", 1, "", False), ("usage", 2, "", False), ("max", 3, "", False), ("failcnt", 4, "", False)],
    "MemoryOomControl": [("oom_kill_disable", 1, "", False), ("under_oom", 2, "", False), ("oom_kill", 3, "", False)],
}
_CG_V2: dict[str, list[tuple[str, int, str, bool]]] = {
    "Metrics": [("pids", 1, "PidsStat", False), ("cpu", 2, "CPUStat", False), ("memory", 4, "MemoryStat", False)],
    "PidsStat": [("current", 1, "", False), ("limit", 2, "", False)],
    "CPUStat": [(n, i + 1, "", False) for i, n in enumerate(
        ("usage_usec", "user_usec", "system_usec", "nr_periods", "nr_throttled", "throttled_usec"))],
    "MemoryStat": [("usage", 30, "", False), ("usage_limit", 31, "", False)],
}


def _metrics_class(package: str, messages: dict[str, list[tuple[str, int, str, bool]]]) -> type[Message]:
    pool = descriptor_pool.DescriptorPool()
    f = descriptor_pb2.FileDescriptorProto(name=package.replace(".", "/") + "/metrics.proto", package=package,
                                           syntax="proto3")
    for name, fields in messages.items():
        m = f.message_type.add(name=name)
        for fname, number, type_name, repeated in fields:
            fd = m.field.add(name=fname, number=number,
                             label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED if repeated
                             else descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
            if type_name:
                fd.type, fd.type_name = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE, f".{package}.{type_name}"
            else:
                fd.type = descriptor_pb2.FieldDescriptorProto.TYPE_UINT64
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.Metrics"))


_METRICS = {"v1": ("io.containerd.cgroups.v1.Metrics", _metrics_class("io.containerd.cgroups.v1", _CG_V1)),
            "v2": ("io.containerd.cgroups.v2.Metrics", _metrics_class("io.containerd.cgroups.v2", _CG_V2))}


def _process_pb(info: ProcessInfo) -> task_pb2.Process:
    p = task_pb2.Process(container_id=info.id, id=info.exec_id or info.id, pid=info.pid,
                         status=_STATUS.get(info.status, task_pb2.UNKNOWN), stdin=info.stdio.stdin,
                         stdout=info.stdio.stdout, stderr=info.stdio.stderr, terminal=info.stdio.terminal,
                         exit_status=info.exit_status)
    if info.exited_at_ns:
        set_timestamp(p.exited_at, info.exited_at_ns)
    return p


def _type_name(any_msg: Any) -> str:
    return str(any_msg.type_url).rsplit("/", 1)[-1] if any_msg is not None else ""


def _decode(any_msg: Any, cls: type[Message]) -> Any:
    try:
        return cls.FromString(any_msg.value)
    except DecodeError:
        raise InvalidArgument("invalid task create option for runc: invalid argument") from None


def _runc_options(runtime: str, task_opts: Any, container_opts: Any) -> dict[str, Any]:
    """The runc options of a create, as CreateTask's fields, read as containerd's runtimes read
    them. runc v2 shims take the task's options if it has any, else the container's (never a
    mix). The v1 linux runtime takes RuncOptions from the container (anything else is refused)
    and its ShimCgroup from the task's CreateOptions."""
    if runtime.startswith(RUNTIME_V1):
        out: dict[str, Any] = {}
        if _type_name(container_opts):
            if _type_name(container_opts) != RUNC_V1_OPTIONS:
                raise Unknown("invalid runtime options format: unknown")
            ropts = _decode(container_opts, runc_pb2.RuncOptions)
            out.update(binary=ropts.runtime, root=ropts.runtime_root, systemd_cgroup=ropts.systemd_cgroup)
        if _type_name(task_opts) == RUNC_V1_CREATE:
            out["shim_cgroup"] = _decode(task_opts, runc_pb2.CreateOptions).shim_cgroup
        return out
    chosen = task_opts if _type_name(task_opts) else container_opts
    if _type_name(chosen) != RUNC_OPTIONS:
        return {}
    opts = _decode(chosen, oci_pb2.Options)
    return {"binary": opts.binary_name, "root": opts.root, "systemd_cgroup": opts.systemd_cgroup,
            "shim_cgroup": opts.shim_cgroup}


def _restore_path(runtime: str, task_opts: Any) -> str:
    """The task options' CriuImagePath (containerd's getRestorePath): restore from that directory."""
    if runtime.startswith(RUNTIME_V1):
        return _decode(task_opts, runc_pb2.CreateOptions).criu_image_path \
            if _type_name(task_opts) == RUNC_V1_CREATE else ""
    return _decode(task_opts, oci_pb2.Options).criu_image_path if _type_name(task_opts) == RUNC_OPTIONS else ""


def _checkpoint_blob(request: pbt.CreateTaskRequest) -> Descriptor | None:
    """The checkpoint image's CRIU tar to restore from, checked as containerd's tasks service does."""
    if not request.HasField("checkpoint"):
        return None
    d = request.checkpoint
    if d.media_type != CHECKPOINT_TAR:
        raise Unknown(f'unsupported checkpoint type "{d.media_type}"')
    return Descriptor(d.media_type, d.digest, d.size, dict(d.annotations))


def _with_container_check(fn):  # type: ignore[no-untyped-def]
    """containerd looks the container up before the task: when the runtime has no such task and
    no such container exists either, answer with the container's NotFound as containerd does.
    Any other NotFound (a finished process) means the task, so its container, exists."""
    @functools.wraps(fn)
    async def call(self: "TasksServicer", request: Any, context: aio.ServicerContext) -> Any:
        try:
            return await fn(self, request, context)
        except NotFound as exc:
            if is_task_not_found(exc, request.container_id):
                await self.containers.get(namespace(context), request.container_id,
                                          timeout(context, self.default_timeout))
            raise
    return call


def _with_early_container_check(fn):  # type: ignore[no-untyped-def]
    """``_with_container_check`` with the container looked up alongside the call, not after
    it: for Get, which ctr asks of a task already deleted twice in every ``run --rm``."""
    @functools.wraps(fn)
    async def call(self: "TasksServicer", request: Any, context: aio.ServicerContext) -> Any:
        container = asyncio.ensure_future(self.containers.get(
            namespace(context), request.container_id, timeout(context, self.default_timeout)))
        try:
            return await fn(self, request, context)
        except NotFound as exc:
            if is_task_not_found(exc, request.container_id):
                await container
            raise
        finally:
            if not container.done():
                container.cancel()
            container.add_done_callback(_consume)
    return call


def _consume(fut: "asyncio.Future[Any]") -> None:
    """An early lookup nobody needed: its outcome (say NotFound) is not an unhandled error."""
    if not fut.cancelled():
        fut.exception()


class TasksServicer(pbt_grpc.TasksServicer):
    def __init__(self, runtime: RuntimeClient, containers: ContainerRecords, default_timeout: float) -> None:
        self.runtime, self.containers, self.default_timeout = runtime, containers, default_timeout
        # tasks this gateway deleted lately (ctr asks for each twice after its delete, in every
        # `run --rm`): a Get of one is answered here. A create of it, here or (by its event)
        # anywhere, drops the mark, and one begun during the delete keeps it from being set.
        self._deleted: RecordCache[Exit] = RecordCache()
        self.networks: TaskNetworks | None = None  # attaches labelled containers (network.py)

    @classmethod
    def register(cls, server: aio.Server, bus: Bus, cfg: Config, containers: ContainerRecords, hub: EventHub) -> None:
        servicer = cls(RuntimeClient(bus, cfg.prefix, cfg.host), containers, cfg.request_timeout)
        servicer.networks = TaskNetworks(NetworkClient(bus, cfg.prefix, cfg.host), servicer.runtime, containers)
        servicer._deleted.drop_on(hub, (ev.TaskCreate.TOPIC,), event_key("container_id"))
        pbt_grpc.add_TasksServicer_to_server(servicer, server)

    @unary("Tasks.Create")
    async def Create(self, request: pbt.CreateTaskRequest, context: aio.ServicerContext) -> pbt.CreateTaskResponse:
        ns = namespace(context)
        self._deleted.drop((ns, request.container_id))
        container = await self.containers.get(ns, request.container_id, timeout(context, self.default_timeout))
        task_opts = request.options if request.HasField("options") else None
        opts = _runc_options(container.runtime.name, task_opts, container.runtime.options)
        binary = request.runtime_path or opts.pop("binary", "")
        checkpoint = _restore_path(container.runtime.name, task_opts)
        info = await self.runtime.create(CreateTask(
            namespace=ns, id=request.container_id, spec=container.spec.value if container.spec else b"",
            runtime=container.runtime.name, binary=binary,
            rootfs=[Mount(m.type, m.source, m.target, list(m.options)) for m in request.rootfs],
            stdio=Stdio(request.stdin, request.stdout, request.stderr, request.terminal), checkpoint=checkpoint,
            checkpoint_blob=None if checkpoint else _checkpoint_blob(request), **opts))
        if self.networks is not None:
            await self.networks.created(ns, container, info.pid)
        return pbt.CreateTaskResponse(container_id=request.container_id, pid=info.pid)

    @unary("Tasks.Start")
    @_with_container_check
    async def Start(self, request: pbt.StartRequest, context: aio.ServicerContext) -> pbt.StartResponse:
        info = await self.runtime.start(ProcessRef(namespace(context), request.container_id, request.exec_id))
        return pbt.StartResponse(pid=info.pid)

    @unary("Tasks.Delete")
    @_with_container_check
    async def Delete(self, request: pbt.DeleteTaskRequest, context: aio.ServicerContext) -> pbt.DeleteResponse:
        ns = namespace(context)
        deleting = self._deleted.keep((ns, request.container_id),
                                      self.runtime.delete(ProcessRef(ns, request.container_id)))
        exit_ = await (deleting if self.networks is None else self.networks.delete(
            ns, request.container_id, timeout(context, self.default_timeout), deleting))
        # no id: containerd's Tasks.Delete leaves it empty (DeleteProcess names the exec)
        out = pbt.DeleteResponse(pid=exit_.pid, exit_status=exit_.exit_status)
        set_timestamp(out.exited_at, exit_.exited_at_ns)
        return out

    @unary("Tasks.DeleteProcess")
    @_with_container_check
    async def DeleteProcess(self, request: pbt.DeleteProcessRequest, context: aio.ServicerContext) -> pbt.DeleteResponse:
        exit_ = await self.runtime.delete(ProcessRef(namespace(context), request.container_id, request.exec_id))
        out = pbt.DeleteResponse(id=request.exec_id, pid=exit_.pid, exit_status=exit_.exit_status)
        set_timestamp(out.exited_at, exit_.exited_at_ns)
        return out

    @unary("Tasks.Get")
    @_with_early_container_check
    async def Get(self, request: pbt.GetRequest, context: aio.ServicerContext) -> pbt.GetResponse:
        if self._deleted.get((namespace(context), request.container_id)) is not None:
            raise task_not_found(request.container_id)
        info = await self.runtime.get(ProcessRef(namespace(context), request.container_id, request.exec_id),
                                      timeout(context, self.default_timeout))
        return pbt.GetResponse(process=_process_pb(info))

    @unary("Tasks.List")
    async def List(self, request: pbt.ListTasksRequest, context: aio.ServicerContext) -> pbt.ListTasksResponse:
        infos = await self.runtime.list(namespace(context), timeout(context, self.default_timeout))
        return pbt.ListTasksResponse(tasks=[_process_pb(i) for i in infos])

    @unary("Tasks.Kill")
    @_with_container_check
    async def Kill(self, request: pbt.KillRequest, context: aio.ServicerContext) -> empty_pb2.Empty:
        await self.runtime.kill(Kill(namespace(context), request.container_id, request.exec_id, request.signal,
                                     request.all))
        return empty_pb2.Empty()

    @unary("Tasks.Exec")
    @_with_container_check
    async def Exec(self, request: pbt.ExecProcessRequest, context: aio.ServicerContext) -> empty_pb2.Empty:
        ns = namespace(context)
        if not request.exec_id:
            raise InvalidArgument("exec id cannot be empty")
        await self.runtime.exec(Exec(ns, request.container_id, request.exec_id, request.spec.value,
                                     Stdio(request.stdin, request.stdout, request.stderr, request.terminal)))
        return empty_pb2.Empty()

    @unary("Tasks.ResizePty")
    @_with_container_check
    async def ResizePty(self, request: pbt.ResizePtyRequest, context: aio.ServicerContext) -> empty_pb2.Empty:
        await self.runtime.resize(Resize(namespace(context), request.container_id, request.exec_id,
                                         request.width, request.height))
        return empty_pb2.Empty()

    @unary("Tasks.CloseIO")
    @_with_container_check
    async def CloseIO(self, request: pbt.CloseIORequest, context: aio.ServicerContext) -> empty_pb2.Empty:
        await self.runtime.close_io(CloseIO(namespace(context), request.container_id, request.exec_id,
                                            request.stdin))
        return empty_pb2.Empty()

    @unary("Tasks.Pause")
    @_with_container_check
    async def Pause(self, request: pbt.PauseTaskRequest, context: aio.ServicerContext) -> empty_pb2.Empty:
        await self.runtime.pause(ProcessRef(namespace(context), request.container_id))
        return empty_pb2.Empty()

    @unary("Tasks.Resume")
    @_with_container_check
    async def Resume(self, request: pbt.ResumeTaskRequest, context: aio.ServicerContext) -> empty_pb2.Empty:
        await self.runtime.resume(ProcessRef(namespace(context), request.container_id))
        return empty_pb2.Empty()

    @unary("Tasks.ListPids")
    @_with_container_check
    async def ListPids(self, request: pbt.ListPidsRequest, context: aio.ServicerContext) -> pbt.ListPidsResponse:
        pids = await self.runtime.pids(ProcessRef(namespace(context), request.container_id),
                                       timeout(context, self.default_timeout))
        out = pbt.ListPidsResponse()
        for p in pids:
            item = out.processes.add(pid=p.pid)
            if p.exec_id:
                item.info.CopyFrom(any_pb2.Any(type_url=PROCESS_DETAILS,
                                               value=oci_pb2.ProcessDetails(exec_id=p.exec_id).SerializeToString()))
        return out

    @unary("Tasks.Checkpoint")
    @_with_container_check
    async def Checkpoint(self, request: pbt.CheckpointTaskRequest, context: aio.ServicerContext) -> pbt.CheckpointTaskResponse:
        ns, id = namespace(context), request.container_id
        opts = oci_pb2.CheckpointOptions()
        if request.HasField("options") and request.options.value:
            try:
                opts = oci_pb2.CheckpointOptions.FromString(request.options.value)
            except DecodeError:
                raise InvalidArgument("invalid task checkpoint option for runc: invalid argument") from None
        if opts.image_path:  # the images stay there: nothing goes into the content store
            await self.runtime.checkpoint(Checkpoint(ns, id, opts.image_path, opts.exit, opts.work_path))
            return pbt.CheckpointTaskResponse()
        container = await self.containers.get(ns, id, timeout(context, self.default_timeout))
        spec = container.spec
        config = any_pb2.Any(type_url=spec.type_url, value=spec.value).SerializeToString() if spec else b""
        held = lease(context)
        own = "" if held else await self._checkpoint_lease(ns)
        try:
            result = await self.runtime.checkpoint(Checkpoint(ns, id, "", opts.exit, opts.work_path, held or own,
                                                              config))
        except BaseException:
            if own:  # its blobs, if any were committed, go with it
                await asyncio.shield(self._drop_lease(ns, own))
            raise
        return pbt.CheckpointTaskResponse(descriptors=[
            oci_descriptor_pb2.Descriptor(media_type=d.media_type, digest=d.digest, size=d.size,
                                          annotations=d.annotations) for d in result.descriptors])

    async def _checkpoint_lease(self, ns: str) -> str:
        made = await self.containers.metadata.create_lease(ns, expiring_lease("flotilla-checkpoint",
                                                                              CHECKPOINT_LEASE))
        return made.id

    async def _drop_lease(self, ns: str, id: str) -> None:
        try:
            await self.containers.metadata.delete_lease(ns, id)
        except FlotillaError as exc:  # it expires anyway
            log.warning("deleting the checkpoint lease %s: %s", id, exc)

    @unary("Tasks.Update")
    @_with_container_check
    async def Update(self, request: pbt.UpdateTaskRequest, context: aio.ServicerContext) -> empty_pb2.Empty:
        await self.runtime.update(Update(namespace(context), request.container_id, request.resources.value,
                                         dict(request.annotations)))
        return empty_pb2.Empty()

    @unary("Tasks.Metrics")
    async def Metrics(self, request: pbt.MetricsRequest, context: aio.ServicerContext) -> pbt.MetricsResponse:
        ns = namespace(context)
        wanted = filters.parse(request.filters)
        results = await self.runtime.metrics(MetricsQuery(ns), timeout(context, self.default_timeout))
        out = pbt.MetricsResponse()
        for m in results:
            if not wanted.matches(filters.lookup_fields({"id": m.id, "namespace": ns})):
                continue
            type_url, cls = _METRICS.get(m.cgroup, _METRICS["v1"])
            item = out.metrics.add(id=m.id)
            set_timestamp(item.timestamp, m.timestamp_ns)
            item.data.CopyFrom(any_pb2.Any(type_url=type_url, value=fill(cls(), m.stats).SerializeToString()))
        return out

    @unary("Tasks.Wait")
    @_with_container_check
    async def Wait(self, request: pbt.WaitRequest, context: aio.ServicerContext) -> pbt.WaitResponse:
        exit_ = await self.runtime.wait(ProcessRef(namespace(context), request.container_id, request.exec_id))
        out = pbt.WaitResponse(exit_status=exit_.exit_status)
        set_timestamp(out.exited_at, exit_.exited_at_ns)
        return out

