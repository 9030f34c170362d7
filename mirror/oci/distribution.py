"""OCI distribution pull paths: `/v2/<name>/{manifests,blobs}/<reference>` (pure).

The patterns are the spec's own; a path that does not match them names nothing,
which is also what keeps a request from naming a file outside the content store
(no `..`, no `%`, no empty segments can match).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from mirror.oci.digest import Digest, InvalidDigest, parse_digest

_NAME = re.compile(
    r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*"
)
_TAG = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
# A registry host as Spegel's `ns` parameter carries it: host[:port], or `_default`.
_REGISTRY = re.compile(r"(?:[a-zA-Z0-9-]+(?:\.[a-zA-Z0-9-]+)*|\[[0-9a-fA-F:.]+\])(?::[0-9]{1,5})?")
MAX_NAME_LENGTH = 255


class Kind(Enum):
    BASE = "base"
    MANIFEST = "manifest"
    BLOB = "blob"


class PathError(ValueError):
    """A `/v2/` path that is not a valid pull request; `code` is the OCI error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class DistributionPath:
    kind: Kind
    name: str = ""
    tag: str | None = None
    digest: Digest | None = None

    @property
    def reference(self) -> str:
        return str(self.digest) if self.digest is not None else (self.tag or "")


def parse_distribution_path(path: str) -> DistributionPath | None:
    """Parse a raw (still percent-encoded) request path; None when it is not under `/v2/`."""
    if path in ("/v2", "/v2/"):
        return DistributionPath(Kind.BASE)
    if not path.startswith("/v2/"):
        return None
    rest = path[4:]
    # The last marker wins: a repository may itself have a "blobs" or "manifests" segment.
    manifests_at, blobs_at = rest.rfind("/manifests/"), rest.rfind("/blobs/")
    if manifests_at < 0 and blobs_at < 0:
        raise PathError("UNSUPPORTED", "only manifest and blob pulls are served")
    if manifests_at > blobs_at:
        kind, name, reference = Kind.MANIFEST, rest[:manifests_at], rest[manifests_at + 11 :]
    else:
        kind, name, reference = Kind.BLOB, rest[:blobs_at], rest[blobs_at + 7 :]
    if len(name) > MAX_NAME_LENGTH or not _NAME.fullmatch(name):
        raise PathError("NAME_INVALID", "invalid repository name")
    if kind is Kind.BLOB or ":" in reference:
        try:
            digest = parse_digest(reference)
        except InvalidDigest as exc:
            raise PathError("DIGEST_INVALID", str(exc)) from None
        return DistributionPath(kind, name, digest=digest)
    if not _TAG.fullmatch(reference):
        raise PathError("TAG_INVALID", "invalid tag")
    return DistributionPath(kind, name, tag=reference)


def valid_registry(host: str) -> bool:
    return bool(_REGISTRY.fullmatch(host)) or host == "_default"
