"""The chart's Grafana dashboard: rendered the way Spegel's chart renders its own, and
every metric its queries name is one a real `mirror registry` exports on /metrics
(histogram and counter suffixes included); the metrics Spegel's own dashboard
queries are exported too."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.chart import CHART_DIR, documents, find, render, render_set

helm = pytest.importorskip("helm_python")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

DASHBOARD_FILE = CHART_DIR / "monitoring" / "grafana-dashboard.json"
DASHBOARD = json.loads(DASHBOARD_FILE.read_text())
# The PromQL of Spegel's own dashboard (charts/spegel/monitoring at v0.7.4), as data.
SPEGEL_QUERIES = json.loads(
    (Path(__file__).parent / "fixtures" / "spegel-v0.7.4-dashboard-queries.json").read_text()
)
# Families /metrics exports that no panel shows, and why.
NOT_ON_THE_DASHBOARD = {
    "spegel_advertised_images": "tags + digests, both charted",
    "spegel_advertised_keys": "mirror_dht_keys_provided is charted",
}

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool"}
_KEYWORDS |= {"and", "or", "unless", "inf", "nan"}
_NAME = re.compile(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(query: str) -> set[str]:
    """The metric names a PromQL expression (or Grafana's `label_values(metric, label)`)
    selects: not functions, keywords, label names, strings, ranges or $variables."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', query)
    text = re.sub(r"\$\{?\w+\}?", " ", text)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"label_values\(\s*([A-Za-z_:][\w:]*)\s*,[^)]*\)", r" \1 ", text)
    text = re.sub(r"label_values\([^,)]*\)", " ", text)  # a label's values in every metric
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in _NAME.finditer(text):
        if text[match.end() :].lstrip().startswith("(") or match.group() in _KEYWORDS:
            continue
        names.add(match.group())
    return names


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels") or [])


def queries(dashboard: dict[str, Any]) -> list[str]:
    """Every target's expression and every query variable's query."""
    found = [
        target["expr"]
        for panel in _panels(dashboard["panels"])
        for target in panel.get("targets") or []
        if target.get("expr")
    ]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if variable.get("type") == "query":
            found.append(query["query"] if isinstance(query, dict) else query)
    return found


def exported_names(exposition: str) -> dict[str, str]:
    """Sample name -> type of every family in a /metrics text, with a histogram's
    `_bucket`, `_sum` and `_count` (a counter's TYPE line already ends in `_total`)."""
    names = {}
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split()
            suffixes = ("_bucket", "_sum", "_count") if kind == "histogram" else ("",)
            names.update({family + suffix: kind for suffix in suffixes})
    return names


def unknown_metrics(dashboard_queries: list[str], exported: dict[str, str]) -> set[str]:
    return {name for query in dashboard_queries for name in metric_names(query)} - set(exported)


def test_metric_names_are_read_out_of_promql() -> None:
    quantile = (
        "histogram_quantile(0.99, sum by (le, handler) (rate(http_request_duration_seconds_bucket"
        '{pod=~"$pod", le!="+Inf"}[$__rate_interval])))'
    )
    assert metric_names(quantile) == {"http_request_duration_seconds_bucket"}
    assert metric_names('sum(rate(a_total{x="}{"}[5m])) / sum(rate(b_total[1m] offset 1h))') == {
        "a_total",
        "b_total",
    }
    assert metric_names("time() - max(last_seen > 0) * 1e3 and on(pod) up") == {"last_seen", "up"}
    assert metric_names('label_values(spegel_x{a="b"}, pod)') == {"spegel_x"}
    assert metric_names("label_values(pod)") == set()
    assert metric_names("sum(x) by (pod)") == {"x"}


def test_an_unknown_metric_is_caught() -> None:
    exported = exported_names(
        '# TYPE h histogram\nh_bucket{le="1"} 0\n# TYPE c_total counter\n# TYPE g gauge\n'
    )
    assert set(exported) == {"h_bucket", "h_sum", "h_count", "c_total", "g"}
    assert unknown_metrics(["rate(h_sum[1m]) + c_total + g"], exported) == set()
    assert unknown_metrics(["rate(h_total[1m])", "c", "g_bucket"], exported) == {
        "h_total",
        "c",
        "g_bucket",
    }


