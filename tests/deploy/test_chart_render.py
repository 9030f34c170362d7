"""The Helm chart, rendered by Helm's own engine, checked against Kubernetes' schemas
and against what the seed's `helm upgrade --install spegel ...` commands expect."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from mirror.cli import parse_args
from tests.deploy import spegel_args as spegel
from tests.deploy.chart import (
    CHART_DIR,
    RENDERED_DEFAULT,
    as_stream,
    documents,
    find,
    render,
    render_set,
)
from tests.deploy.k8s import container, containers, pod_spec, qos_class

helm = pytest.importorskip("helm_python")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

KUBE_VERSIONS = ("1.30", "1.34")
# Custom resources: no schema ships with kubernetes-validate for these.
CRD_KINDS = {"ServiceMonitor", "VerticalPodAutoscaler"}
EVERYTHING_ON = (
    "serviceMonitor.enabled=true,networkPolicy.enabled=true,verticalPodAutoscaler.enabled=true,"
    "spegel.dataDir.enabled=true,livenessProbe.enabled=true,"
    "service.registry.usePreferSameNodeTrafficDistribution=true,"
    "spegel.mirroredRegistries={https://docker.io,https://ghcr.io},"
    "spegel.registryFilters={.*:latest$},extraArgs={--mirror-relay=splice},"
    "podAnnotations.a=b,commonLabels.team=infra,imagePullSecrets[0].name=pull"
)


@pytest.fixture(scope="module")
def default_docs() -> list[dict[str, Any]]:
    return documents(render())


def _args(doc: dict[str, Any], name: str) -> list[str]:
    return [str(a) for a in container(doc, name)["args"]]


def test_rendered_default_file_is_in_sync() -> None:
    text = RENDERED_DEFAULT.read_text()
    body = text[text.index("---\n") :]
    assert body == as_stream(render()), "run `python -m tests.deploy.chart` and review the diff"


def test_helm_lint_is_clean() -> None:
    report = helm.lint(str(CHART_DIR), strict=True)
    assert report["errors"] == []
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == []


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("values", ["", EVERYTHING_ON], ids=["defaults", "everything-on"])
def test_manifests_match_kubernetes_schemas(version: str, values: str) -> None:
    docs = documents(render_set(values) if values else render())
    kinds = {d["kind"] for d in docs}
    assert {"DaemonSet", "Service", "ServiceAccount", "Pod"} <= kinds
    if values:
        assert CRD_KINDS | {"NetworkPolicy"} <= kinds
    for doc in docs:
        if doc["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(doc, version, strict=True)


def test_the_schema_check_can_fail(default_docs: list[dict[str, Any]]) -> None:
    broken = copy.deepcopy(find(default_docs, "DaemonSet", "trio-mirror"))
    pod_spec(broken)["containers"][0]["readinesProbe"] = {}  # misspelt field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBE_VERSIONS[0], strict=True)


def test_seed_install_command_for_gpu_nodes() -> None:
    # helm upgrade --install spegel ... --set resources.requests.memory=128Mi
    #   --set resources.limits.memory=256Mi --set mirrorResolveTimeout=50ms
    docs = documents(
        render_set(
            "resources.requests.memory=128Mi,resources.limits.memory=256Mi,"
            "mirrorResolveTimeout=50ms"
        )
    )
    daemonset = find(docs, "DaemonSet", "trio-mirror")
    assert "--mirror-resolve-timeout=50ms" in _args(daemonset, "registry")
    assert qos_class(daemonset) == "Burstable"
    registry = container(daemonset, "registry")["resources"]
    assert registry["requests"]["memory"] == "128Mi" and registry["limits"]["memory"] == "256Mi"


def test_spegel_value_name_still_sets_the_timeout() -> None:
    daemonset = find(
        documents(render_set("spegel.mirrorResolveTimeout=75ms")), "DaemonSet", "mirror"
    )
    assert "--mirror-resolve-timeout=75ms" in _args(daemonset, "registry")


def test_defaults_are_burstable_and_tolerate_every_taint(
    default_docs: list[dict[str, Any]],
) -> None:
    for name in ("trio-mirror", "cleanup"):
        daemonset = find(default_docs, "DaemonSet", name)
        assert qos_class(daemonset) == "Burstable"
        tolerations = pod_spec(daemonset)["tolerations"]
        for effect in ("NoSchedule", "NoExecute"):
            assert {"effect": effect, "operator": "Exists"} in tolerations
    assert qos_class({"kind": "Pod", "spec": {"containers": [{"name": "x"}]}}) == "BestEffort"


def test_containers_are_locked_down(default_docs: list[dict[str, Any]]) -> None:
    daemonset = find(default_docs, "DaemonSet", "trio-mirror")
    for c in containers(daemonset):
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
    spec = pod_spec(daemonset)
    assert spec["automountServiceAccountToken"] is False
    assert spec["priorityClassName"] == "system-node-critical"
    mounts = {m["name"]: m for m in container(daemonset, "registry")["volumeMounts"]}
    assert mounts["containerd-content"]["readOnly"] is True
    assert mounts["containerd-config"]["readOnly"] is True
    volumes = {v["name"]: v["hostPath"] for v in spec["volumes"]}
    assert volumes["containerd-sock"] == {
        "path": "/run/containerd/containerd.sock",
        "type": "Socket",
    }
    assert volumes["containerd-config"]["path"] == "/etc/containerd/certs.d"


def test_dns_bootstrap_names_the_headless_service(default_docs: list[dict[str, Any]]) -> None:
    daemonset = find(default_docs, "DaemonSet", "trio-mirror")
    service = find(default_docs, "Service", "-bootstrap")
    args = _args(daemonset, "registry")
    assert "--bootstrap-kind=dns" in args
    domain = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local."
    assert f"--dns-bootstrap-domain={domain}" in args
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    pod_labels = daemonset["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["protocol"] == "UDP"
    assert service["spec"]["ports"][0]["port"] == 5001


def test_mirror_targets_reach_the_registry_port(default_docs: list[dict[str, Any]]) -> None:
    daemonset = find(default_docs, "DaemonSet", "trio-mirror")
    configuration = _args(daemonset, "configuration")
    targets = configuration[configuration.index("--mirror-targets") + 1 :][:2]
    assert targets == ["http://$(NODE_IP):30020", "http://$(NODE_IP):30021"]
    ports = {p["name"]: p for p in container(daemonset, "registry")["ports"]}
    assert ports["registry"]["hostPort"] == 30020 and ports["registry"]["containerPort"] == 5000
    assert ports["router"]["protocol"] == "UDP" and ports["metrics"]["containerPort"] == 9090
    node_port = find(default_docs, "Service", "-registry")
    assert node_port["spec"]["type"] == "NodePort"
    assert node_port["spec"]["ports"][0]["nodePort"] == 30021
    assert node_port["spec"]["ports"][0]["targetPort"] == "registry"
    readiness = container(daemonset, "registry")["readinessProbe"]["httpGet"]
    assert readiness == {"path": "/readyz", "port": "registry"}


def test_every_rendered_command_line_parses(default_docs: list[dict[str, Any]]) -> None:
    env = {"NODE_IP": "127.0.0.1", "DATA_DIR": ""}
    seen = set()
    for doc in default_docs:
        if doc["kind"] not in ("DaemonSet", "Pod"):
            continue
        for c in containers(doc):
            options = parse_args(spegel.with_node_ip([str(a) for a in c["args"]]), environ=env)
            seen.add(options.command)
    assert seen == {"configuration", "registry", "cleanup", "cleanup-wait"}


def test_registry_args_cover_spegels(default_docs: list[dict[str, Any]]) -> None:
    """Our registry flags are Spegel's, less only the tracing ones we do not export."""

    def flags(args: list[str]) -> set[str]:
        return {a.split("=", 1)[0] for a in args if a.startswith("--")}

    ours = flags(_args(find(default_docs, "DaemonSet", "trio-mirror"), "registry"))
    assert flags(spegel.REGISTRY) - ours == {"--otel-service-name", "--otel-sampler"}
    configuration = _args(find(default_docs, "DaemonSet", "trio-mirror"), "configuration")
    assert configuration == spegel.CONFIGURATION


