"""Real parts for tests and benchmarks: containerd nodes, an upstream registry,
generated OCI images, hosts.toml, and managed child processes.

Everything here is synchronous and binds loopback addresses only.
"""

from bench.kit.containerd import ContainerdCluster, ContainerdNode, PullResult, start_containerds
from bench.kit.hosts import write_hosts_toml
from bench.kit.images import Blob, GeneratedImage, PlatformImage, generate_image, push_image
from bench.kit.procs import (
    KitError,
    ManagedProcess,
    free_port,
    wait_for_tcp,
    wait_for_unix_socket,
)
from bench.kit.recorder import RecordedRequest, RequestRecorder
from bench.kit.registry import UpstreamRegistry

__all__ = [
    "Blob",
    "ContainerdCluster",
    "ContainerdNode",
    "GeneratedImage",
    "KitError",
    "ManagedProcess",
    "PlatformImage",
    "PullResult",
    "RecordedRequest",
    "RequestRecorder",
    "UpstreamRegistry",
    "free_port",
    "generate_image",
    "push_image",
    "start_containerds",
    "wait_for_tcp",
    "wait_for_unix_socket",
    "write_hosts_toml",
]