def test_the_dashboard_is_self_contained() -> None:
    panels = list(_panels(DASHBOARD["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)) and len(ids) > 20
    assert DASHBOARD["uid"] == "trio-mirror"
    # One data source variable for every query: no `${DS_...}` import placeholder, which
    # a dashboard provisioned by a sidecar or the operator would leave unresolved.
    assert "${DS_" not in DASHBOARD_FILE.read_text()
    for panel in panels:
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel["description"], panel
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"] and all(
            t["datasource"] == panel["datasource"] for t in panel["targets"]
        )
        assert all(metric_names(t["expr"]) for t in panel["targets"]), panel["title"]


def test_off_by_default() -> None:
    kinds = {doc["kind"] for doc in documents(render())}
    assert "ConfigMap" not in kinds and "GrafanaDashboard" not in kinds


@pytest.mark.parametrize("version", ["1.30", "1.34"])
def test_sidecar_mode_renders_a_labelled_config_map(version: str) -> None:
    docs = documents(
        render_set(
            "grafanaDashboard.enabled=true,grafanaDashboard.labels.team=infra,"
            "grafanaDashboard.annotations.grafana_folder=Mirrors"
        )
    )
    config_map = find(docs, "ConfigMap", "spegel-dashboard")
    kubernetes_validate.validate(config_map, version, strict=True)
    labels = config_map["metadata"]["labels"]
    assert labels["grafana_dashboard"] == "1" and labels["team"] == "infra"
    assert labels["app.kubernetes.io/name"] == "spegel"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "Mirrors"}
    assert json.loads(config_map["data"]["trio-mirror.json"]) == DASHBOARD


def test_sidecar_label_can_be_renamed_given_or_dropped() -> None:
    def labels(expression: str) -> dict[str, str]:
        docs = documents(render_set("grafanaDashboard.enabled=true," + expression))
        return dict(find(docs, "ConfigMap", "-dashboard")["metadata"]["labels"])

    assert labels("grafanaDashboard.sidecarLabel=dashboards")["dashboards"] == "1"
    # Spegel's way: the label among `labels`, which wins.
    assert labels("grafanaDashboard.labels.grafana_dashboard=yes")["grafana_dashboard"] == "yes"
    assert "grafana_dashboard" not in labels("grafanaDashboard.sidecarLabel=")


def test_operator_mode_renders_a_grafana_dashboard() -> None:
    docs = documents(
        render_set(
            "grafanaDashboard.enabled=true,grafanaDashboard.mode=GrafanaOperator,"
            "grafanaDashboard.grafanaOperator.matchLabels.dashboards=grafana,"
            "grafanaDashboard.grafanaOperator.folder=Mirrors"
        )
    )
    resource = find(docs, "GrafanaDashboard", "spegel")
    assert resource["apiVersion"] == "grafana.integreatly.org/v1beta1"
    spec = resource["spec"]
    assert spec["instanceSelector"] == {"matchLabels": {"dashboards": "grafana"}}
    assert spec["folder"] == "Mirrors" and spec["resyncPeriod"] == "10m"
    assert spec["allowCrossNamespaceImport"] is True
    assert json.loads(spec["json"]) == DASHBOARD
    assert "ConfigMap" not in {doc["kind"] for doc in docs}
    with pytest.raises(helm.HelmError, match="matchLabels"):
        render_set("grafanaDashboard.enabled=true,grafanaDashboard.mode=GrafanaOperator")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """What a real `mirror registry` exports, read from its /metrics at start."""
    from bench.kit.containerd import ContainerdNode
    from bench.kit.mirror import MirrorNode
    from tests.containerd.conftest import require_containerd

    require_containerd()
    base = tmp_path_factory.mktemp("metrics")
    with (
        ContainerdNode("node", base) as containerd,
        MirrorNode(
            host="127.0.0.41",
            containerd_sock=containerd.address,
            workdir=base / "mirror",
            log_level="WARN",
        ) as mirror,
        urllib.request.urlopen(mirror.metrics_url + "/metrics", timeout=10) as reply,
    ):
        return exported_names(reply.read().decode())


@pytest.mark.integration
def test_every_metric_the_dashboard_queries_is_exported(exported: dict[str, str]) -> None:
    assert len(exported) > 40
    assert unknown_metrics(queries(DASHBOARD), exported) == set()


@pytest.mark.integration
def test_every_exported_metric_is_on_the_dashboard(exported: dict[str, str]) -> None:
    shown = {name for query in queries(DASHBOARD) for name in metric_names(query)}
    families = {
        re.sub(r"_(bucket|sum|count)$", "", n) if k == "histogram" else n
        for n, k in exported.items()
    }
    charted = {re.sub(r"_(bucket|sum|count)$", "", n) for n in shown}
    assert families - charted == set(NOT_ON_THE_DASHBOARD)


@pytest.mark.integration
def test_spegels_dashboard_finds_its_metrics_here(exported: dict[str, str]) -> None:
    """Spegel's own dashboard works on these nodes: every spegel_* and http_* metric it
    queries is exported (its kubelet and cAdvisor panels read other exporters)."""
    ours = [q for q in SPEGEL_QUERIES if "spegel_" in q or "http_" in q]
    assert len(ours) >= 6
    names = {n for q in ours for n in metric_names(q) if n.startswith(("spegel_", "http_"))}
    assert "spegel_advertised_content_digests" in names
    assert names - set(exported) == set()
