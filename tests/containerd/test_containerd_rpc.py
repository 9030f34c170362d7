from __future__ import annotations

import grpc
import pytest

from mirror.containerd.client import _target, event_filters
from mirror.containerd.errors import ContainerdError, ContainerdUnavailable
from mirror.containerd.rpc import translate


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED])
def test_transient_codes_are_unavailable(code: grpc.StatusCode) -> None:
    error = translate(FakeRpcError(code, "socket closed"), "Version")
    assert isinstance(error, ContainerdUnavailable)
    assert error.code == code.name
    assert "Version" in str(error) and "socket closed" in str(error)


def test_other_codes_are_plain_errors() -> None:
    error = translate(FakeRpcError(grpc.StatusCode.NOT_FOUND, "image not found"), "Images.Get")
    assert type(error) is ContainerdError
    assert error.code == "NOT_FOUND"


@pytest.mark.parametrize(
    ("address", "target"),
    [
        ("/run/containerd/containerd.sock", "unix:///run/containerd/containerd.sock"),
        ("run/containerd.sock", "unix:run/containerd.sock"),
        ("unix:///x.sock", "unix:///x.sock"),
    ],
)
def test_target(address: str, target: str) -> None:
    assert _target(address) == target


def test_event_filters_quote_values() -> None:
    assert event_filters("k8s.io") == ['topic~="^/(images|content)/",namespace=="k8s.io"']
    assert event_filters('we"ird', "^/images/") == ['topic~="^/images/",namespace=="we\\"ird"']
