"""Pull durations from the kubelet's `Pulled` events (`kubectl get events -o json`) (pure).

The kubelet reports a finished pull as reason `Pulled` with a message such as

    Successfully pulled image "reg/benchmark:v1-10MB-1" in 1.234s (1.5s including waiting)

(since Kubernetes 1.28; older kubelets omit the parenthesis, newer ones append
`. Image size: N bytes.`). The first duration is the pull itself, the one
Spegel's benchmark reads; the second adds the time queued behind other pulls.
A `Pulled` event saying the image is "already present on machine" is no pull.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

_GO_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "μs": 1e-6}
_GO_UNITS["ns"] = 1e-9
_GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION = r"[0-9.]+(?:ns|us|µs|μs|ms|s|m|h)(?:[0-9.]+(?:ns|us|µs|μs|ms|s|m|h))*"
_PULLED = re.compile(
    rf'^Successfully pulled image "(?P<image>[^"]+)" in (?P<pull>{_DURATION})'
    rf"(?: \((?P<waiting>{_DURATION}) including waiting\))?"
    r"(?:\. Image size: (?P<size>\d+) bytes\.?)?"
)


class EventError(ValueError):
    """An event that should carry a pull duration does not."""


def parse_go_duration(text: str) -> float:
    """Go's `time.Duration.String()` ("1m2.5s", "850ms", "1.2µs") -> seconds."""
    text = text.strip()
    if text in ("0", "0s"):
        return 0.0
    position, total = 0, 0.0
    for match in _GO_PART.finditer(text):
        if match.start() != position:
            break
        total += float(match[1]) * _GO_UNITS[match[2]]
        position = match.end()
    if position != len(text) or not text:
        raise EventError(f"not a Go duration: {text!r}")
    return total


@dataclass(frozen=True)
class KubeletPull:
    pod: str
    node: str
    image: str
    duration: float  # seconds, the pull itself
    waiting: float | None  # seconds including the pull queue, when the kubelet says
    size: int | None  # bytes, when the kubelet says
    timestamp: str  # the event's first timestamp (RFC 3339)


def parse_pull_message(message: str) -> tuple[str, float, float | None, int | None] | None:
    """(image, pull seconds, with-waiting seconds, size) or None if the message is no pull."""
    match = _PULLED.match(message)
    if match is None:
        return None
    waiting = match["waiting"]
    return (
        match["image"],
        parse_go_duration(match["pull"]),
        parse_go_duration(waiting) if waiting else None,
        int(match["size"]) if match["size"] else None,
    )


def _node(event: Mapping[str, Any]) -> str:
    source = event.get("source") or {}
    return str(source.get("host") or event.get("reportingInstance") or "")


def kubelet_pulls(events: Mapping[str, Any] | Iterable[Mapping[str, Any]]) -> list[KubeletPull]:
    """Every completed pull in an event list (the `kubectl get events -o json` document)."""
    items = events.get("items", []) if isinstance(events, Mapping) else events
    pulls = []
    for event in items:
        if event.get("reason") != "Pulled":
            continue
        involved = event.get("involvedObject") or {}
        if involved.get("kind") != "Pod":
            continue
        parsed = parse_pull_message(str(event.get("message", "")))
        if parsed is None:
            continue  # "already present on machine": nothing was pulled
        image, duration, waiting, size = parsed
        pulls.append(
            KubeletPull(
                pod=str(involved.get("name", "")),
                node=_node(event),
                image=image,
                duration=duration,
                waiting=waiting,
                size=size,
                timestamp=str(event.get("firstTimestamp") or event.get("eventTime") or ""),
            )
        )
    return pulls


def pulls_of(pulls: Iterable[KubeletPull], image: str, pod_prefix: str = "") -> list[KubeletPull]:
    """The pulls of one image by pods whose name starts with `pod_prefix`, oldest first.

    A pod pulls an image once; if the event list repeats it, the first counts.
    """
    chosen: dict[str, KubeletPull] = {}
    for pull in sorted(pulls, key=lambda p: p.timestamp):
        if pull.image == image and pull.pod.startswith(pod_prefix):
            chosen.setdefault(pull.pod, pull)
    return list(chosen.values())
