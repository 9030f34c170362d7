"""Basic auth credentials read as Spegel reads them, and the one comparison the hot path makes."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from mirror.basicauth import BasicAuth, load_basic_auth
from mirror.errors import StartupError


def _secret(root: Path, **files: bytes) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (root / name).write_bytes(content)
    return root


def test_username_and_password_make_spegels_header(tmp_path: Path) -> None:
    auth = load_basic_auth(str(_secret(tmp_path, username=b"hello", password=b"world")))
    # The value Spegel's own test expects for hello/world (pkg/oci/containerd/mirror_test.go).
    assert auth == BasicAuth("Basic aGVsbG86d29ybGQ=")


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"username": b"user"}, b"user:"),  # Spegel: url.User(name), no password
        ({"password": b"pw"}, b":pw"),
        # The files are used byte for byte: a newline from `--from-file` is part of
        # the value, in hosts.toml and in the check alike.
        ({"username": b"user\n", "password": b"p:w\n"}, b"user\n:p:w\n"),
    ],
)
def test_files_are_taken_as_they_are(
    tmp_path: Path, files: dict[str, bytes], expected: bytes
) -> None:
    auth = load_basic_auth(str(_secret(tmp_path, **files)))
    assert auth is not None
    assert auth.header_value == "Basic " + base64.b64encode(expected).decode()


def test_no_credentials_mean_no_auth(tmp_path: Path) -> None:
    assert load_basic_auth(str(tmp_path / "absent")) is None
    assert load_basic_auth(str(_secret(tmp_path / "empty"))) is None
    assert load_basic_auth(str(_secret(tmp_path / "blank", username=b"", password=b""))) is None
    assert load_basic_auth("") is None


def test_an_unreadable_file_is_a_startup_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "username").mkdir()
    with pytest.raises(StartupError, match=r"--basic-auth-dir: .*username"):
        load_basic_auth(str(tmp_path))


def test_only_the_exact_value_is_allowed() -> None:
    auth = BasicAuth.from_credentials(b"hello", b"world")
    assert auth.allows("Basic aGVsbG86d29ybGQ=")
    for refused in (
        None,
        "",
        "Basic aGVsbG86d29ybGQ",
        "Basic aGVsbG86d29ybGQ==",
        "Basic aGVsbG86d29ybGR=",
        "Bearer aGVsbG86d29ybGQ=",
        "Basic aGVsbG86d29ybGQ=\u00e9",  # latin-1 bytes from the wire: never ours
    ):
        assert not auth.allows(refused), refused
    assert "aGVsbG8" not in repr(auth)
