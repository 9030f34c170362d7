"""What containerd's config.toml says about registry mirroring.

Two settings matter to the mirror: the CRI registry `config_path` (where
containerd looks for `<host>/hosts.toml`) and `discard_unpacked_layers` (when
true, containerd drops layer blobs after unpacking, so there is nothing to
serve). Their keys depend on the config schema version:

    version 1 (no "version"):  plugins.cri.registry.config_path
                               plugins.cri.containerd.discard_unpacked_layers
    version 2 (containerd 1.x): plugins."io.containerd.grpc.v1.cri".registry.config_path
                               plugins."io.containerd.grpc.v1.cri".containerd.discard_unpacked_layers
    version 3 (containerd 2.x): plugins."io.containerd.cri.v1.images".registry.config_path
                               plugins."io.containerd.cri.v1.images".discard_unpacked_layers

Version 3 also has `plugins."io.containerd.cri.v1.images".use_local_image_pull`:
false (the default) makes containerd 2.x pull CRI images through the transfer
service, whose hosts lookup takes `config_path` as one directory; a
':'-separated list then matches no directory and mirrors are silently ignored.
(`discard_unpacked_layers = true` makes 2.x fall back to local pulls, too. A
version 2 file's `discard_unpacked_layers` is dropped when containerd 2.1
migrates the file.)

A third, `max_concurrent_downloads` (layers fetched at once, 3 by default),
decides how fast a new image spreads when many nodes pull it together; the
mirror's `--peer-streams` is best equal to it. CRI pulls take it from the CRI
plugin, except on 2.x through the transfer service, which has its own
(`plugins."io.containerd.transfer.v1.local"`); a CRI value other than 3 makes
2.x fall back to local pulls, where the CRI value applies.

`parse_config` reads a parsed document; `load_config` reads a file, following
its `imports` the way containerd does (globs, relative to the importing file,
later files replacing earlier ones per top-level key and per plugin).
"""

from __future__ import annotations

import glob
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_CONFIG_FILE = Path("/etc/containerd/config.toml")
DEFAULT_MAX_CONCURRENT_DOWNLOADS = 3
TRANSFER_PLUGIN = "io.containerd.transfer.v1.local"

# version -> (plugin id, path to config_path, path to discard_unpacked_layers)
_KEYS: dict[int, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    1: ("cri", ("registry", "config_path"), ("containerd", "discard_unpacked_layers")),
    2: (
        "io.containerd.grpc.v1.cri",
        ("registry", "config_path"),
        ("containerd", "discard_unpacked_layers"),
    ),
    3: (
        "io.containerd.cri.v1.images",
        ("registry", "config_path"),
        ("discard_unpacked_layers",),
    ),
}


class ConfigError(ValueError):
    """The file is not a containerd configuration we can read."""


@dataclass(frozen=True)
class ContainerdConfig:
    version: int
    # None when unset or empty: containerd then uses no hosts directory at all.
    config_path: str | None
    discard_unpacked_layers: bool
    # Version 3 only: true makes CRI pull without the transfer service.
    use_local_image_pull: bool = False
    # Layers a CRI pull fetches at once (0: no limit).
    max_concurrent_downloads: int = DEFAULT_MAX_CONCURRENT_DOWNLOADS

    @property
    def config_dirs(self) -> tuple[Path, ...]:
        """config_path split into directories (containerd accepts a ':'-separated list)."""
        if not self.config_path:
            return ()
        return tuple(Path(p) for p in self.config_path.split(":") if p)


def parse_config(doc: Mapping[str, Any]) -> ContainerdConfig:
    """The mirror-relevant settings of a parsed config.toml."""
    version = doc.get("version", 1)
    if version not in _KEYS:
        raise ConfigError(f"unsupported containerd config version {version!r}")
    plugin_id, config_path_keys, discard_keys = _KEYS[version]
    plugin = _dig(doc, ("plugins", plugin_id))
    config_path = _dig(plugin, config_path_keys)
    discard = _dig(plugin, discard_keys)
    if config_path is not None and not isinstance(config_path, str):
        raise ConfigError(f"registry.config_path is not a string: {config_path!r}")
    if discard is not None and not isinstance(discard, bool):
        raise ConfigError(f"discard_unpacked_layers is not a boolean: {discard!r}")
    local_pull = _dig(plugin, ("use_local_image_pull",)) if version >= 3 else None
    if local_pull is not None and not isinstance(local_pull, bool):
        raise ConfigError(f"use_local_image_pull is not a boolean: {local_pull!r}")
    downloads = _downloads(_dig(plugin, ("max_concurrent_downloads",)), plugin_id)
    if (
        version >= 3
        and not (local_pull or discard)
        and downloads == DEFAULT_MAX_CONCURRENT_DOWNLOADS
    ):
        transfer = _dig(doc, ("plugins", TRANSFER_PLUGIN, "max_concurrent_downloads"))
        downloads = _downloads(transfer, TRANSFER_PLUGIN)
    return ContainerdConfig(
        version=version,
        config_path=config_path or None,
        discard_unpacked_layers=bool(discard),
        use_local_image_pull=bool(local_pull),
        max_concurrent_downloads=downloads,
    )


