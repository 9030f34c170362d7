from __future__ import annotations

import pytest

from mirror.oci.digest import InvalidDigest, parse_digest
from mirror.oci.distribution import Kind, PathError, parse_distribution_path, valid_registry
from mirror.oci.filters import ReferenceFilter, registry_host
from mirror.oci.mediatypes import (
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    detect_manifest_type,
)
from mirror.oci.ranges import ByteRange, Unsatisfiable, parse_range
from mirror.oci.reference import parse_image_name

HEX = "a" * 64


def test_digest_round_trip() -> None:
    digest = parse_digest(f"sha256:{HEX}")
    assert (digest.algorithm, digest.hex, str(digest)) == ("sha256", HEX, f"sha256:{HEX}")
    assert parse_digest("sha512:" + "0" * 128).algorithm == "sha512"


@pytest.mark.parametrize(
    "text",
    [
        HEX,
        "sha256:" + "A" * 64,
        "sha256:" + "a" * 63,
        "sha256:" + "a" * 65,
        "md5:" + "a" * 32,
        "sha256:../../../etc/passwd",
        "sha256:" + "a" * 62 + "/.",
        "sha256:" + "g" * 64,
        "",
    ],
)
def test_bad_digests_are_rejected(text: str) -> None:
    with pytest.raises(InvalidDigest):
        parse_digest(text)


def test_distribution_paths() -> None:
    assert parse_distribution_path("/v2/").kind is Kind.BASE
    assert parse_distribution_path("/v2").kind is Kind.BASE
    assert parse_distribution_path("/healthz") is None
    tag = parse_distribution_path("/v2/library/nginx/manifests/1.25-alpine")
    assert (tag.kind, tag.name, tag.tag, tag.digest) == (
        Kind.MANIFEST,
        "library/nginx",
        "1.25-alpine",
        None,
    )
    blob = parse_distribution_path(f"/v2/a/b/c/blobs/sha256:{HEX}")
    assert (blob.kind, blob.name, str(blob.digest)) == (Kind.BLOB, "a/b/c", f"sha256:{HEX}")
    by_digest = parse_distribution_path(f"/v2/x/manifests/sha256:{HEX}")
    assert by_digest.tag is None and by_digest.reference == f"sha256:{HEX}"
    # A repository may itself contain "blobs" or "manifests" segments.
    nested = parse_distribution_path(f"/v2/blobs/manifests/blobs/sha256:{HEX}")
    assert nested.name == "blobs/manifests"


@pytest.mark.parametrize(
    ("path", "code"),
    [
        (f"/v2/../../etc/blobs/sha256:{HEX}", "NAME_INVALID"),
        (f"/v2/a/%2e%2e/blobs/sha256:{HEX}", "NAME_INVALID"),
        (f"/v2/a//b/blobs/sha256:{HEX}", "NAME_INVALID"),
        (f"/v2/A/blobs/sha256:{HEX}", "NAME_INVALID"),
        ("/v2/a/blobs/sha256:..%2f..%2fetc%2fpasswd", "DIGEST_INVALID"),
        ("/v2/a/blobs/../../../etc/passwd", "DIGEST_INVALID"),
        ("/v2/a/blobs/latest", "DIGEST_INVALID"),
        ("/v2/a/manifests/sha1:abcd", "DIGEST_INVALID"),
        ("/v2/a/manifests/..", "TAG_INVALID"),
        ("/v2/a/manifests/" + "t" * 129, "TAG_INVALID"),
        ("/v2/a/tags/list", "UNSUPPORTED"),
        ("/v2/_catalog", "UNSUPPORTED"),
    ],
)
def test_hostile_paths_are_rejected(path: str, code: str) -> None:
    with pytest.raises(PathError) as caught:
        parse_distribution_path(path)
    assert caught.value.code == code


