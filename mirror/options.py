"""Typed options: one frozen dataclass per subcommand.

`mirror.cli` parses flags and environment variables from its flag table and
builds one of these; every field is a flag's destination (`--registry-addr` ->
`registry_addr`), and tests check that the two stay in step. Lists are tuples,
so an options object can be shared freely.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

RelayMode = Literal["copy", "splice", "redirect"]


@dataclass(frozen=True, kw_only=True)
class RegistryOptions:
    command: ClassVar[str] = "registry"
    log_level: str = "INFO"
    bootstrap_kind: str = ""
    dns_bootstrap_domain: str = ""
    http_bootstrap_addr: str = ""
    http_bootstrap_peer: str = ""
    static_bootstrap_peers: tuple[str, ...] = ()
    containerd_registry_config_path: str = "/etc/containerd/certs.d"
    metrics_addr: str = ":9090"
    containerd_config_file: str = "/etc/containerd/config.toml"
    containerd_sock: str = "/run/containerd/containerd.sock"
    containerd_namespace: str = "k8s.io"
    containerd_content_path: str = "/var/lib/containerd/io.containerd.content.v1.content"
    data_dir: str = "/var/lib/spegel"
    basic_auth_dir: str = "/etc/secrets/basic-auth"
    router_addr: str = ":5001"
    registry_addr: str = ":5000"
    registry_head_timeout: float = 10.0
    registry_client_connections: int = 1024
    router_key_file: str = ""
    otel_endpoint: str = ""
    otel_service_name: str = "spegel"
    otel_sampler: str = "parentbased_always_off"
    mirrored_registries: tuple[str, ...] = ()
    registry_filters: tuple[str, ...] = ()
    mirror_resolve_timeout: float = 0.020
    mirror_resolve_retries: int = 3
    mirror_relay: RelayMode = "splice"
    cold_start: bool = True
    peer_streams: int = 3
    peer_upload_rate: int = 0
    mirror_min_rate: int = 65536
    mirror_stripe_width: int = 4
    debug_web_enabled: bool = True
    resolve_latest_tag: bool = True
    otel_enabled: bool = False
    otel_insecure: bool = False


@dataclass(frozen=True, kw_only=True)
class ConfigurationOptions:
    command: ClassVar[str] = "configuration"
    log_level: str = "INFO"
    containerd_registry_config_path: str = "/etc/containerd/certs.d"
    mirrored_registries: tuple[str, ...] = ()
    mirror_targets: tuple[str, ...] = ()
    resolve_tags: bool = True
    prepend_existing: bool = False
    basic_auth_dir: str = "/etc/secrets/basic-auth"


@dataclass(frozen=True, kw_only=True)
class CleanupOptions:
    command: ClassVar[str] = "cleanup"
    log_level: str = "INFO"
    addr: str = ""
    containerd_registry_config_path: str = "/etc/containerd/certs.d"


@dataclass(frozen=True, kw_only=True)
class CleanupWaitOptions:
    command: ClassVar[str] = "cleanup-wait"
    log_level: str = "INFO"
    probe_endpoint: str = ""
    threshold: int = 3
    period: float = 2.0


@dataclass(frozen=True, kw_only=True)
class VersionOptions:
    command: ClassVar[str] = "version"
    log_level: str = "INFO"
    format: str = "text"


@dataclass(frozen=True, kw_only=True)
class WatchOptions:
    command: ClassVar[str] = "watch"
    log_level: str = "INFO"
    nodes: tuple[str, ...] = ()


Options = (
    RegistryOptions
    | ConfigurationOptions
    | CleanupOptions
    | CleanupWaitOptions
    | VersionOptions
    | WatchOptions
)

OPTIONS_BY_COMMAND: dict[str, type[Options]] = {
    cls.command: cls
    for cls in (
        RegistryOptions,
        ConfigurationOptions,
        CleanupOptions,
        CleanupWaitOptions,
        VersionOptions,
        WatchOptions,
    )
}
