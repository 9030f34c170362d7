"""The chart's values: Spegel's names, all used ones defined, all described by the schema,
and the YAML files lint clean."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.chart import CHART_DIR, RENDERED_DEFAULT

FIXTURES = Path(__file__).parent / "fixtures"

VALUES = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
SCHEMA = json.loads((CHART_DIR / "values.schema.json").read_text())
VALUES_REF = re.compile(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")

# Every value of Spegel's chart (charts/spegel/values.yaml of v0.7.x and main) that
# a Spegel user's values file or --set line may name; the files themselves, kept as
# fixtures, are checked leaf by leaf below.
SPEGEL_VALUES = [
    "image.repository",
    "image.pullPolicy",
    "image.tag",
    "image.digest",
    "imagePullSecrets",
    "nameOverride",
    "fullnameOverride",
    "namespaceOverride",
    "serviceAccount.annotations",
    "serviceAccount.name",
    "daemonsetAnnotations",
    "podAnnotations",
    "podSecurityContext",
    "revisionHistoryLimit",
    "securityContext",
    "service.registry.nodeIp",
    "service.registry.port",
    "service.registry.nodePort",
    "service.registry.hostPort",
    "service.registry.topologyAwareHintsEnabled",
    "service.registry.annotations",
    "service.registry.usePreferSameNodeTrafficDistribution",
    "service.router.port",
    "service.metrics.port",
    "service.metrics.annotations",
    "service.bootstrap.annotations",
    "service.cleanup.port",
    "service.cleanup.annotations",
    "resources",
    "nodeSelector",
    "updateStrategy",
    "tolerations",
    "affinity",
    "commonLabels",
    "clusterDomain",
    "serviceMonitor.enabled",
    "serviceMonitor.interval",
    "serviceMonitor.scrapeTimeout",
    "serviceMonitor.labels",
    "serviceMonitor.relabelings",
    "serviceMonitor.metricRelabelings",
    "grafanaDashboard.enabled",
    "priorityClassName",
    "basicAuthSecretName",
    "spegel.logLevel",
    "spegel.mirroredRegistries",
    "spegel.additionalMirrorTargets",
    "spegel.mirrorResolveRetries",
    "spegel.mirrorResolveTimeout",
    "spegel.containerdSock",
    "spegel.containerdNamespace",
    "spegel.containerdRegistryConfigPath",
    "spegel.containerdContentPath",
    "spegel.containerdMirrorAdd",
    "spegel.resolveTags",
    "spegel.registryFilters",
    "spegel.prependExisting",
    "spegel.debugWebEnabled",
    "spegel.otel.endpoint",
    "spegel.otel.insecure",
    "spegel.otel.serviceName",
    "spegel.otel.sampler",
    "spegel.persistence.enabled",
    "spegel.persistence.hostPath",
    "spegel.persistence.path",
    "service.registry.internalTrafficLocal",
    "grafanaDashboard.mode",
    "grafanaDashboard.labels",
    "grafanaDashboard.annotations",
    "grafanaDashboard.grafanaOperator.allowCrossNamespaceImport",
    "grafanaDashboard.grafanaOperator.folder",
    "grafanaDashboard.grafanaOperator.resyncPeriod",
    "grafanaDashboard.grafanaOperator.matchLabels",
    "extraVolumes",
    "extraInitContainers",
    "verticalPodAutoscaler.enabled",
    "verticalPodAutoscaler.recommenders",
    "verticalPodAutoscaler.controlledResources",
    "verticalPodAutoscaler.controlledValues",
    "verticalPodAutoscaler.maxAllowed",
    "verticalPodAutoscaler.minAllowed",
    "verticalPodAutoscaler.updatePolicy.minReplicas",
    "verticalPodAutoscaler.updatePolicy.updateMode",
    "livenessProbe.enabled",
    "networkPolicy.enabled",
    "networkPolicy.additionalRouterPeers",
]
# Where the seed's commands use a top-level name.
SEED_ALIASES = ["mirrorResolveTimeout"]
# Accepted by the schema, no default of their own (they override spegel.persistence).
DEPRECATED_ALIASES = ["spegel.dataDir.enabled", "spegel.dataDir.hostPath", "spegel.dataDir.path"]
SPEGEL_VALUES_FILES = sorted(FIXTURES.glob("spegel-*-values.yaml"))

YAMLLINT_CONFIG = """
extends: default
rules:
  line-length: {max: 120}
  document-start: disable
  truthy: {check-keys: false}
  comments: {min-spaces-from-content: 1}
  indentation: {spaces: 2, indent-sequences: whatever}
