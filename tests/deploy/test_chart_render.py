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
    CRD_APIS,
    RENDERED_DEFAULT,
    as_stream,
    documents,
    find,
    render,
    render_all,
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
    "livenessProbe.enabled=true,extraVolumes[0].name=extra,extraVolumes[0].emptyDir.medium=Memory,"
    "extraInitContainers[0].name=first,extraInitContainers[0].image=busybox,"
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
    docs = documents(render_set(values, api_versions=CRD_APIS) if values else render())
    kinds = {d["kind"] for d in docs}
    assert {"DaemonSet", "Service", "ServiceAccount", "Pod"} <= kinds
    if values:
        assert CRD_KINDS | {"NetworkPolicy"} <= kinds
    for doc in docs:
        if doc["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(doc, version, strict=True)


def test_the_schema_check_can_fail(default_docs: list[dict[str, Any]]) -> None:
    broken = copy.deepcopy(find(default_docs, "DaemonSet", "spegel"))
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
    daemonset = find(docs, "DaemonSet", "spegel")
    assert "--mirror-resolve-timeout=50ms" in _args(daemonset, "registry")
    assert qos_class(daemonset) == "Burstable"
    registry = container(daemonset, "registry")["resources"]
    assert registry["requests"]["memory"] == "128Mi" and registry["limits"]["memory"] == "256Mi"


def test_spegel_value_name_still_sets_the_timeout() -> None:
    daemonset = find(
        documents(render_set("spegel.mirrorResolveTimeout=75ms")), "DaemonSet", "spegel"
    )
    assert "--mirror-resolve-timeout=75ms" in _args(daemonset, "registry")


def test_defaults_are_burstable_and_tolerate_every_taint(
    default_docs: list[dict[str, Any]],
) -> None:
    for name in ("spegel", "cleanup"):
        daemonset = find(default_docs, "DaemonSet", name)
        assert qos_class(daemonset) == "Burstable"
        tolerations = pod_spec(daemonset)["tolerations"]
        for effect in ("NoSchedule", "NoExecute"):
            assert {"effect": effect, "operator": "Exists"} in tolerations
    assert qos_class({"kind": "Pod", "spec": {"containers": [{"name": "x"}]}}) == "BestEffort"


def test_containers_are_locked_down(default_docs: list[dict[str, Any]]) -> None:
    daemonset = find(default_docs, "DaemonSet", "spegel")
    for c in containers(daemonset):
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
    spec = pod_spec(daemonset)
    assert spec["automountServiceAccountToken"] is False
    assert spec["priorityClassName"] == "system-node-critical"
    mounts = {m["name"]: m for m in container(daemonset, "registry")["volumeMounts"]}
    assert mounts["containerd-content"]["readOnly"] is True
    assert mounts["containerd-conf"]["readOnly"] is True
    assert mounts["spegel-data"]["mountPath"] == "/var/lib/spegel"
    assert mounts["router-key"]["readOnly"] is True
    volumes = {v["name"]: v["hostPath"] for v in spec["volumes"] if "hostPath" in v}
    assert volumes["containerd-sock"] == {
        "path": "/run/containerd/containerd.sock",
        "type": "Socket",
    }
    assert volumes["containerd-config"]["path"] == "/etc/containerd/certs.d"


def test_dns_bootstrap_names_the_headless_service(default_docs: list[dict[str, Any]]) -> None:
    daemonset = find(default_docs, "DaemonSet", "spegel")
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
    daemonset = find(default_docs, "DaemonSet", "spegel")
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

    ours = flags(_args(find(default_docs, "DaemonSet", "spegel"), "registry"))
    assert flags(spegel.REGISTRY) - ours == {"--otel-service-name", "--otel-sampler"}
    configuration = _args(find(default_docs, "DaemonSet", "spegel"), "configuration")
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
    docs = documents(render_set(EVERYTHING_ON, api_versions=CRD_APIS))
    daemonset = find(docs, "DaemonSet", "spegel")
    args = _args(daemonset, "registry")
    assert "--data-dir=/var/lib/spegel" in args and "--mirror-relay=splice" in args
    start = args.index("--mirrored-registries") + 1
    assert args[start : start + 3] == ["https://docker.io", "https://ghcr.io", args[start + 2]]
    assert args[start + 2].startswith("--containerd-sock=")
    assert "DATA_DIR" not in {e["name"] for e in container(daemonset, "registry")["env"]}
    assert "livenessProbe" in container(daemonset, "registry")
    assert [c["name"] for c in pod_spec(daemonset)["initContainers"]] == ["first", "configuration"]
    assert {"name": "extra", "emptyDir": {"medium": "Memory"}} in pod_spec(daemonset)["volumes"]
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
        "mirrorResolveTimout=50ms",
        "spegel.persistence.path=relative",
        "extraInitContainers[0].name=no-image",
        "spegel.logLevel=LOUD",
        "service.registry.nodePort=80",
        "spegel.mirroredRegistries={docker.io}",
        "resources=small",
        "grafanaDashboard.mode=Json",
        "grafanaDashboard.enabled=true,grafanaDashboard.mode=GrafanaOperator",
        "grafanaDashboard.sidecarLabel=two words",
        "spegel.containerdSock=relative.sock",
    ],
)
def test_bad_values_are_refused(values: str) -> None:
    with pytest.raises(helm.HelmError):
        render_set(values)


