"""A tiny synchronous OCI distribution client (plain HTTP), for checks and set-up."""

from __future__ import annotations

import hashlib
import http.client
from dataclasses import dataclass

MANIFEST_ACCEPT = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass(frozen=True)
class Manifest:
    digest: str
    media_type: str
    body: bytes


def split_ref(ref: str) -> tuple[str, str, str]:
    """`host[:port]/repo[/more]:tag` -> (host, repo, tag). Digests (`@sha256:...`) work too."""
    host, _, rest = ref.partition("/")
    if not rest:
        raise ValueError(f"reference has no registry host: {ref!r}")
    if "@" in rest:
        repo, _, reference = rest.partition("@")
    else:
        repo, _, reference = rest.rpartition(":")
        if not repo or "/" in reference:
            raise ValueError(f"reference has no tag: {ref!r}")
    return host, repo, reference


def request(
    host: str,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> Response:
    """One plain-HTTP request to `host` ("ip:port"); the body is read whole."""
    name, _, port = host.rpartition(":")
    conn = http.client.HTTPConnection(name, int(port), timeout=timeout)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, body)
    finally:
        conn.close()


def get_manifest(host: str, repo: str, reference: str, timeout: float = 30.0) -> Manifest:
    """GET a manifest or index; checks the body against `Docker-Content-Digest`."""
    resp = request(
        host, "GET", f"/v2/{repo}/manifests/{reference}", {"Accept": MANIFEST_ACCEPT}, timeout
    )
    if resp.status != 200:
        raise LookupError(f"GET manifest {host}/{repo}:{reference} -> {resp.status}: {resp.body!r}")
    digest = "sha256:" + hashlib.sha256(resp.body).hexdigest()
    advertised = resp.header("Docker-Content-Digest")
    if advertised is not None and advertised != digest:
        raise ValueError(f"manifest body hashes to {digest} but registry says {advertised}")
    return Manifest(digest, resp.header("Content-Type") or "", resp.body)


def blob_exists(host: str, repo: str, digest: str, timeout: float = 30.0) -> bool:
    return request(host, "HEAD", f"/v2/{repo}/blobs/{digest}", timeout=timeout).status == 200
