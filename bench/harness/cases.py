"""The benchmark matrix: image sizes x layer counts, each as a v1 and a v2 image (pure)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# Spegel's benchmark sizes its images with 1024-based units (10 MB = 10 MiB).
UNITS = {"KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}
DEFAULT_SIZES = ("10MB", "100MB")
ALL_SIZES = ("10MB", "100MB", "1GB")
DEFAULT_LAYERS = (1, 4)
VERSIONS = ("v1", "v2")
REPOSITORY = "benchmark"

_SIZE_RE = re.compile(r"^(\d+)(KB|MB|GB)$")
_CASE_RE = re.compile(r"^(\d+(?:KB|MB|GB))-(\d+)$")


def parse_size(label: str) -> int:
    """`"100MB"` -> bytes (1024-based)."""
    match = _SIZE_RE.match(label.strip().upper())
    if match is None:
        raise ValueError(f"not a size like 10MB or 1GB: {label!r}")
    return int(match[1]) * UNITS[match[2]]


@dataclass(frozen=True, order=True)
class Case:
    """One image pair: `size` bytes of random payload split over `layers` layers."""

    size: int
    layers: int
    label: str  # "10MB"

    @classmethod
    def of(cls, label: str, layers: int) -> Case:
        if layers < 1:
            raise ValueError("a case needs at least one layer")
        label = label.strip().upper()
        return cls(parse_size(label), layers, label)

    @classmethod
    def parse(cls, text: str) -> Case:
        """`"100MB-4"` -> Case(100 MiB, 4 layers), Spegel's naming."""
        match = _CASE_RE.match(text.strip().upper())
        if match is None:
            raise ValueError(f"not a case like 10MB-1: {text!r}")
        return cls.of(match[1], int(match[2]))

    @property
    def name(self) -> str:
        return f"{self.label}-{self.layers}"

    def tag(self, version: str) -> str:
        """Spegel's tags: `v1-10MB-1`."""
        return f"{version}-{self.name}"

    def seed(self, version: str, salt: int = 0) -> int:
        """A stable seed per image, different for every version and case."""
        digest = hashlib.sha256(f"{salt}/{self.tag(version)}".encode()).digest()
        return int.from_bytes(digest[:8], "big")


def matrix(sizes: Iterable[str], layers: Iterable[int]) -> list[Case]:
    """Every size x layer count, smallest first, without duplicates."""
    return sorted({Case.of(s, n) for s in sizes for n in layers})


def select_cases(
    extra_sizes: Sequence[str] = (),
    layers: Sequence[int] = DEFAULT_LAYERS,
    only: Sequence[str] = (),
) -> list[Case]:
    """The default sizes plus `extra_sizes`; `only` (names like 10MB-1) overrides both."""
    if only:
        return sorted({Case.parse(name) for name in only})
    return matrix([*DEFAULT_SIZES, *extra_sizes], layers)
