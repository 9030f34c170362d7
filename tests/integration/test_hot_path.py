"""The registry hot path against real containerd content pulled from a real registry."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from bench.kit.mirror import MirrorNode
from tests.httpclient import byteranges, fetch, raw_exchange, status_of
from tests.integration.conftest import NodeWithImages, start_mirror

pytestmark = pytest.mark.integration

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MISSING = "sha256:" + "0" * 64


def _ns(env: NodeWithImages) -> str:
    return f"?ns={env.upstream.host}"


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_base_and_health_endpoints(mirror: MirrorNode) -> None:
    base = fetch(mirror.address, "/v2/")
    assert base.status == 200
    assert base.header("Docker-Distribution-Api-Version") == "registry/2.0"
    assert fetch(mirror.address, "/livez").status == 200
    assert fetch(mirror.address, "/readyz").status == 200
    assert fetch(mirror.address, "/nothing-here").status == 404


def test_manifest_by_tag_and_digest(mirror: MirrorNode, node_with_images: NodeWithImages) -> None:
    env = node_with_images
    image = env.image
    by_tag = fetch(mirror.address, f"/v2/{image.name}/manifests/{image.tag}{_ns(env)}")
    assert by_tag.status == 200
    assert by_tag.header("Content-Type") == OCI_MANIFEST
    assert by_tag.header("Docker-Content-Digest") == image.digest
    assert by_tag.sha256() == image.digest
    assert int(by_tag.header("Content-Length") or -1) == len(by_tag.body) == image.top.size
    by_digest = fetch(mirror.address, f"/v2/{image.name}/manifests/{image.digest}{_ns(env)}")
    assert (by_digest.status, by_digest.body) == (200, by_tag.body)
    assert by_digest.header("Content-Type") == OCI_MANIFEST
    head = fetch(mirror.address, f"/v2/{image.name}/manifests/{image.tag}{_ns(env)}", method="HEAD")
    assert head.status == 200 and head.body == b""
    assert head.header("Content-Length") == str(image.top.size)
    assert head.header("Docker-Content-Digest") == image.digest


def test_a_tag_needs_the_ns_parameter(mirror: MirrorNode, node_with_images: NodeWithImages) -> None:
    image = node_with_images.image
    reply = fetch(mirror.address, f"/v2/{image.name}/manifests/{image.tag}")
    assert reply.status == 404 and reply.error_code() == "MANIFEST_UNKNOWN"
    # A digest is content-addressed and needs no registry.
    assert fetch(mirror.address, f"/v2/{image.name}/manifests/{image.digest}").status == 200


def test_multi_arch_index_and_children(
    mirror: MirrorNode, node_with_images: NodeWithImages
) -> None:
    env = node_with_images
    multi = env.multi
    index = fetch(mirror.address, f"/v2/{multi.name}/manifests/{multi.tag}{_ns(env)}")
    assert index.status == 200
    assert index.header("Content-Type") == OCI_INDEX
    assert index.sha256() == multi.digest
    for platform_image in multi.images:
        child = fetch(
            mirror.address, f"/v2/{multi.name}/manifests/{platform_image.manifest.digest}{_ns(env)}"
        )
        assert child.status == 200
        assert child.header("Content-Type") == OCI_MANIFEST
        assert child.sha256() == platform_image.manifest.digest


def test_every_blob_byte_for_byte(mirror: MirrorNode, node_with_images: NodeWithImages) -> None:
    env = node_with_images
    for image in (env.image, env.multi, env.big):
        for platform_image in image.images:
            for blob in (platform_image.config, *platform_image.layers):
                reply = fetch(mirror.address, f"/v2/{image.name}/blobs/{blob.digest}{_ns(env)}")
                assert reply.status == 200, blob
                assert reply.sha256() == blob.digest
                assert reply.header("Docker-Content-Digest") == blob.digest
                assert reply.header("Content-Type") == "application/octet-stream"
                assert reply.header("Content-Length") == str(blob.size)
                assert reply.header("Accept-Ranges") == "bytes"


def test_blob_head(mirror: MirrorNode, node_with_images: NodeWithImages) -> None:
    env = node_with_images
    layer = env.big.layers[0]
    reply = fetch(mirror.address, f"/v2/{env.big.name}/blobs/{layer.digest}", method="HEAD")
    assert (reply.status, reply.body) == (200, b"")
    assert reply.header("Content-Length") == str(layer.size)
    assert reply.header("Docker-Content-Digest") == layer.digest


@pytest.mark.parametrize(
    ("range_header", "start", "end"),
    [
        ("bytes=0-0", 0, 0),
        ("bytes=-1000", -1000, -1),
        ("bytes=1000-", 1000, -1),
        ("bytes=10-99999999999", 10, -1),
        ("bytes=4096-8191", 4096, 8191),
    ],
)
def test_blob_ranges(
    mirror: MirrorNode, node_with_images: NodeWithImages, range_header: str, start: int, end: int
) -> None:
    env = node_with_images
    layer = env.big.layers[0]
    content = env.big.blob_path(layer.digest).read_bytes()
    size = len(content)
    first = start % size
    last = end % size
    reply = fetch(
        mirror.address, f"/v2/{env.big.name}/blobs/{layer.digest}", headers={"Range": range_header}
    )
    assert reply.status == 206
    assert reply.header("Content-Range") == f"bytes {first}-{last}/{size}"
    assert reply.body == content[first : last + 1]
    assert reply.header("Content-Length") == str(last - first + 1)


def test_unsatisfiable_range(mirror: MirrorNode, node_with_images: NodeWithImages) -> None:
    env = node_with_images
    layer = env.image.layers[0]
    reply = fetch(
        mirror.address,
        f"/v2/{env.image.name}/blobs/{layer.digest}",
        headers={"Range": f"bytes={layer.size}-"},
    )
    assert reply.status == 416
    assert reply.header("Content-Range") == f"bytes */{layer.size}"


def test_manifest_range(mirror: MirrorNode, node_with_images: NodeWithImages) -> None:
    env = node_with_images
    image = env.image
    full = fetch(mirror.address, f"/v2/{image.name}/manifests/{image.digest}").body
    part = fetch(
        mirror.address, f"/v2/{image.name}/manifests/{image.digest}", headers={"Range": "bytes=0-9"}
    )
    assert (part.status, part.body) == (206, full[:10])


def test_unknown_content_is_a_fast_404(
    mirror: MirrorNode, node_with_images: NodeWithImages
) -> None:
    env = node_with_images
    blob = fetch(mirror.address, f"/v2/team/app/blobs/{MISSING}{_ns(env)}")
    assert blob.status == 404 and blob.error_code() == "BLOB_UNKNOWN"
    manifest = fetch(mirror.address, f"/v2/team/app/manifests/nope{_ns(env)}")
    assert manifest.status == 404 and manifest.error_code() == "MANIFEST_UNKNOWN"
    # A layer is not a manifest, even by digest.
    layer = env.image.layers[0].digest
    assert fetch(mirror.address, f"/v2/team/app/manifests/{layer}").status == 404


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_write_methods_are_refused(
    mirror: MirrorNode, node_with_images: NodeWithImages, method: str
) -> None:
    reply = fetch(
        mirror.address,
        f"/v2/team/app/blobs/{node_with_images.image.layers[0].digest}",
        method=method,
    )
    assert reply.status == 405
    assert reply.header("Allow") == "GET, HEAD"
    assert reply.error_code() == "UNSUPPORTED"


def test_filters(node_with_images: NodeWithImages) -> None:
    env = node_with_images
    image = env.image
    path = f"/v2/{image.name}/manifests/{image.tag}{_ns(env)}"
    other = start_mirror(env, "mirror-allowlist", "--mirrored-registries", "https://ghcr.io")
    filtered = start_mirror(env, "mirror-filtered", f"--registry-filters=:{image.tag}$")
    try:
        assert fetch(other.address, path).status == 404
        assert fetch(filtered.address, path).status == 404
        other_tag = f"/v2/{env.multi.name}/manifests/{env.multi.tag}x{_ns(env)}"
        assert fetch(filtered.address, other_tag).status == 404
        digest_path = f"/v2/{image.name}/manifests/{image.digest}{_ns(env)}"
        assert fetch(filtered.address, digest_path).status == 200
        assert fetch(other.address, digest_path).status == 404
    finally:
        other.stop()
        filtered.stop()


HEX = "a" * 64


@pytest.mark.parametrize(
    ("target", "status"),
    [
        (f"/v2/../../etc/passwd/blobs/sha256:{HEX}", 400),
        (f"/v2/team/%2e%2e/%2e%2e/blobs/sha256:{HEX}", 400),
        ("/v2/team/app/blobs/sha256:..%2F..%2F..%2Fetc%2Fpasswd", 400),
        ("/v2/team/app/blobs/sha256/../../../../etc/passwd", 400),
        ("/v2/team/app/blobs/md5:d41d8cd98f00b204e9800998ecf8427e", 400),
        ("/v2/team/app/blobs/sha256:" + "A" * 64, 400),
        ("/v2/team/app/manifests/sha256:xyz", 400),
        ("/v2/team/app/manifests/latest?ns=../../etc", 400),
        ("/v2/team/app/tags/list", 404),
    ],
)
def test_hostile_paths_get_clean_errors(mirror: MirrorNode, target: str, status: int) -> None:
    raw = raw_exchange(
        mirror.address, f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )
    assert status_of(raw) == status
    assert b"Traceback" not in raw and b"root:" not in raw
    assert b'"errors"' in raw


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET /v2/ HTTP/1.1\r\n" + b"X-Big: " + b"b" * 40000 + b"\r\n\r\n", 431),
        (
            b"GET /v2/ HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n",
            431,
        ),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http at all\r\n\r\n", 400),
        (b"GET /v2/ HTTP/9.9\r\n\r\n", 400),
        (b"GET /v2/ HTTP/1.1\r\nContent-Length: -5\r\n\r\n", 400),
    ],
)
def test_malformed_requests(mirror: MirrorNode, request_bytes: bytes, status: int) -> None:
    raw = raw_exchange(mirror.address, request_bytes)
    assert status_of(raw) == status
    assert b"Connection: close" in raw
    assert b"Traceback" not in raw


def test_keep_alive_and_pipelining(mirror: MirrorNode, node_with_images: NodeWithImages) -> None:
    image = node_with_images.image
    one = f"GET /v2/{image.name}/manifests/{image.digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    layer = image.layers[0].digest
    last = f"HEAD /v2/{image.name}/blobs/{layer} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    raw = raw_exchange(mirror.address, one + one + last.encode())
    assert raw.count(b"HTTP/1.1 200 OK") == 3
    assert raw.count(image.top.hex.encode()) == 2


def test_slow_head_is_cut_and_others_are_served(mirror: MirrorNode) -> None:
    host, _, port = mirror.address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=5) as slow:
        started = time.monotonic()
        closed = b""
        for byte in b"GET /v2/ HTTP/1.1\r\nHost: slow-loris":
            try:
                slow.sendall(bytes([byte]))
            except OSError:
                break
            assert fetch(mirror.address, "/v2/").status == 200 if byte == ord("G") else True
            time.sleep(0.1)
            if time.monotonic() - started > 3:
                break
        slow.settimeout(3)
        try:
            closed = slow.recv(65536)
        except OSError:
            closed = b""
        # The 1s head deadline (set for this mirror) answered 408 or closed the socket.
        assert closed == b"" or status_of(closed) == 408
        assert time.monotonic() - started < 6


def test_client_disconnect_mid_body_and_idle_connections(
    mirror: MirrorNode, node_with_images: NodeWithImages
) -> None:
    env = node_with_images
    pid = mirror.process.pid
    assert pid is not None
    layer = env.big.layers[0]
    before = _open_fds(pid)
    host, _, port = mirror.address.rpartition(":")
    for _ in range(5):
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(
                f"GET /v2/{env.big.name}/blobs/{layer.digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            )
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    idle = [socket.create_connection((host, int(port)), timeout=5) for _ in range(300)]
    try:
        reply = fetch(mirror.address, f"/v2/{env.big.name}/blobs/{layer.digest}")
        assert reply.status == 200 and reply.sha256() == layer.digest
        assert _open_fds(pid) >= before + 300
    finally:
        for sock in idle:
            sock.close()
    deadline = time.monotonic() + 10
    while _open_fds(pid) > before + 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _open_fds(pid) <= before + 2


def test_nothing_outside_the_content_store(mirror: MirrorNode, tmp_path: Path) -> None:
    secret = Path("/etc/hostname").read_bytes()
    digest = "sha256:" + hashlib.sha256(secret).hexdigest()
    # Even the right digest of a file outside the store names nothing.
    reply = fetch(mirror.address, f"/v2/team/app/blobs/{digest}")
    assert reply.status == 404


def test_a_moved_tag_is_followed(mirror: MirrorNode, node_with_images: NodeWithImages) -> None:
    env = node_with_images
    moving = f"{env.upstream.host}/team/moving:v1"
    env.containerd.ctr("images", "tag", "--force", env.image_ref(env.image), moving)
    path = f"/v2/team/moving/manifests/v1{_ns(env)}"
    assert fetch(mirror.address, path).sha256() == env.image.digest
    assert fetch(mirror.address, path).sha256() == env.image.digest  # now from the prepared cache
    env.containerd.ctr("images", "tag", "--force", env.image_ref(env.multi), moving)
    deadline = time.monotonic() + 5
    while fetch(mirror.address, path).sha256() != env.multi.digest:
        assert time.monotonic() < deadline, "the tag's new target was never served"
        time.sleep(0.1)
    assert fetch(mirror.address, path).header("Content-Type") == OCI_INDEX


def test_sigterm_finishes_in_flight_responses_then_exits(node_with_images: NodeWithImages) -> None:
    env = node_with_images
    node = start_mirror(env, "mirror-sigterm")
    layer = env.big.layers[0]
    host, _, port = node.address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sock.sendall(
                f"GET /v2/{env.big.name}/blobs/{layer.digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            )
            data = sock.recv(65536)
            assert data.startswith(b"HTTP/1.1 200")
            os.kill(node.process.pid or 0, signal.SIGTERM)
            time.sleep(0.5)
            with pytest.raises(OSError):
                socket.create_connection((host, int(port)), timeout=2).close()
            head, _, body = data.partition(b"\r\n\r\n")
            assert b"Connection: close" not in head  # it was sent before the stop
            digest = hashlib.sha256(body)
            received = len(body)
            while chunk := sock.recv(1 << 20):
                digest.update(chunk)
                received += len(chunk)
        assert received == layer.size
        assert "sha256:" + digest.hexdigest() == layer.digest
        deadline = time.monotonic() + 10
        while node.process.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert node.process.returncode == 0
        assert "gracefully shutdown" in node.tail(5)
    finally:
        node.stop()


def test_several_ranges_are_one_multipart_answer(
    mirror: MirrorNode, node_with_images: NodeWithImages
) -> None:
    """What eStargz readers send: each range as a part of `multipart/byteranges`
    (a whole body would turn a lazy pull into a full one)."""
    env = node_with_images
    layer = env.big.layers[0]
    content = env.big.blob_path(layer.digest).read_bytes()
    size = len(content)
    path = f"/v2/{env.big.name}/blobs/{layer.digest}"
    reply = fetch(mirror.address, path, headers={"Range": "bytes=100-199,0-9,-16"})
    assert reply.status == 206 and reply.header("Content-Range") is None
    assert reply.header("Content-Length") == str(len(reply.body))
    assert byteranges(reply) == [
        (f"bytes 0-9/{size}", content[:10]),
        (f"bytes 100-199/{size}", content[100:200]),
        (f"bytes {size - 16}-{size - 1}/{size}", content[-16:]),
    ]
    # Overlapping or touching ranges are one: a plain 206.
    merged = fetch(mirror.address, path, headers={"Range": "bytes=0-99,50-149,150-199"})
    assert merged.status == 206 and merged.header("Content-Range") == f"bytes 0-199/{size}"
    assert merged.body == content[:200]
    # None satisfiable: 416; one malformed: the whole body.
    past = fetch(mirror.address, path, headers={"Range": f"bytes={size}-,{size + 5}-"})
    assert past.status == 416
    odd = fetch(mirror.address, path, headers={"Range": "bytes=0-9,x-y"})
    assert odd.status == 200 and odd.body == content
    head = fetch(mirror.address, path, method="HEAD", headers={"Range": "bytes=0-9,20-29"})
    assert head.status == 206 and int(head.header("Content-Length") or 0) > 20