def test_a_top_level_typo_is_refused_by_name() -> None:
    with pytest.raises(helm.HelmValuesError, match="additional properties 'mirrorResolveTimout'"):
        render_set("mirrorResolveTimout=50ms")
    with pytest.raises(helm.HelmValuesError, match="'extraVolume'"):
        render_set("extraVolume[0].name=x")


# The labels and names Spegel's chart gives a release `spegel` (charts/spegel/templates).
SPEGEL_POD_LABELS = {
    "app.kubernetes.io/component": "spegel",
    "app.kubernetes.io/name": "spegel",
    "app.kubernetes.io/instance": "spegel",
}
SPEGEL_NAMES = {
    ("DaemonSet", "spegel"),
    ("ServiceAccount", "spegel"),
    ("Service", "spegel"),
    ("Service", "spegel-registry"),
    ("Service", "spegel-bootstrap"),
    ("DaemonSet", "spegel-cleanup"),
    ("Service", "spegel-cleanup"),
    ("Pod", "spegel-cleanup-wait"),
}


# Ours alone: the DHT's cluster key (see test_chart_router_key.py).
OUR_NAMES = {("Secret", "spegel-router-key")}


def test_default_names_and_labels_are_spegels(default_docs: list[dict[str, Any]]) -> None:
    assert {(d["kind"], d["metadata"]["name"]) for d in default_docs} == SPEGEL_NAMES | OUR_NAMES
    daemonset = find(default_docs, "DaemonSet", "spegel")
    assert daemonset["spec"]["selector"]["matchLabels"] == SPEGEL_POD_LABELS
    assert daemonset["spec"]["template"]["metadata"]["labels"] == SPEGEL_POD_LABELS
    for doc in default_docs:
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "spegel"
        assert labels["app.kubernetes.io/instance"] == "spegel"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
    # Spegel's component labels: spegel (DaemonSet), metrics (the metrics service).
    assert daemonset["metadata"]["labels"]["app.kubernetes.io/component"] == "spegel"
    metrics = find(default_docs, "Service", "spegel")
    assert metrics["metadata"]["labels"]["app.kubernetes.io/component"] == "metrics"
    for suffix in ("-registry", "-bootstrap"):
        labels = find(default_docs, "Service", suffix)["metadata"]["labels"]
        assert "app.kubernetes.io/component" not in labels
        assert find(default_docs, "Service", suffix)["spec"]["selector"] == SPEGEL_POD_LABELS
    # The tutorial's `kubectl -l app.kubernetes.io/name=spegel get pods` finds the pods.
    assert daemonset["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == "spegel"


def test_name_overrides_still_work() -> None:
    docs = documents(render_set("nameOverride=mirror"))
    daemonset = find(docs, "DaemonSet", "spegel-mirror")
    assert daemonset["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == "mirror"
    docs = documents(render_set("fullnameOverride=p2p"))
    assert find(docs, "DaemonSet", "p2p")["metadata"]["name"] == "p2p"
    assert find(docs, "Service", "-bootstrap")["metadata"]["name"] == "p2p-bootstrap"


def test_service_monitor_selects_the_metrics_service() -> None:
    docs = documents(render_set("serviceMonitor.enabled=true", api_versions=CRD_APIS))
    selector = find(docs, "ServiceMonitor")["spec"]["selector"]["matchLabels"]
    matched = [
        d["metadata"]["name"]
        for d in docs
        if d["kind"] == "Service" and selector.items() <= d["metadata"]["labels"].items()
    ]
    assert matched == ["spegel"]


def test_vertical_pod_autoscaler_only_where_the_api_exists() -> None:
    values = helm.parse_set_string("verticalPodAutoscaler.enabled=true")
    without = render_all(values)
    assert "VerticalPodAutoscaler" not in {d["kind"] for d in documents(render(values))}
    notes = next(text for path, text in without.items() if path.endswith("NOTES.txt"))
    assert "no VerticalPodAutoscaler was created" in notes
    with_api = documents(render(values, api_versions=["autoscaling.k8s.io/v1"]))
    vpa = find(with_api, "VerticalPodAutoscaler")
    assert vpa["spec"]["targetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "name": "spegel",
    }
    notes = next(
        text
        for path, text in render_all(values, api_versions=["autoscaling.k8s.io/v1"]).items()
        if path.endswith("NOTES.txt")
    )
    assert "no VerticalPodAutoscaler" not in notes
    # Disabled: none, API or not.
    kinds = {d["kind"] for d in documents(render(api_versions=["autoscaling.k8s.io/v1"]))}
    assert "VerticalPodAutoscaler" not in kinds


def test_registry_reads_containerds_config(default_docs: list[dict[str, Any]]) -> None:
    daemonset = find(default_docs, "DaemonSet", "spegel")
    args = _args(daemonset, "registry")
    assert "--containerd-config-file=/etc/containerd/config.toml" in args
    assert "--containerd-registry-config-path=/etc/containerd/certs.d" in args
    options = parse_args(args, environ={"NODE_IP": "127.0.0.1"})
    assert options.containerd_config_file == "/etc/containerd/config.toml"
    mounts = {m["name"]: m for m in container(daemonset, "registry")["volumeMounts"]}
    assert mounts["containerd-conf"] == {
        "name": "containerd-conf",
        "mountPath": "/etc/containerd",
        "readOnly": True,
    }
    volumes = {v["name"]: v for v in pod_spec(daemonset)["volumes"]}
    # A directory that is created if absent: a missing config.toml never blocks the pod
    # and no file is written on the host.
    assert volumes["containerd-conf"]["hostPath"] == {
        "path": "/etc/containerd",
        "type": "DirectoryOrCreate",
    }


def test_containerd_config_file_elsewhere_or_off() -> None:
    k3s = "/var/lib/rancher/k3s/agent/etc/containerd/config.toml"
    daemonset = find(
        documents(render_set(f"spegel.containerdConfigFile={k3s}")), "DaemonSet", "spegel"
    )
    assert f"--containerd-config-file={k3s}" in _args(daemonset, "registry")
    volumes = {v["name"]: v for v in pod_spec(daemonset)["volumes"]}
    assert volumes["containerd-conf"]["hostPath"]["path"] == k3s.rsplit("/", 1)[0]
    off = find(documents(render_set("spegel.containerdConfigFile=")), "DaemonSet", "spegel")
    assert not [a for a in _args(off, "registry") if a.startswith("--containerd-config-file")]
    assert "containerd-conf" not in {v["name"] for v in pod_spec(off)["volumes"]}
    for bad in ("/etc/containerd/", "/config.toml", "config.toml"):  # "/" is no mount
        with pytest.raises(helm.HelmValuesError):
            render_set(f"spegel.containerdConfigFile={bad}")


def test_certs_d_is_mounted_by_the_configuration_container_only(
    default_docs: list[dict[str, Any]],
) -> None:
    daemonset = find(default_docs, "DaemonSet", "spegel")
    registry = {m["mountPath"] for m in container(daemonset, "registry")["volumeMounts"]}
    assert "/etc/containerd/certs.d" not in registry
    assert "containerd-config" not in {
        m["name"] for m in container(daemonset, "registry")["volumeMounts"]
    }
    configuration = container(daemonset, "configuration")["volumeMounts"]
    assert configuration == [{"name": "containerd-config", "mountPath": "/etc/containerd/certs.d"}]


# What Spegel's chart (charts/spegel/templates/daemonset.yaml, v0.7.4 and main) adds
# for `basicAuthSecretName`: the Secret mounted where `LoadUserinfo` reads it, in the
# registry container and in the configuration init container.
SPEGEL_BASIC_AUTH_MOUNT = {
    "name": "basic-auth",
    "mountPath": "/etc/secrets/basic-auth",
    "readOnly": True,
}


def test_basic_auth_secret_is_mounted_as_spegel_mounts_it(
    default_docs: list[dict[str, Any]],
) -> None:
    daemonset = find(
        documents(render_set("basicAuthSecretName=registry-creds")), "DaemonSet", "spegel"
    )
    for name in ("configuration", "registry"):
        mounts = container(daemonset, name)["volumeMounts"]
        assert SPEGEL_BASIC_AUTH_MOUNT in mounts, name
        # Read where Spegel reads it: the default of --basic-auth-dir, so no new argument.
        assert parse_args(_args(daemonset, name)).basic_auth_dir == "/etc/secrets/basic-auth"
    volume = {"name": "basic-auth", "secret": {"secretName": "registry-creds"}}
    assert volume in pod_spec(daemonset)["volumes"]
    assert _args(daemonset, "registry") == _args(
        find(default_docs, "DaemonSet", "spegel"), "registry"
    )
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(daemonset, version, strict=True)
    default = find(default_docs, "DaemonSet", "spegel")
    for name in ("configuration", "registry"):
        assert "basic-auth" not in {m["name"] for m in container(default, name)["volumeMounts"]}
    assert "basic-auth" not in {v["name"] for v in pod_spec(default)["volumes"]}


def test_data_dir_is_a_deprecated_alias_of_persistence() -> None:
    def registry(expression: str) -> dict[str, Any]:
        return container(find(documents(render_set(expression)), "DaemonSet", "spegel"), "registry")

    off = registry("spegel.dataDir.enabled=false")
    assert not [a for a in off["args"] if a.startswith("--data-dir")]
    assert {"name": "DATA_DIR", "value": ""} in off["env"]
    moved = registry("spegel.dataDir.path=/data,spegel.persistence.path=/ignored")
    assert "--data-dir=/data" in moved["args"]
    assert registry("spegel.persistence.enabled=false,spegel.dataDir.enabled=true")["args"]


def test_network_policy_opens_exactly_what_is_used() -> None:
    docs = documents(render_set("networkPolicy.enabled=true"))
    policy = find(docs, "NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"] == SPEGEL_POD_LABELS
    assert policy["policyTypes"] == ["Ingress"]
    router, open_rule = policy["ingress"]
    # The DHT (Kademlia) is UDP only, and only between mirror pods.
    assert router["ports"] == [{"port": 5001, "protocol": "UDP"}]
    assert router["from"] == [{"podSelector": {"matchLabels": SPEGEL_POD_LABELS}}]
    # Registry (peers' blob GETs, containerd from the host network) and metrics: TCP, open.
    assert "from" not in open_rule
    assert open_rule["ports"] == [
        {"port": 5000, "protocol": "TCP"},
        {"port": 9090, "protocol": "TCP"},
    ]
    daemonset = find(docs, "DaemonSet", "spegel")
    ports = {(p["containerPort"], p["protocol"]) for p in container(daemonset, "registry")["ports"]}
    assert {(5001, "UDP"), (5000, "TCP"), (9090, "TCP")} <= ports


def test_network_policy_can_close_the_metrics_port_to_all_but_prometheus() -> None:
    monitoring = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mon"}}}
    values = {"networkPolicy": {"enabled": True, "metricsFrom": [monitoring]}}
    docs = documents(render(values))
    router, registry, metrics = find(docs, "NetworkPolicy")["spec"]["ingress"]
    assert router["ports"] == [{"port": 5001, "protocol": "UDP"}]
    assert registry == {"ports": [{"port": 5000, "protocol": "TCP"}]}
    assert metrics == {"from": [monitoring], "ports": [{"port": 9090, "protocol": "TCP"}]}
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(find(docs, "NetworkPolicy"), version, strict=True)


def test_cold_start_values_become_flags_only_when_changed(
    default_docs: list[dict[str, Any]],
) -> None:
    default_args = _args(find(default_docs, "DaemonSet", "spegel"), "registry")
    assert not [a for a in default_args if a.startswith(("--cold-start", "--peer-"))]
    changed = find(
        documents(
            render_set(
                "coldStart.enabled=false,coldStart.peerStreams=8,coldStart.peerUploadRate=3000000000"
            )
        ),
        "DaemonSet",
        "spegel",
    )
    args = _args(changed, "registry")
    assert {"--cold-start=false", "--peer-streams=8", "--peer-upload-rate=3000000000"} <= set(args)
    with pytest.raises(helm.HelmValuesError, match="peerStream"):
        render_set("coldStart.peerStream=2")


def test_mirror_relay_becomes_a_flag_only_when_changed(
    default_docs: list[dict[str, Any]],
) -> None:
    default_args = _args(find(default_docs, "DaemonSet", "spegel"), "registry")
    assert not [a for a in default_args if a.startswith("--mirror-relay")]
    redirect = find(documents(render_set("mirrorRelay=redirect")), "DaemonSet", "spegel")
    assert "--mirror-relay=redirect" in _args(redirect, "registry")
    with pytest.raises(helm.HelmError):
        render_set("mirrorRelay=teleport")


def test_the_client_connection_limit_becomes_a_flag_only_when_changed(
    default_docs: list[dict[str, Any]],
) -> None:
    default_args = _args(find(default_docs, "DaemonSet", "spegel"), "registry")
    assert not [a for a in default_args if a.startswith("--registry-client-connections")]
    changed = find(
        documents(render_set("registryLimits.clientConnections=4096")), "DaemonSet", "spegel"
    )
    assert "--registry-client-connections=4096" in _args(changed, "registry")
    with pytest.raises(helm.HelmValuesError, match="clientConnection"):
        render_set("registryLimits.clientConnection=2")


def test_stripe_width_becomes_a_flag_only_when_changed(
    default_docs: list[dict[str, Any]],
) -> None:
    default_args = _args(find(default_docs, "DaemonSet", "spegel"), "registry")
    assert not [a for a in default_args if a.startswith("--mirror-stripe-width")]
    one = find(documents(render_set("mirrorStripeWidth=1")), "DaemonSet", "spegel")
    assert "--mirror-stripe-width=1" in _args(one, "registry")
    with pytest.raises(helm.HelmError):
        render_set("mirrorStripeWidth=0")
