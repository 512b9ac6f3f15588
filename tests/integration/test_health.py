"""grpc.health.v1, which containerd's Go client checks before any call: the same answers
from Flotilla and containerd."""

from __future__ import annotations

import grpc
import pytest

from flotilla._api.grpc.health.v1 import health_pb2, health_pb2_grpc
from flotilla.testing import ContainerdPeer, PrivateSuite


def _check(address: str, service: str) -> tuple[grpc.StatusCode, int]:
    with grpc.insecure_channel(f"unix://{address}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            return grpc.StatusCode.OK, reply.status
        except grpc.RpcError as exc:
            return exc.code(), -1


@pytest.mark.parametrize("service", ["", "containerd.services.tasks.v1.Tasks", "nosuch"])
def test_check_answers_as_containerd_does(suite: PrivateSuite, containerd: ContainerdPeer, service: str) -> None:
    assert _check(suite.address, service) == _check(containerd.address, service)


def test_the_server_is_serving_and_watch_says_so_first(suite: PrivateSuite) -> None:
    assert _check(suite.address, "") == (grpc.StatusCode.OK, health_pb2.HealthCheckResponse.SERVING)
    with grpc.insecure_channel(f"unix://{suite.address}") as channel:
        stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=5)
        assert next(stream).status == health_pb2.HealthCheckResponse.SERVING
        stream.cancel()
