"""The container arguments Spegel's own Helm chart renders, written down as data.

Rendered by hand from spegel-org/spegel charts/spegel/templates/daemonset.yaml and
post-delete-hook.yaml with charts/spegel/values.yaml, for
`helm install spegel oci://ghcr.io/spegel-org/helm-charts/spegel --namespace spegel`
(release `spegel`, so the full name is `spegel`; clusterDomain `cluster.local.`).
`$(NODE_IP)` is what the kubelet substitutes from the NODE_IP variable.
"""

from __future__ import annotations

# Default values.
REGISTRY = [
    "registry",
    "--log-level=INFO",
    "--mirror-resolve-retries=3",
    "--mirror-resolve-timeout=20ms",
    "--registry-addr=:5000",
    "--router-addr=:5001",
    "--metrics-addr=:9090",
    "--containerd-sock=/run/containerd/containerd.sock",
    "--containerd-namespace=k8s.io",
    "--bootstrap-kind=dns",
    "--dns-bootstrap-domain=spegel-bootstrap.spegel.svc.cluster.local.",
    "--containerd-content-path=/var/lib/containerd/io.containerd.content.v1.content",
    "--debug-web-enabled=true",
    "--otel-service-name=spegel",
    "--otel-sampler=parentbased_always_off",
]
# The registry container's environment (GOMEMLIMIT: limits.memory in bytes).
REGISTRY_ENV = {"DATA_DIR": "", "GOMEMLIMIT": "134217728", "NODE_IP": "$(NODE_IP)"}

CONFIGURATION = [
    "configuration",
    "--log-level=INFO",
    "--containerd-registry-config-path=/etc/containerd/certs.d",
    "--mirror-targets",
    "http://$(NODE_IP):30020",
    "http://$(NODE_IP):30021",
    "--resolve-tags=true",
    "--prepend-existing=false",
]

CLEANUP = [
    "cleanup",
    "--containerd-registry-config-path=/etc/containerd/certs.d",
    "--addr=:8080",
]

CLEANUP_WAIT = [
    "cleanup-wait",
    "--probe-endpoint=spegel-cleanup.spegel.svc.cluster.local.:8080",
]

# With the list and flag values set that change the shape of the argument list:
# spegel.mirroredRegistries=[https://docker.io, https://ghcr.io],
# spegel.additionalMirrorTargets=[https://mirror.example.com],
# spegel.registryFilters=[".*:latest$", "^docker\\.io/library/"],
# spegel.prependExisting=true, spegel.resolveTags=false, spegel.logLevel=DEBUG,
# spegel.otel.endpoint=otel-collector:4318, spegel.otel.insecure=true.
REGISTRY_WITH_OPTIONS = [
    "registry",
    "--log-level=DEBUG",
    "--mirror-resolve-retries=3",
    "--mirror-resolve-timeout=20ms",
    "--registry-addr=:5000",
    "--router-addr=:5001",
    "--metrics-addr=:9090",
    "--mirrored-registries",
    "https://docker.io",
    "https://ghcr.io",
    "--containerd-sock=/run/containerd/containerd.sock",
    "--containerd-namespace=k8s.io",
    "--bootstrap-kind=dns",
    "--dns-bootstrap-domain=spegel-bootstrap.spegel.svc.cluster.local.",
    "--registry-filters",
    ".*:latest$",
    "^docker\\.io/library/",
    "--containerd-content-path=/var/lib/containerd/io.containerd.content.v1.content",
    "--debug-web-enabled=true",
    "--otel-endpoint=otel-collector:4318",
    "--otel-insecure",
    "--otel-service-name=spegel",
    "--otel-sampler=parentbased_always_off",
]

CONFIGURATION_WITH_OPTIONS = [
    "configuration",
    "--log-level=DEBUG",
    "--containerd-registry-config-path=/etc/containerd/certs.d",
    "--mirrored-registries",
    "https://docker.io",
    "https://ghcr.io",
    "--mirror-targets",
    "http://$(NODE_IP):30020",
    "http://$(NODE_IP):30021",
    "https://mirror.example.com",
    "--resolve-tags=false",
    "--prepend-existing=true",
]


def with_node_ip(args: list[str], node_ip: str = "127.0.0.1") -> list[str]:
    return [a.replace("$(NODE_IP)", node_ip) for a in args]


def replace_flag(args: list[str], **values: str) -> list[str]:
    """Set `--flag=value` arguments (keyword names use `_` for `-`); each must be there."""
    out = list(args)
    for key, value in values.items():
        flag = "--" + key.replace("_", "-") + "="
        hits = [i for i, a in enumerate(out) if a.startswith(flag)]
        if len(hits) != 1:
            raise KeyError(f"{flag} appears {len(hits)} times in {args}")
        out[hits[0]] = flag + value
    return out
