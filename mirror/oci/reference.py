"""Image names as containerd stores them: `registry/repository:tag[@digest]` (pure).

The split follows Docker's rule that Spegel also uses: the first path segment is a
registry when it contains `.` or `:`, or is `localhost`; otherwise the image is
on Docker Hub.
"""

from __future__ import annotations

from dataclasses import dataclass

DOCKER_HUB = "docker.io"


@dataclass(frozen=True, slots=True)
class ImageName:
    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    def tag_key(self) -> str | None:
        """The DHT key of this name's tag, `registry/repository:tag`."""
        if self.tag is None:
            return None
        return f"{self.registry}/{self.repository}:{self.tag}"

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def split_registry(name: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first, rest
    return DOCKER_HUB, name


def parse_image_name(name: str, *, lenient: bool = False) -> ImageName:
    """Parse a stored image name; with `lenient`, fill in Docker's defaults as a CLI does."""
    if not name or any(c.isspace() for c in name):
        raise ValueError(f"invalid image reference {name!r}")
    rest, _, digest = name.partition("@")
    registry, path = split_registry(rest)
    tag = None
    slash = path.rfind("/")
    colon = path.rfind(":")
    if colon > slash:
        path, tag = path[:colon], path[colon + 1 :]
    if not path or (not tag and not digest and not lenient):
        raise ValueError(f"image reference {name!r} has no tag or digest")
    if lenient:
        if registry == DOCKER_HUB and "/" not in path:
            path = f"library/{path}"
        if tag is None and not digest:
            tag = "latest"
    return ImageName(registry, path, tag or None, digest or None)
