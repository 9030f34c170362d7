"""Reading a node's /metrics: one sum of samples by name and labels."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def metric_sum(metrics_url: str, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`, from `<metrics_url>/metrics`."""
    with urllib.request.urlopen(metrics_url + "/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )
