"""Minimal containerd `hosts.toml` (certs.d format) for `ctr --hosts-dir` pulls."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def _toml_list(items: Sequence[str]) -> str:
    return "[" + ", ".join(f'"{i}"' for i in items) + "]"


def render_hosts_toml(
    server_url: str,
    mirrors: Sequence[str] = (),
    capabilities: Sequence[str] = ("pull", "resolve"),
    dial_timeout: str | None = None,
) -> str:
    """Mirrors are tried in order, then `server_url` (which gets all capabilities)."""
    lines = [f'server = "{server_url}"', ""]
    if not mirrors:
        # containerd 1.6 rejects a hosts.toml without a `host` table ("invalid
        # `host` tree") and silently falls back to resolving the registry name.
        lines += ["[host]", ""]
    for mirror in mirrors:
        lines.append(f'[host."{mirror}"]')
        lines.append(f"  capabilities = {_toml_list(capabilities)}")
        if dial_timeout is not None:
            lines.append(f'  dial_timeout = "{dial_timeout}"')
        lines.append("")
    return "\n".join(lines)


def write_hosts_toml(
    hosts_dir: Path,
    registry_host: str,
    server_url: str,
    mirrors: Sequence[str] = (),
    capabilities: Sequence[str] = ("pull", "resolve"),
    dial_timeout: str | None = None,
) -> Path:
    """Write `<hosts_dir>/<registry_host>/hosts.toml` and return its path.

    `registry_host` is the name as it appears in image references
    ("127.0.0.1:5000", "docker.io"); `server_url` and `mirrors` are URLs
    ("http://127.0.0.2:5000"). `skip_verify` is not needed: everything is plain HTTP.
    """
    path = Path(hosts_dir) / registry_host / "hosts.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_hosts_toml(server_url, mirrors, capabilities, dial_timeout))
    return path
