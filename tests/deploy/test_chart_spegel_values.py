"""Spegel's chart values (v0.7.4 and main, kept as data fixtures), given unchanged
to our chart with `-f`: the schema takes them and the render keeps their meaning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.chart import documents, find, merge_values, render
from tests.deploy.k8s import container, containers, pod_spec

helm = pytest.importorskip("helm_python")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

FIXTURES = Path(__file__).parent / "fixtures"
V074 = FIXTURES / "spegel-v0.7.4-values.yaml"
MAIN = FIXTURES / "spegel-main-values.yaml"
FILES = [V074, MAIN]
CRD_KINDS = {"ServiceMonitor", "VerticalPodAutoscaler"}


def spegel_values(path: Path, **overrides: Any) -> dict[str, Any]:
    """The file as `helm -f` reads it, with `overrides` layered on top (a later -f)."""
    values = helm.values_from_yaml(path.read_text())
    return merge_values(values, overrides)


def render_docs(path: Path, **overrides: Any) -> list[dict[str, Any]]:
    return documents(render(spegel_values(path, **overrides)))


def mirror_targets(daemonset: dict[str, Any]) -> list[str]:
    args = [str(a) for a in container(daemonset, "configuration")["args"]]
    start = args.index("--mirror-targets") + 1
    end = next(i for i in range(start, len(args)) if args[i].startswith("--"))
    return args[start:end]


def host_ports(daemonset: dict[str, Any]) -> list[int]:
    return [
        p["hostPort"] for c in containers(daemonset) for p in c.get("ports", []) if "hostPort" in p
    ]


def registry_service(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return find(docs, "Service", "-registry")


def test_the_fixtures_hold_spegels_defaults() -> None:
    v074 = yaml.safe_load(V074.read_text())
    main = yaml.safe_load(MAIN.read_text())
    assert v074["image"]["repository"] == main["image"]["repository"] == "ghcr.io/spegel-org/spegel"
    assert v074["service"]["registry"]["hostPort"] == 30020
    assert "hostPort" not in main["service"]["registry"]
    assert main["service"]["registry"]["nodePort"] == 30020
    for values in (v074, main):
        assert values["spegel"]["persistence"]["enabled"] is True
        assert values["extraVolumes"] == [] and values["extraInitContainers"] == []


@pytest.mark.parametrize("version", ["1.30", "1.34"])
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_spegels_values_file_renders_unchanged(path: Path, version: str) -> None:
    docs = render_docs(path)  # the schema check runs first: a refused key raises here
    assert {"DaemonSet", "Service", "ServiceAccount"} <= {d["kind"] for d in docs}
    for doc in docs:
        if doc["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(doc, version, strict=True)
    daemonset = find(docs, "DaemonSet", "spegel")
    # The file's image is Spegel's: the operator overrides image.* (docs/install-kubernetes.md).
    assert container(daemonset, "registry")["image"].startswith("ghcr.io/spegel-org/spegel:")


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_persistence_is_a_host_path_data_dir(path: Path) -> None:
    daemonset = find(render_docs(path), "DaemonSet", "spegel")
    registry = container(daemonset, "registry")
    assert "--data-dir=/var/lib/spegel" in registry["args"]
    assert "DATA_DIR" not in {e["name"] for e in registry["env"]}
    mounts = {m["name"]: m["mountPath"] for m in registry["volumeMounts"]}
    assert mounts["spegel-data"] == "/var/lib/spegel"
    volumes = {v["name"]: v for v in pod_spec(daemonset)["volumes"]}
    assert volumes["spegel-data"]["hostPath"] == {
        "path": "/var/lib/spegel",
        "type": "DirectoryOrCreate",
    }


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_persistence_can_be_turned_off_and_moved(path: Path) -> None:
    off = find(render_docs(path, spegel={"persistence": {"enabled": False}}), "DaemonSet", "spegel")
    registry = container(off, "registry")
    assert not [a for a in registry["args"] if a.startswith("--data-dir")]
    assert {"name": "DATA_DIR", "value": ""} in registry["env"]
    assert "spegel-data" not in {v["name"] for v in pod_spec(off)["volumes"]}
    moved = find(
        render_docs(path, spegel={"persistence": {"path": "/data", "hostPath": "/srv/spegel"}}),
        "DaemonSet",
        "spegel",
    )
    assert "--data-dir=/data" in container(moved, "registry")["args"]
    volumes = {v["name"]: v for v in pod_spec(moved)["volumes"]}
    assert volumes["spegel-data"]["hostPath"]["path"] == "/srv/spegel"


EXTRA_VOLUME = {"name": "host-etc", "hostPath": {"path": "/etc", "type": "Directory"}}
EXTRA_INIT = {
    "name": "node-setup",
    "image": "busybox:1.36",
    "command": ["sh", "-c", "true"],
    "volumeMounts": [{"name": "host-etc", "mountPath": "/host/etc"}],
}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_extra_volumes_and_init_containers_appear(path: Path) -> None:
    docs = render_docs(path, extraVolumes=[EXTRA_VOLUME], extraInitContainers=[EXTRA_INIT])
    daemonset = find(docs, "DaemonSet", "spegel")
    spec = pod_spec(daemonset)
    # Before the configuration init container, as in Spegel's chart.
    assert [c["name"] for c in spec["initContainers"]] == ["node-setup", "configuration"]
    assert spec["initContainers"][0] == EXTRA_INIT
    assert spec["volumes"][-1] == EXTRA_VOLUME
    for doc in docs:
        if doc["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(doc, "1.34", strict=True)
    # Without containerd configuration, the extra init containers still run.
    alone = find(
        render_docs(path, spegel={"containerdMirrorAdd": False}, extraInitContainers=[EXTRA_INIT]),
        "DaemonSet",
        "spegel",
    )
    assert [c["name"] for c in pod_spec(alone)["initContainers"]] == ["node-setup"]


def test_v074_keeps_its_host_port_layout() -> None:
    docs = render_docs(V074)
    daemonset = find(docs, "DaemonSet", "spegel")
    assert mirror_targets(daemonset) == ["http://$(NODE_IP):30020", "http://$(NODE_IP):30021"]
    assert host_ports(daemonset) == [30020]
    service = registry_service(docs)
    assert service["spec"]["ports"][0]["nodePort"] == 30021
    assert "trafficDistribution" not in service["spec"]
    assert service["metadata"]["annotations"] == {"service.kubernetes.io/topology-mode": "Auto"}


def test_v074_prefer_same_node_drops_the_host_port() -> None:
    docs = render_docs(V074, service={"registry": {"usePreferSameNodeTrafficDistribution": True}})
    daemonset = find(docs, "DaemonSet", "spegel")
    assert mirror_targets(daemonset) == ["http://$(NODE_IP):30021"]
    assert host_ports(daemonset) == []
    service = registry_service(docs)
    assert service["spec"]["trafficDistribution"] == "PreferSameNode"
    assert "annotations" not in service["metadata"]


def test_main_is_one_node_port_without_a_host_port() -> None:
    docs = render_docs(MAIN)
    daemonset = find(docs, "DaemonSet", "spegel")
    # Not hostPort 30020 next to nodePort 30020, nor the same target twice in hosts.toml.
    assert mirror_targets(daemonset) == ["http://$(NODE_IP):30020"]
    assert host_ports(daemonset) == []
    service = registry_service(docs)
    assert service["spec"]["ports"][0]["nodePort"] == 30020
    assert service["spec"]["trafficDistribution"] == "PreferSameNode"
    assert "internalTrafficPolicy" not in service["spec"]
    assert "annotations" not in service["metadata"]  # topology-mode would override it


def test_main_internal_traffic_local() -> None:
    docs = render_docs(MAIN, service={"registry": {"internalTrafficLocal": True}})
    service = registry_service(docs)
    assert service["spec"]["internalTrafficPolicy"] == "Local"
    assert "trafficDistribution" not in service["spec"]
    assert mirror_targets(find(docs, "DaemonSet", "spegel")) == ["http://$(NODE_IP):30020"]


@pytest.mark.parametrize(
    ("path", "registry"),
    [
        (V074, {}),
        (V074, {"usePreferSameNodeTrafficDistribution": True}),
        (V074, {"hostPort": 0}),
        (V074, {"nodePort": 30020}),
        (MAIN, {}),
        (MAIN, {"nodePort": 30021}),
        (MAIN, {"hostPort": 30030}),
        (MAIN, {"internalTrafficLocal": True}),
    ],
    ids=lambda v: v.name.split("-")[1] if isinstance(v, Path) else str(v) or "defaults",
)
def test_no_port_clash_and_no_duplicate_target(path: Path, registry: dict[str, Any]) -> None:
    docs = render_docs(path, service={"registry": registry})
    daemonset = find(docs, "DaemonSet", "spegel")
    node_port = registry_service(docs)["spec"]["ports"][0]["nodePort"]
    assert node_port not in host_ports(daemonset)
    targets = mirror_targets(daemonset)
    assert len(targets) == len(set(targets))
    expected = {f"http://$(NODE_IP):{p}" for p in [node_port, *host_ports(daemonset)]}
    assert set(targets) == expected


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_a_typo_next_to_spegels_file_is_refused(path: Path) -> None:
    with pytest.raises(helm.HelmError, match="mirrorResolveTimout"):
        render(spegel_values(path, mirrorResolveTimout="50ms"))
    with pytest.raises(helm.HelmError, match="persistance"):
        render(spegel_values(path, spegel={"persistance": {"enabled": False}}))


# docs/install-kubernetes.md, "Coming from Spegel".
MIGRATION_SET = "image.repository=ghcr.io/trio-mirror/trio-mirror,image.tag=0.1.0,image.digest="


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_the_documented_migration_renders(path: Path) -> None:
    values = merge_values(spegel_values(path), helm.parse_set_string(MIGRATION_SET))
    daemonset = find(documents(render(values)), "DaemonSet", "spegel")
    assert container(daemonset, "registry")["image"] == "ghcr.io/trio-mirror/trio-mirror:0.1.0"
    # Same name and selector as the Spegel release's DaemonSet: the upgrade is in place.
    assert daemonset["metadata"]["name"] == "spegel"
    assert daemonset["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/component": "spegel",
        "app.kubernetes.io/name": "spegel",
        "app.kubernetes.io/instance": "spegel",
    }


def test_the_documented_node_port_only_line() -> None:
    docs = documents(
        render(helm.parse_set_string("service.registry.nodePort=30020,service.registry.hostPort=0"))
    )
    assert mirror_targets(find(docs, "DaemonSet", "spegel")) == ["http://$(NODE_IP):30020"]
    assert registry_service(docs)["spec"]["trafficDistribution"] == "PreferSameNode"
