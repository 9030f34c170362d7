"""The chart authenticates the DHT by default: a cluster key in a Secret, made once on
install and kept on upgrades (Helm's lookup), mounted into every pod and passed as
`--router-key-file`; a value turns it off, another names an existing Secret."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path
from typing import Any

import pytest

from dht import load_cluster_key
from mirror.cli import parse_args
from tests.deploy.chart import CHART_DIR, documents, find, render, render_set
from tests.deploy.k8s import container, pod_spec

helm = pytest.importorskip("helm_python")

KEY_FILE = "/etc/trio-mirror/router.key"
LOOKUP = 'lookup "v1" "Secret" $namespace $name'


def _registry_args(docs: list[dict[str, Any]]) -> list[str]:
    return [str(a) for a in container(find(docs, "DaemonSet", "spegel"), "registry")["args"]]


def _key_volume(docs: list[dict[str, Any]]) -> dict[str, Any] | None:
    volumes = pod_spec(find(docs, "DaemonSet", "spegel"))["volumes"]
    found = [v for v in volumes if v["name"] == "router-key"]
    return found[0] if found else None


def _generated_key(docs: list[dict[str, Any]]) -> bytes:
    secret = find(docs, "Secret", "-router-key")
    return base64.b64decode(secret["data"]["router.key"])


def test_a_cluster_key_is_made_mounted_and_passed_by_default(tmp_path: Path) -> None:
    docs = documents(render())
    key = _generated_key(docs)
    assert len(key) == 64 and key.isalnum()
    assert _generated_key(documents(render())) != key  # random, not a constant of the chart
    volume = _key_volume(docs)
    assert volume is not None
    assert volume["secret"]["secretName"] == "spegel-router-key"
    assert volume["secret"]["items"] == [{"key": "router.key", "path": "router.key"}]
    mount = next(
        m
        for m in container(find(docs, "DaemonSet", "spegel"), "registry")["volumeMounts"]
        if m["name"] == "router-key"
    )
    assert (mount["mountPath"], mount["readOnly"]) == ("/etc/trio-mirror", True)
    args = _registry_args(docs)
    assert f"--router-key-file={KEY_FILE}" in args
    # What the pod reads there is what the node loads.
    options = parse_args(args)
    assert getattr(options, "router_key_file", None) == KEY_FILE
    (tmp_path / "router.key").write_bytes(key)
    assert load_cluster_key(tmp_path / "router.key") == key


def test_an_upgrade_keeps_the_key_it_finds(tmp_path: Path) -> None:
    # Offline, `lookup` finds nothing: stand a Secret in for what it returns on a cluster.
    chart = tmp_path / "mirror"
    shutil.copytree(CHART_DIR, chart)
    template = chart / "templates" / "router-key.yaml"
    text = template.read_text()
    assert text.count(LOOKUP) == 1
    kept = base64.b64encode(b"k" * 64).decode()
    template.write_text(text.replace(LOOKUP, f'dict "data" (dict "router.key" "{kept}")'))
    docs = documents(render(chart_dir=chart))
    assert _generated_key(docs) == b"k" * 64
    # A Secret without the entry (edited by hand) gets a new key rather than an empty one.
    template.write_text(text.replace(LOOKUP, 'dict "data" (dict "other" "eA==")'))
    assert len(_generated_key(documents(render(chart_dir=chart)))) == 64


def test_the_key_can_be_turned_off() -> None:
    docs = documents(render_set("routerKey.enabled=false"))
    assert not [d for d in docs if d["kind"] == "Secret"]
    assert _key_volume(docs) is None
    args = _registry_args(docs)
    # The same command line less the key: an open DHT, as Spegel's.
    default = _registry_args(documents(render()))
    assert args == [a for a in default if a != f"--router-key-file={KEY_FILE}"]


def test_an_existing_secret_is_used_instead() -> None:
    docs = documents(
        render_set("routerKey.existingSecret=shared-dht-key,routerKey.secretKey=cluster.key")
    )
    assert not [d for d in docs if d["kind"] == "Secret"]
    volume = _key_volume(docs)
    assert volume is not None
    assert volume["secret"]["secretName"] == "shared-dht-key"
    assert volume["secret"]["items"] == [{"key": "cluster.key", "path": "router.key"}]
    assert f"--router-key-file={KEY_FILE}" in _registry_args(docs)


def test_bad_key_values_are_refused() -> None:
    with pytest.raises(helm.HelmValuesError):
        render_set("routerKey.secretKey=a/b")
    with pytest.raises(helm.HelmValuesError):
        render_set("routerKey.enable=false")  # a typo is refused by name