def test_registry_parameter() -> None:
    for good in ("docker.io", "ghcr.io", "127.0.0.1:5000", "localhost", "_default", "[::1]:5000"):
        assert valid_registry(good), good
    for bad in ("", "a/b", "../x", "docker.io:port", "a b", "x:123456"):
        assert not valid_registry(bad), bad


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 10, None),
        ("bytes=0-0", 10, ByteRange(0, 0)),
        ("bytes=2-", 10, ByteRange(2, 9)),
        ("bytes=-3", 10, ByteRange(7, 9)),
        ("bytes=-30", 10, ByteRange(0, 9)),
        ("bytes=5-100", 10, ByteRange(5, 9)),
        ("bytes=0-1,4-5", 10, None),
        ("items=0-1", 10, None),
        ("bytes=x-1", 10, None),
        ("bytes=5-2", 10, None),
        ("bytes=-", 10, None),
        # Huge numbers are past the end, never a 500 (int() refuses 4,300+ digits).
        ("bytes=0-" + "9" * 5000, 10, ByteRange(0, 9)),
        ("bytes=-" + "9" * 5000, 10, ByteRange(0, 9)),
        ("bytes=00000000000000000000000003-4", 10, ByteRange(3, 4)),
        # Only ASCII digits: superscripts and other Unicode digits are not numbers.
        ("bytes=\u00b2-", 10, None),
        ("bytes=0-\u0663", 10, None),
    ],
)
def test_ranges(header: str | None, size: int, expected: ByteRange | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(
    ("header", "size"),
    [
        ("bytes=10-", 10),
        ("bytes=10-20", 10),
        ("bytes=-0", 10),
        ("bytes=0-", 0),
        ("bytes=" + "9" * 5000 + "-", 10),
    ],
)
def test_unsatisfiable_ranges(header: str, size: int) -> None:
    with pytest.raises(Unsatisfiable):
        parse_range(header, size)


def test_manifest_media_type_detection() -> None:
    assert detect_manifest_type(b'{"schemaVersion":2,"manifests":[]}') == OCI_INDEX
    assert detect_manifest_type(b'{"schemaVersion":2,"config":{},"layers":[]}') == OCI_MANIFEST
    assert detect_manifest_type(f'{{"mediaType":"{DOCKER_MANIFEST}"}}'.encode()) == DOCKER_MANIFEST
    assert detect_manifest_type(b'{"mediaType":"application/vnd.oci.image.config.v1+json"}') is None
    assert detect_manifest_type(b"\x1f\x8b\x08 not json") is None
    assert detect_manifest_type(b"[1,2]") is None
    assert detect_manifest_type(b'{"architecture":"amd64"}') is None


def test_image_names() -> None:
    name = parse_image_name("docker.io/library/nginx:1.25")
    assert (name.registry, name.repository, name.tag, name.tag_key()) == (
        "docker.io",
        "library/nginx",
        "1.25",
        "docker.io/library/nginx:1.25",
    )
    local = parse_image_name(f"127.0.0.1:5000/team/app:v1@sha256:{HEX}")
    assert (local.registry, local.repository, local.tag, local.digest) == (
        "127.0.0.1:5000",
        "team/app",
        "v1",
        f"sha256:{HEX}",
    )
    assert parse_image_name("localhost/app:1").registry == "localhost"
    lenient = parse_image_name("nginx", lenient=True)
    assert str(lenient) == "docker.io/library/nginx:latest"
    with pytest.raises(ValueError):
        parse_image_name("nginx")
    with pytest.raises(ValueError):
        parse_image_name("bad name:1")


def test_reference_filter() -> None:
    assert registry_host("https://docker.io") == "docker.io"
    assert registry_host("http://127.0.0.1:5000/v2") == "127.0.0.1:5000"
    open_filter = ReferenceFilter.build([], [])
    assert open_filter.allows("ghcr.io/a:b", "ghcr.io")
    limited = ReferenceFilter.build(["https://docker.io"], [":latest$"])
    assert limited.allows("docker.io/library/nginx:1.25", "docker.io")
    assert not limited.allows("docker.io/library/nginx:latest", "docker.io")
    assert not limited.allows("ghcr.io/x/y:1", "ghcr.io")


def test_query_parameters_are_percent_decoded() -> None:
    from mirror.server.request import Request

    request = Request("GET", "/v2/a/manifests/v1?x=1&ns=127.0.0.1%3A5000", {}, True, False)
    assert request.path == "/v2/a/manifests/v1"
    assert request.query_param("ns") == "127.0.0.1:5000"
    assert request.query_param("missing") is None