def test_post_delete_hook_restores_containerd(default_docs: list[dict[str, Any]]) -> None:
    cleanup = find(default_docs, "DaemonSet", "-cleanup")
    service = find(default_docs, "Service", "-cleanup")
    wait = find(default_docs, "Pod", "-cleanup-wait")
    for doc in (cleanup, service, wait):
        assert doc["metadata"]["annotations"]["helm.sh/hook"] == "post-delete"
    assert wait["metadata"]["annotations"]["helm.sh/hook-weight"] == "1"
    assert _args(cleanup, "cleanup")[:2] == [
        "cleanup",
        "--containerd-registry-config-path=/etc/containerd/certs.d",
    ]
    endpoint = f"{service['metadata']['name']}.spegel.svc.cluster.local.:8080"
    assert _args(wait, "cleanup-wait") == ["cleanup-wait", f"--probe-endpoint={endpoint}"]
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert pod_spec(cleanup)["volumes"][0]["hostPath"]["path"] == "/etc/containerd/certs.d"


def test_optional_parts() -> None:
    docs = documents(render_set(EVERYTHING_ON))
    daemonset = find(docs, "DaemonSet", "trio-mirror")
    args = _args(daemonset, "registry")
    assert "--data-dir=/var/lib/spegel" in args and "--mirror-relay=splice" in args
    start = args.index("--mirrored-registries") + 1
    assert args[start : start + 3] == ["https://docker.io", "https://ghcr.io", args[start + 2]]
    assert args[start + 2].startswith("--containerd-sock=")
    assert "DATA_DIR" not in {e["name"] for e in container(daemonset, "registry")["env"]}
    assert "livenessProbe" in container(daemonset, "registry")
    registry_service = find(docs, "Service", "-registry")
    assert registry_service["spec"]["trafficDistribution"] == "PreferSameNode"
    # Without the host port, only the node port is a mirror target.
    assert "http://$(NODE_IP):30020" not in _args(daemonset, "configuration")
    monitor = find(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    no_config = documents(render_set("spegel.containerdMirrorAdd=false"))
    assert "initContainers" not in pod_spec(find(no_config, "DaemonSet", ""))
    assert not [d for d in no_config if d["metadata"]["name"].endswith("cleanup")]


@pytest.mark.parametrize(
    "values",
    [
        "mirrorResolveTimeout=fast",
        "spegel.logLevel=LOUD",
        "service.registry.nodePort=80",
        "spegel.mirroredRegistries={docker.io}",
        "resources=small",
        "basicAuthSecretName=creds",
        "grafanaDashboard.enabled=true",
        "spegel.containerdSock=relative.sock",
    ],
)
def test_bad_values_are_refused(values: str) -> None:
    with pytest.raises(helm.HelmError):
        render_set(values)
