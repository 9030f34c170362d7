"""Errors raised by the containerd client."""

from __future__ import annotations


class ContainerdError(Exception):
    """containerd answered a call with an error (or an answer we cannot use).

    `code` is the gRPC status code name (``"INVALID_ARGUMENT"``, ...) when the
    error came from gRPC, else ``None``.
    """

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class ContainerdUnavailable(ContainerdError):
    """containerd could not be reached, went away mid-call, or missed the deadline.

    Transient by nature: the same client works again once containerd is back.
    """
