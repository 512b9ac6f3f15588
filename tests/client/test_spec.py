"""Spec options give the specs containerd gives."""

from __future__ import annotations

import json
import uuid

from flotilla.client import (Client, ImageConfig, Resources, default_spec, generate_spec, parse_mount, with_env,
                             with_host_namespace, with_image_config, with_mounts, with_process_args,
                             with_resources, with_tty, with_user)
from flotilla.testing import CTR, ContainerdPeer, ctr

from .conftest import Images


def test_default_spec_is_ctr_oci_spec() -> None:
    import subprocess
    theirs = json.loads(subprocess.run([CTR, "oci", "spec"], capture_output=True, text=True, check=True).stdout)
    assert default_spec("default", "") == theirs


async def test_container_spec_matches_ctr_container_create(containerd: ContainerdPeer, images: Images) -> None:
    ns = "spec-" + uuid.uuid4().hex[:6]
    ref = images.ref("busybox")
    ctr(containerd.address, "image", "pull", "--plain-http", ref, namespace=ns, check=True)
    ctr(containerd.address, "containers", "create", "--env", "A=b", ref, "theirs", "echo", "hi",
        namespace=ns, check=True)
    theirs = json.loads(ctr(containerd.address, "containers", "info", "theirs", namespace=ns, check=True).stdout)
    async with Client(containerd.address, ns) as c:
        try:
            ours = await c.new_container("theirs-too", ref, with_env("A=b"), args=["echo", "hi"])
            theirs["Spec"]["linux"]["cgroupsPath"] = f"/{ns}/theirs-too"
            assert ours.spec == theirs["Spec"]
            assert ours.labels == theirs["Labels"]
        finally:
            await c.delete_container("theirs-too")
            ctr(containerd.address, "containers", "rm", "theirs", namespace=ns)
            await c.images.delete(ref, sync=True)


def test_options_compose() -> None:
    cfg = ImageConfig(env=["PATH=/bin", "A=1"], entrypoint=["/bin/sh", "-c"], cmd=["echo img"], working_dir="/w",
                      user="1000:1000")
    spec = generate_spec("ns", "id", with_env("A=2", "B=3", "PATH"), with_image_config(cfg), with_tty,
                         with_host_namespace("network"), with_resources(Resources(memory=64 << 20, pids=10)),
                         with_mounts(parse_mount("type=bind,src=/tmp,dst=/data,options=rbind:ro")))
    p = spec["process"]
    # image env first, then the options' replace or append (a bare name removes only what is
    # already there when the option runs: nothing, here, as in containerd)
    assert p["env"] == ["PATH=/bin", "A=2", "B=3", "TERM=xterm"]
    assert generate_spec("ns", "id", with_env("A=1", "B=2"), with_env("A"))["process"]["env"] == ["B=2"]
    assert p["args"] == ["/bin/sh", "-c", "echo img"] and p["cwd"] == "/w" and p["terminal"] is True
    assert p["user"] == {"uid": 1000, "gid": 1000}
    assert {"type": "network"} not in spec["linux"]["namespaces"]
    assert spec["linux"]["resources"]["memory"] == {"limit": 64 << 20}
    assert spec["linux"]["resources"]["pids"] == {"limit": 10}
    assert spec["mounts"][-1] == {"destination": "/data", "type": "bind", "source": "/tmp", "options": ["rbind", "ro"]}
    assert generate_spec("ns", "id", with_image_config(cfg, ["ls"]))["process"]["args"] == ["/bin/sh", "-c", "ls"]
    assert generate_spec("ns", "id", with_process_args("true"))["process"]["args"] == ["true"]
    assert generate_spec("ns", "id", with_user("root"))["process"]["user"] == {"uid": 0, "gid": 0}
