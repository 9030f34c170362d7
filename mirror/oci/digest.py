"""Content digests: parsing and validation (pure)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

# Only algorithms whose content containerd can store; anything else names no file.
_HEX_LENGTHS = {"sha256": 64, "sha512": 128}
_HEX = re.compile(r"[0-9a-f]+")


class InvalidDigest(ValueError):
    """The string is not a well-formed digest of a supported algorithm."""


@dataclass(frozen=True, slots=True)
class Digest:
    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


def parse_digest(text: str) -> Digest:
    algorithm, sep, encoded = text.partition(":")
    if not sep:
        raise InvalidDigest(f"digest {text!r} has no algorithm")
    expected = _HEX_LENGTHS.get(algorithm)
    if expected is None:
        raise InvalidDigest(f"unsupported digest algorithm {algorithm!r}")
    if len(encoded) != expected or not _HEX.fullmatch(encoded):
        raise InvalidDigest(f"digest {text!r} is not {expected} lowercase hex digits")
    return Digest(algorithm, encoded)


def is_digest(text: str) -> bool:
    try:
        parse_digest(text)
    except InvalidDigest:
        return False
    return True


def digest_matches(digest: str, data: bytes) -> bool:
    """`data` hashes to `digest` (False for a malformed or unsupported digest)."""
    try:
        parsed = parse_digest(digest)
    except InvalidDigest:
        return False
    return hashlib.new(parsed.algorithm, data).hexdigest() == parsed.hex