"""


def lookup(tree: dict[str, Any], dotted: str) -> object:
    node: Any = tree
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            raise KeyError(dotted)
        node = node[key]
    return node


def leaves(tree: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from leaves(value, path + ".")
        else:
            yield path


def schema_for(dotted: str) -> dict[str, Any]:
    """The schema of a value; below a free-form object (a map of labels, a
    securityContext) the object's own schema."""
    node: dict[str, Any] = SCHEMA
    for key in dotted.split("."):
        properties = node.get("properties")
        if properties is None and node.get("type") == "object" and node is not SCHEMA:
            return node
        if not properties or key not in properties:
            raise KeyError(dotted)
        node = properties[key]
    return node


def template_references() -> set[str]:
    refs = set()
    for path in (CHART_DIR / "templates").iterdir():
        refs.update(m.group(1).lstrip(".") for m in VALUES_REF.finditer(path.read_text()))
    return refs


def test_every_values_reference_is_defined() -> None:
    refs = template_references()
    assert len(refs) > 40  # the scan found the templates' references
    undefined = []
    for ref in sorted(refs):
        try:
            lookup(VALUES, ref)
        except KeyError:
            undefined.append(ref)
    assert undefined == []


def test_every_value_is_in_the_schema() -> None:
    missing = []
    for leaf in leaves(VALUES):
        try:
            schema_for(leaf)
        except KeyError:
            missing.append(leaf)
    assert missing == []


def test_lookup_fails_on_unknown_names() -> None:
    with pytest.raises(KeyError):
        lookup(VALUES, "spegel.noSuchValue")
    with pytest.raises(KeyError):
        schema_for("spegel.noSuchValue")


@pytest.mark.parametrize("name", SPEGEL_VALUES + SEED_ALIASES)
def test_spegel_value_names_exist(name: str) -> None:
    lookup(VALUES, name)
    schema_for(name)


@pytest.mark.parametrize("name", DEPRECATED_ALIASES)
def test_deprecated_aliases_are_in_the_schema(name: str) -> None:
    schema_for(name)
    with pytest.raises(KeyError):
        lookup(VALUES, name)


@pytest.mark.parametrize("path", SPEGEL_VALUES_FILES, ids=lambda p: p.name)
def test_every_value_of_spegels_values_files_is_ours(path: Path) -> None:
    """Down to the free-form maps (labels, resources), whose keys are the user's."""

    def names(tree: dict[str, Any], schema: dict[str, Any], prefix: str = "") -> Iterator[str]:
        for key, value in tree.items():
            sub = schema.get("properties", {}).get(key, {})
            if isinstance(value, dict) and value and "properties" in sub:
                yield from names(value, sub, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}"

    found = list(names(yaml.safe_load(path.read_text()), SCHEMA))
    assert len(found) > 60
    missing = []
    for name in found:
        try:
            lookup(VALUES, name)
            schema_for(name)
        except KeyError:
            missing.append(name)
    assert missing == []


def test_both_spegel_values_files_are_kept() -> None:
    assert [p.name for p in SPEGEL_VALUES_FILES] == [
        "spegel-main-values.yaml",
        "spegel-v0.7.4-values.yaml",
    ]


def test_default_values_pass_the_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(VALUES, SCHEMA)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**VALUES, "spegel": {**VALUES["spegel"], "logLevel": "x"}}, SCHEMA)
    with pytest.raises(jsonschema.ValidationError, match="mirrorResolveTimout"):
        jsonschema.validate({**VALUES, "mirrorResolveTimout": "50ms"}, SCHEMA)


@pytest.mark.parametrize(
    "path",
    [CHART_DIR / "values.yaml", CHART_DIR / "Chart.yaml", RENDERED_DEFAULT],
    ids=lambda p: Path(p).name,
)
def test_yamllint(path: Path) -> None:
    linter = pytest.importorskip("yamllint.linter")
    config = pytest.importorskip("yamllint.config").YamlLintConfig(YAMLLINT_CONFIG)
    problems = [f"{p.line}:{p.column} {p.message}" for p in linter.run(path.read_text(), config)]
    assert problems == []
