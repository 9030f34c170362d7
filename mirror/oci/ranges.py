"""HTTP `Range` (pure): one byte range (`parse_range`), or several (`parse_ranges`,
answered as `multipart/byteranges`: what lazy-pull clients such as eStargz readers
send). A malformed header is ignored and the whole body is sent, which RFC 9110
allows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ASCII_DIGITS = re.compile(r"[0-9]+")
# More digits than any file size has: read as "past the end" (Python's int() would
# refuse past 4,300 digits, and `str.isdigit` accepts superscripts).
MAX_DIGITS = 19
BEYOND_ANY_SIZE = 1 << 63


def parse_decimal(text: str) -> int | None:
    """ASCII digits only -> int (huge values become BEYOND_ANY_SIZE); else None."""
    if not _ASCII_DIGITS.fullmatch(text):
        return None
    if len(text.lstrip("0")) > MAX_DIGITS:
        return BEYOND_ANY_SIZE
    return int(text)


@dataclass(frozen=True, slots=True)
class ByteRange:
    start: int
    end: int  # inclusive

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end}/{size}"


class Unsatisfiable(ValueError):
    """A well-formed range that selects no byte of the representation (-> 416)."""


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The range to send, or None for the whole body; raises Unsatisfiable for a 416."""
    if header is None:
        return None
    unit, sep, spec = header.strip().partition("=")
    if not sep or unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    first, last = first.strip(), last.strip()
    start = parse_decimal(first) if first else None
    end_given = parse_decimal(last) if last else None
    if (first and start is None) or (last and end_given is None) or not (first or last):
        return None
    if start is None:
        assert end_given is not None
        suffix = end_given
        if suffix == 0 or size == 0:
            raise Unsatisfiable(header)
        return ByteRange(max(size - suffix, 0), size - 1)
    end = end_given if end_given is not None else size - 1
    if last and end < start:
        return None
    if start >= size:
        raise Unsatisfiable(header)
    return ByteRange(start, min(end, size - 1))


# More ranges than this in one header are ignored (the whole body is sent): RFC 9110
# lets a server refuse to do the work of many small ranges.
MAX_RANGES = 64


def parse_ranges(header: str | None, size: int) -> list[ByteRange] | None:
    """The ranges to send, sorted and merged where they overlap or touch, or None for the
    whole body; raises Unsatisfiable when no range selects a byte (a 416)."""
    if header is None:
        return None
    unit, sep, specs = header.strip().partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    parts = specs.split(",")
    if len(parts) > MAX_RANGES:
        return None
    ranges: list[ByteRange] = []
    for part in parts:
        try:
            one = parse_range(f"bytes={part}", size)
        except Unsatisfiable:
            continue  # the others may still select bytes
        if one is None:
            return None  # one malformed spec: the header is ignored
        ranges.append(one)
    if not ranges:
        raise Unsatisfiable(header)
    ranges.sort(key=lambda r: r.start)
    merged = [ranges[0]]
    for current in ranges[1:]:
        last = merged[-1]
        if current.start <= last.end + 1:
            merged[-1] = ByteRange(last.start, max(last.end, current.end))
        else:
            merged.append(current)
    return merged
