"""Basic authentication on the registry port, from Spegel's secret files.

Spegel reads `username` and `password` from `/etc/secrets/basic-auth` (where the
chart's `basicAuthSecretName` mounts a Secret) in both `configuration`, which
writes the header into every mirror host of `hosts.toml`, and `registry`, which
then refuses `/v2/` requests without it and sends it to its peers. The files are
used byte for byte, as Spegel does: a trailing newline is part of the value, on
both sides alike. Neither file, or both empty: no authentication.

The registry compares the whole `Authorization` value against the one computed
here at start, in constant time: a request costs one comparison, nothing parsed.
"""

from __future__ import annotations

import base64
import errno
import hmac
from dataclasses import dataclass
from pathlib import Path

from mirror.errors import StartupError

USERNAME_FILE = "username"
PASSWORD_FILE = "password"
CHALLENGE = 'Basic realm="mirror"'


@dataclass(frozen=True, slots=True)
class BasicAuth:
    """The one `Authorization` value this node sends and accepts."""

    header_value: str

    @classmethod
    def from_credentials(cls, username: bytes, password: bytes) -> BasicAuth:
        token = base64.b64encode(username + b":" + password).decode("ascii")
        return cls(f"Basic {token}")

    def allows(self, value: str | None) -> bool:
        """Whether a request's `Authorization` value is ours (constant time).

        `compare_digest` takes ASCII strings only; a header with other bytes
        (decoded as latin-1) cannot be ours anyway.
        """
        return (
            value is not None and value.isascii() and hmac.compare_digest(value, self.header_value)
        )

    def __repr__(self) -> str:
        return "BasicAuth(<secret>)"


def _read(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""
    except OSError as exc:
        reason = exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))
        raise StartupError(f"cannot read {flag}: {path}: {reason}") from None


def load_basic_auth(directory: str, flag: str = "--basic-auth-dir") -> BasicAuth | None:
    """The credentials in `directory`, or None when it holds none (auth off)."""
    if not directory:
        return None
    root = Path(directory)
    username = _read(root / USERNAME_FILE, flag)
    password = _read(root / PASSWORD_FILE, flag)
    if not username and not password:
        return None
    return BasicAuth.from_credentials(username, password)