def _downloads(value: Any, plugin_id: str) -> int:
    if value is None:
        return DEFAULT_MAX_CONCURRENT_DOWNLOADS
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{plugin_id} max_concurrent_downloads is not an integer: {value!r}")
    return max(0, value)


def load_config(path: Path = DEFAULT_CONFIG_FILE) -> ContainerdConfig:
    """parse_config over `path` and its imports; a missing file means containerd's defaults."""
    path = Path(path)
    if not path.exists():
        return parse_config({})
    return parse_config(_load_with_imports(path, set()))


def _load_with_imports(path: Path, seen: set[Path]) -> dict[str, Any]:
    seen.add(path.resolve())
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    for pattern in doc.get("imports", ()):
        full = pattern if Path(pattern).is_absolute() else str(path.parent / pattern)
        for match in sorted(glob.glob(full)):
            imported = Path(match)
            if imported.resolve() not in seen:
                doc = _merge(doc, _load_with_imports(imported, seen))
    return doc


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = {**base, **{k: v for k, v in override.items() if k not in ("plugins", "imports")}}
    merged["plugins"] = {**base.get("plugins", {}), **override.get("plugins", {})}
    return merged


def _dig(doc: Any, keys: tuple[str, ...]) -> Any:
    for key in keys:
        if not isinstance(doc, Mapping):
            return None
        doc = doc.get(key)
    return doc


def _major(version: str | None) -> int | None:
    """The major number of a containerd version string ("v2.1.4", "1.6.20~ds1"), if any."""
    head = (version or "").lstrip("v").split(".", 1)[0]
    return int(head) if head.isdigit() else None


def config_warnings(
    config: ContainerdConfig, registry_config_path: str, containerd_version: str | None = None
) -> list[str]:
    """What in containerd's configuration keeps the mirror from working, in words.

    `containerd_version` (the daemon's, from its Version service) makes the
    transfer-service warning exact for a version 2 file, which 2.x also reads;
    without it, that warning is given for version 3 files and, worded as a
    condition, for version 2 files.
    """
    warnings = []
    if not config.config_dirs:
        warnings.append(
            "containerd's registry config_path is not set: containerd ignores hosts.toml "
            "and never asks the mirror; set it to " + registry_config_path
        )
    elif Path(registry_config_path) not in config.config_dirs:
        warnings.append(
            f"containerd's registry config_path is {config.config_path!r}, which does not "
            f"include {registry_config_path!r} where the mirror configuration is written"
        )
    if len(config.config_dirs) > 1:
        warning = _path_list_warning(config, registry_config_path, _major(containerd_version))
        if warning:
            warnings.append(warning)
    if config.discard_unpacked_layers:
        warnings.append(
            "discard_unpacked_layers = true: containerd deletes layers after unpacking, "
            "so this node cannot serve them to its peers; set it to false"
        )
    return warnings


def stream_cap_advice(config: ContainerdConfig, peer_streams: int) -> str | None:
    """A note when --peer-streams differs from the layers containerd fetches at once:
    a node then receives more streams than it may send, or the reverse, and a new
    image spreads slower when many nodes pull it together."""
    downloads = config.max_concurrent_downloads
    if peer_streams <= 0 or downloads <= 0 or downloads == peer_streams:
        return None
    return (
        f"containerd fetches {downloads} layers at once (max_concurrent_downloads) and "
        f"--peer-streams is {peer_streams}: set them equal for the fastest cold starts "
        "of many nodes at once"
    )


def _path_list_warning(
    config: ContainerdConfig, registry_config_path: str, major: int | None
) -> str | None:
    if config.use_local_image_pull or (major is not None and major < 2):
        return None
    if config.version >= 3 and config.discard_unpacked_layers:
        # containerd 2.x falls back to local pulls for it ("incompatible with transfer service").
        return None
    problem = (
        f"containerd's registry config_path {config.config_path!r} lists several "
        "directories separated by ':', but the transfer service, through which "
        "containerd 2.x pulls CRI images, takes config_path as a single directory: "
        "no hosts.toml is found and the mirror is silently skipped; set config_path to "
        f"{registry_config_path!r} alone, or use_local_image_pull = true"
    )
    if major is None and config.version < 3:
        return "if this containerd is 2.x: " + problem
    return problem
