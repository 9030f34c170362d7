"""Which registries and references this node serves (pure).

`--mirrored-registries` is an allow-list of registries (empty: all of them);
`--registry-filters` are regular expressions, and a reference that matches any
of them is neither served nor advertised, as in Spegel.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass


def registry_host(url_or_host: str) -> str:
    """`https://docker.io` -> `docker.io`; `_default` and bare hosts pass through."""
    _, sep, rest = url_or_host.partition("://")
    host = rest if sep else url_or_host
    return host.split("/", 1)[0]


@dataclass(frozen=True)
class ReferenceFilter:
    mirrored: frozenset[str] = frozenset()
    patterns: tuple[re.Pattern[str], ...] = ()

    @classmethod
    def build(cls, mirrored_registries: Iterable[str], regexes: Iterable[str]) -> ReferenceFilter:
        return cls(
            frozenset(registry_host(r) for r in mirrored_registries if r),
            tuple(re.compile(r) for r in regexes if r),
        )

    def allows_registry(self, registry: str) -> bool:
        return not self.mirrored or registry in self.mirrored or "_default" in self.mirrored

    def allows(self, reference: str, registry: str) -> bool:
        """`reference` is `registry/repo:tag` or `registry/repo@digest`."""
        if not self.allows_registry(registry):
            return False
        return not any(p.search(reference) for p in self.patterns)
