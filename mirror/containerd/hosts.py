"""containerd's registry mirror configuration: `<config_path>/<host>/hosts.toml`.

Written as Spegel writes it, so nodes can switch between the two: our mirror
targets first (`capabilities`, `dial_timeout = '200ms'`), the upstream `server`
line kept, and what was there before moved to `_backup/` once, never
overwritten, and moved back by `cleanup`.

One addition: every target after the first (the node's own instance) sends
`X-Mirror-Fallback`. The chart's second target is the node port service, which
may lead to another node's instance; that one must not hold the request for a
download in progress, for the download may be this very client's (its own
mirror claimed the layer and sent it upstream through this target).
"""

from __future__ import annotations

import logging
import os
import shutil
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

log = logging.getLogger("mirror.configuration")

BACKUP_DIR = "_backup"
WILDCARD = "_default"
DIAL_TIMEOUT = "200ms"
FALLBACK_HEADER = "X-Mirror-Fallback"


class ConfigurationError(ValueError):
    """A registry or mirror URL that cannot be configured."""


@dataclass(frozen=True)
class RegistryUrl:
    scheme: str
    host: str

    def __str__(self) -> str:
        return self.host if self.host == WILDCARD else f"{self.scheme}://{self.host}"


def parse_registry_url(text: str, *, allow_wildcard: bool) -> RegistryUrl:
    if allow_wildcard and text in (WILDCARD, f"https://{WILDCARD}", f"http://{WILDCARD}"):
        return RegistryUrl("", WILDCARD)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https"):
        raise ConfigurationError(f"{text!r}: a registry URL needs an http or https scheme")
    if not parts.netloc or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigurationError(f"{text!r}: a registry URL is scheme://host[:port] only")
    return RegistryUrl(parts.scheme, parts.netloc)


def parse_registries(texts: Sequence[str], *, allow_wildcard: bool) -> list[RegistryUrl]:
    if not texts and allow_wildcard:
        return [RegistryUrl("", WILDCARD)]
    return [parse_registry_url(t, allow_wildcard=allow_wildcard) for t in texts]


def server_for(registry: RegistryUrl) -> str | None:
    if registry.host == WILDCARD:
        return None
    if registry.host == "docker.io":
        return "https://registry-1.docker.io"
    return str(registry)


def render_hosts_toml(
    registry: RegistryUrl,
    targets: Sequence[RegistryUrl],
    *,
    resolve_tags: bool,
    authorization: str | None = None,
) -> str:
    """Spegel's template; with basic auth each target gets its `Authorization` header,
    and every target but the first `X-Mirror-Fallback`."""
    capabilities = ["pull", "resolve"] if resolve_tags else ["pull"]
    capability_list = "[" + ", ".join(f"'{c}'" for c in capabilities) + "]"
    lines: list[str] = []
    server = server_for(registry)
    if server is not None:
        lines.append(f"server = '{server}'")
    for position, target in enumerate(targets):
        lines += [
            "",
            f"[host.'{target}']",
            f"capabilities = {capability_list}",
            f"dial_timeout = '{DIAL_TIMEOUT}'",
        ]
        headers = []
        if authorization is not None:
            # A literal string: base64 has no quote to escape.
            headers.append(f"Authorization = '{authorization}'")
        if position > 0:
            headers.append(f"{FALLBACK_HEADER} = 'true'")
        if headers:
            lines += [f"[host.'{target}'.header]", *headers]
    return "\n".join(lines).strip() + "\n"


def host_tables(existing: str) -> str:
    """The tables of a hosts.toml (its `[host...]` blocks), verbatim; top-level keys dropped."""
    tomllib.loads(existing)  # refuse to carry over a file containerd could not parse either
    lines = existing.splitlines()
    for i, line in enumerate(lines):
        if line.lstrip().startswith("["):
            return "\n".join(lines[i:]).strip()
    return ""


def _backup(config_path: Path) -> None:
    backup = config_path / BACKUP_DIR
    if backup.is_dir():
        return  # Backed up by an earlier run: what is outside it now is ours.
    entries = [p for p in config_path.iterdir() if p.name != BACKUP_DIR]
    staging = config_path / f".{BACKUP_DIR}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    for entry in entries:
        entry.rename(staging / entry.name)
        log.info("backing up containerd host configuration", extra={"path": str(entry)})
    staging.rename(backup)


def _clear(config_path: Path) -> None:
    for entry in config_path.iterdir():
        if entry.name == BACKUP_DIR:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def add_mirror_configuration(
    config_path: Path,
    mirrored_registries: Sequence[str],
    mirror_targets: Sequence[str],
    *,
    resolve_tags: bool = True,
    prepend_existing: bool = False,
    authorization: str | None = None,
) -> list[Path]:
    """Write one hosts.toml per mirrored registry; returns the files written.

    With `authorization` (basic auth) the files carry a credential: readable by
    their owner only (containerd runs as root), where Spegel leaves them 0644.
    """
    registries = parse_registries(mirrored_registries, allow_wildcard=True)
    targets = parse_registries(mirror_targets, allow_wildcard=False)
    if not targets:
        raise ConfigurationError("at least one mirror target is needed")
    config_path.mkdir(parents=True, exist_ok=True)
    _backup(config_path)
    _clear(config_path)
    written = []
    for registry in registries:
        content = render_hosts_toml(
            registry, targets, resolve_tags=resolve_tags, authorization=authorization
        )
        registry_dir = config_path / registry.host
        backup_dir = config_path / BACKUP_DIR / registry.host
        if prepend_existing and backup_dir.is_dir():
            existing = backup_dir / "hosts.toml"
            if existing.is_file():
                tables = host_tables(existing.read_text())
                if tables:
                    content = content + "\n" + tables + "\n"
            # Certificates and keys the old hosts may refer to come along.
            shutil.copytree(
                backup_dir,
                registry_dir,
                ignore=shutil.ignore_patterns("hosts.toml"),
                dirs_exist_ok=True,
            )
            log.info(
                "prepending to existing mirror configuration", extra={"registry": str(registry)}
            )
        registry_dir.mkdir(parents=True, exist_ok=True)
        path = registry_dir / "hosts.toml"
        temporary = path.with_suffix(".toml.tmp")
        temporary.write_text(content)
        os.chmod(temporary, 0o644 if authorization is None else 0o600)
        temporary.rename(path)
        written.append(path)
        log.info(
            "added containerd mirror configuration",
            extra={"registry": str(registry), "path": str(path)},
        )
    return written


def cleanup_mirror_configuration(config_path: Path) -> bool:
    """Put back what was there before; False when there was nothing to restore (idempotent)."""
    backup = config_path / BACKUP_DIR
    if not backup.is_dir():
        log.info("skipping cleanup: no backup directory", extra={"path": str(backup)})
        return False
    _clear(config_path)
    for entry in backup.iterdir():
        entry.rename(config_path / entry.name)
        log.info("recovering containerd host configuration", extra={"path": str(entry)})
    backup.rmdir()
    return True
