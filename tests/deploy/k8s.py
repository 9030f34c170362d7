"""Small readings of rendered Kubernetes manifests: QoS class, container lookup."""

from __future__ import annotations

from typing import Any

_UNITS = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "m": 10**-3,
}


def quantity(value: str | int | float) -> float:
    """A Kubernetes resource quantity (`128Mi`, `50m`, `0.5`) as a number."""
    text = str(value)
    for suffix in sorted(_UNITS, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * _UNITS[suffix]
    return float(text)


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"] if doc["kind"] == "Pod" else doc["spec"]["template"]["spec"]


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(doc)
    return [*spec.get("initContainers", []), *spec["containers"]]


def container(doc: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in containers(doc) if c["name"] == name]
    return found


def qos_class(doc: dict[str, Any]) -> str:
    """The QoS class the kubelet gives the pod (Kubernetes' GetPodQOS rules)."""
    guaranteed = True
    any_set = False
    for c in containers(doc):
        resources = c.get("resources") or {}
        requests = {k: quantity(v) for k, v in (resources.get("requests") or {}).items()}
        limits = {k: quantity(v) for k, v in (resources.get("limits") or {}).items()}
        # A limit without a request defaults the request to the limit.
        requests = {**limits, **requests}
        any_set = any_set or bool(requests) or bool(limits)
        for resource in ("cpu", "memory"):
            if resource not in limits or requests.get(resource) != limits[resource]:
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"
