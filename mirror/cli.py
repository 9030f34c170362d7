"""`mirror`: a drop-in for Spegel's command line.

Same subcommands, flag names and defaults as Spegel; every flag can also come
from the environment variable of the same name in upper snake case
(`--registry-addr` <- `REGISTRY_ADDR`). Flags given on the command line win.
Syntax as Spegel's parser takes it: `--flag=value`, `--flag value`, lists as
several values after one flag, booleans as `--flag`, `--flag=true|false`.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, fields
from typing import Any

from mirror.durations import format_duration, parse_duration
from mirror.logs import LEVELS
from mirror.options import OPTIONS_BY_COMMAND, Options
from mirror.version import VERSION


@dataclass(frozen=True)
class Flag:
    name: str
    kind: str  # str | int | bool | duration | level | list | regex-list | positional (a list)
    help: str
    required: bool = False
    aliases: tuple[str, ...] = ()

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    @property
    def env(self) -> str:
        return self.dest.upper()


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "t", "true", "yes", "on"):
        return True
    if lowered in ("0", "f", "false", "no", "off"):
        return False
    raise ValueError(f"invalid boolean {text!r}: use true or false")


def _parse_level(text: str) -> str:
    if text.upper() not in LEVELS:
        raise ValueError(f"invalid log level {text!r}: use DEBUG, INFO, WARN or ERROR")
    return text.upper()


def _parse_regex(text: str) -> str:
    try:
        re.compile(text)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {text!r}: {exc}") from None
    return text


_SCALAR: dict[str, Callable[[str], object]] = {
    "str": str,
    "int": int,
    "bool": _parse_bool,
    "duration": parse_duration,
    "level": _parse_level,
}

LOG_LEVEL = Flag("log-level", "level", "Minimum log level: DEBUG, INFO, WARN or ERROR.")
CONFIG_PATH = Flag(
    "containerd-registry-config-path",
    "str",
    "Directory where mirror configuration is written.",
)
MIRRORED_REGISTRIES = Flag(
    "mirrored-registries",
    "list",
    "Registries that are mirrored; empty mirrors all registries.",
)
BASIC_AUTH_DIR = Flag(
    "basic-auth-dir",
    "str",
    "Directory with the files username and password (Spegel's basic-auth Secret); "
    "when either is there, the registry port requires them and hosts.toml carries them. "
    "Empty: no basic auth.",
)
BOOTSTRAP = [
    Flag("bootstrap-kind", "str", "Kind of bootstrapper: static, dns or http."),
    Flag("dns-bootstrap-domain", "str", "Domain whose A/AAAA records are the peers (dns)."),
    Flag("http-bootstrap-addr", "str", "Address to serve this node's router address on (http)."),
    Flag(
        "http-bootstrap-peer",
        "str",
        "URL to fetch bootstrap peers from (http).",
        aliases=("http-bootstrap-url",),
    ),
    Flag("static-bootstrap-peers", "list", "Peers to bootstrap with (host:port or multiaddr)."),
]

COMMANDS: dict[str, tuple[str, list[Flag]]] = {
    "registry": (
        "Run the registry mirror: the pull API, the DHT router and the metrics/debug server.",
        [
            *BOOTSTRAP,
            CONFIG_PATH,
            Flag("metrics-addr", "str", "Address to serve metrics and the debug web UI."),
            Flag(
                "containerd-config-file",
                "str",
                "containerd's config, read at start to warn about settings that defeat the mirror.",
            ),
            Flag(
                "containerd-sock",
                "str",
                "Endpoint of the containerd service.",
            ),
            Flag("containerd-namespace", "str", "Containerd namespace to serve images of."),
            Flag(
                "containerd-content-path",
                "str",
                "Path to containerd's content store; empty asks containerd (introspection).",
            ),
            Flag("data-dir", "str", "Directory where the node keeps its identity."),
            BASIC_AUTH_DIR,
            Flag("router-addr", "str", "Address of the DHT router (UDP)."),
            Flag("registry-addr", "str", "Address to serve the registry on."),
            Flag(
                "registry-head-timeout",
                "duration",
                "Time a client has to send a whole request head.",
            ),
            Flag(
                "registry-client-connections",
                "int",
                "Connections one client address may hold open on the registry port; past it "
                "that address gets 503 with Retry-After (probes are still answered). "
                "0: no per-address limit, only the port's own (from RLIMIT_NOFILE).",
            ),
            Flag(
                "router-key-file",
                "str",
                "File with a shared cluster key that signs DHT traffic.",
            ),
            Flag("otel-endpoint", "str", "Accepted for compatibility; tracing is not exported."),
            Flag("otel-service-name", "str", "Accepted for compatibility."),
            Flag("otel-sampler", "str", "Accepted for compatibility."),
            MIRRORED_REGISTRIES,
            Flag(
                "registry-filters",
                "regex-list",
                "Regular expressions; matching registries/tags are neither served nor advertised.",
            ),
            Flag("mirror-resolve-timeout", "duration", "Max duration spent finding a mirror."),
            Flag("mirror-resolve-retries", "int", "Max amount of mirrors to attempt."),
            Flag(
                "mirror-relay",
                "str",
                "How a peer's body reaches the client: splice (in kernel), copy (1 MiB buffer) "
                "or redirect (a 307 to a holder of the whole blob; downloads in progress are "
                "spliced).",
            ),
            Flag(
                "cold-start",
                "bool",
                "Claim a layer no node holds yet: one node fetches it from the upstream, "
                "the others stream it from that download while it arrives.",
            ),
            Flag(
                "peer-streams",
                "int",
                "Blob bodies this node streams to peers at once; past it a peer is told busy "
                "and takes another source (0: no limit). Best equal to containerd's "
                "max_concurrent_downloads.",
            ),
            Flag(
                "peer-upload-rate",
                "int",
                "Bytes per second this node sends to peers, all streams together (0: no limit).",
            ),
            Flag(
                "mirror-min-rate",
                "int",
                "Least bytes per second a peer holding a whole blob must send while it is "
                "relayed (over 10s of waiting for it); below it another peer takes over "
                "through Range (0: no floor).",
            ),
            Flag(
                "mirror-stripe-width",
                "int",
                "Complete holders a blob of 64 MiB or more is fetched from at once, in "
                "ranges sent on in order (1: from one holder).",
            ),
            Flag("debug-web-enabled", "bool", "When true enables the debug web page."),
            Flag(
                "resolve-latest-tag",
                "bool",
                "Deprecated in Spegel: false adds the filter ':latest$'.",
            ),
            Flag("otel-enabled", "bool", "Accepted for compatibility."),
            Flag("otel-insecure", "bool", "Accepted for compatibility."),
        ],
    ),
    "configuration": (
        "Write containerd's mirror configuration (hosts.toml) for the mirrored registries.",
        [
            CONFIG_PATH,
            MIRRORED_REGISTRIES,
            Flag("mirror-targets", "list", "Registries that act as mirrors.", required=True),
            Flag("resolve-tags", "bool", "When true tags are resolved through the mirror."),
            Flag("prepend-existing", "bool", "Keep existing mirror configuration after ours."),
            BASIC_AUTH_DIR,
        ],
    ),
    "cleanup": (
        "Restore containerd's mirror configuration, then serve readiness until stopped.",
        [
            Flag("addr", "str", "Address to run the readiness probe on.", required=True),
            CONFIG_PATH,
        ],
    ),
    "cleanup-wait": (
        "Wait until the cleanup pods report done.",
        [
            Flag("probe-endpoint", "str", "Endpoint to probe cleanup jobs from.", required=True),
            Flag("threshold", "int", "Consecutive successful probes that mean done."),
            Flag("period", "duration", "Time between probes."),
        ],
    ),
    "version": (
        "Print the version.",
        [Flag("format", "str", "Output format: text or json.")],
    ),
    "watch": (
        "Follow the live mirror events of one or several nodes, one line per event.",
        [
            Flag(
                "nodes",
                "positional",
                "Metrics URLs of the nodes, e.g. http://127.0.0.1:9090.",
                required=True,
            )
        ],
    ),
}


class UsageError(Exception):
    """A flag value that cannot be used; exits with status 2 and the message."""


def flag_default(command: str, flag: Flag) -> object:
    """The default of a flag: its field's default in the command's options class."""
    for field in fields(OPTIONS_BY_COMMAND[command]):
        if field.name == flag.dest:
            return None if field.default is MISSING else field.default
    raise KeyError(f"{command} has no option {flag.dest}")


def _show_default(flag: Flag, default: object) -> str:
    if flag.kind == "duration" and isinstance(default, float):
        return format_duration(default)
    if flag.kind == "bool":
        return str(default).lower()
    if isinstance(default, tuple):
        return " ".join(default) or "none"
    return repr(default) if default == "" else str(default)


def _add_flag(parser: argparse.ArgumentParser, flag: Flag, default: object) -> None:
    names = [f"--{flag.name}", *(f"--{alias}" for alias in flag.aliases)]
    help_text = f"{flag.help} [env {flag.env}; default {_show_default(flag, default)}]"
    if flag.kind == "positional":
        parser.add_argument(
            flag.dest, nargs="*", default=argparse.SUPPRESS, help=help_text, metavar="URL"
        )
        return
    shape: dict[str, Any]
    if flag.kind in ("list", "regex-list"):
        shape = {"nargs": "*", "action": "extend", "metavar": "VALUE"}
    elif flag.kind == "bool":
        shape = {"nargs": "?", "const": "true", "metavar": "BOOL"}
    else:
        shape = {"metavar": flag.kind.upper()}
    parser.add_argument(*names, dest=flag.dest, default=argparse.SUPPRESS, help=help_text, **shape)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mirror",
        description="Peer-to-peer OCI registry mirror, a drop-in for Spegel.",
        allow_abbrev=False,
    )
    _add_flag(parser, LOG_LEVEL, flag_default("registry", LOG_LEVEL))
    parser.add_argument("--version", action="version", version=f"mirror {VERSION}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (description, flags) in COMMANDS.items():
        command = sub.add_parser(
            name, help=description, description=description, allow_abbrev=False
        )
        for flag in [*flags, LOG_LEVEL]:
            _add_flag(command, flag, flag_default(name, flag))
    return parser


def _convert(flag: Flag, raw: object, *, from_env: bool) -> object:
    try:
        if flag.kind in ("list", "regex-list", "positional"):
            if isinstance(raw, str):
                items = [item.strip() for row in csv.reader([raw]) for item in row]
            elif isinstance(raw, list):
                items = [str(item) for item in raw]
            else:
                raise ValueError(f"expected a list, got {raw!r}")
            items = [item for item in items if item]
            return (
                tuple(_parse_regex(i) for i in items) if flag.kind == "regex-list" else tuple(items)
            )
        if not isinstance(raw, str):
            raise ValueError(f"expected one value, got {raw!r}")
        return _SCALAR[flag.kind](raw)
    except ValueError as exc:
        source = f"environment variable {flag.env}" if from_env else f"--{flag.name}"
        raise UsageError(f"{source}: {exc}") from None


def _value(
    command: str, flag: Flag, parsed: dict[str, object], environ: Mapping[str, str]
) -> object:
    if flag.dest in parsed:
        return _convert(flag, parsed[flag.dest], from_env=False)
    if flag.env in environ:
        return _convert(flag, environ[flag.env], from_env=True)
    if flag.required and flag.kind == "positional":
        raise UsageError(f"give one or more {flag.name} (or set {flag.env})")
    if flag.required:
        raise UsageError(f"--{flag.name} is required (or set {flag.env})")
    return flag_default(command, flag)


def _unknown_message(command: str, unknown: Sequence[str]) -> str:
    """Name what was not understood and, for a near miss, the flag that was meant."""
    first = unknown[0]
    if not first.startswith("--"):
        return f"{command}: unexpected argument {first!r}"
    name = first[2:].split("=", 1)[0]
    flags = [f for flag in [*COMMANDS[command][1], LOG_LEVEL] for f in (flag.name, *flag.aliases)]
    close = difflib.get_close_matches(name, flags, n=1, cutoff=0.6)
    hint = f"; did you mean --{close[0]}?" if close else f"; see mirror {command} --help"
    return f"{command}: unknown flag --{name}{hint}"


def parse_args(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Options:
    """Parse the command line and the environment into the command's typed options."""
    environ = os.environ if environ is None else environ
    namespace, unknown = build_parser().parse_known_args(list(argv))
    parsed = vars(namespace)
    command = str(parsed.pop("command"))
    if unknown:
        raise UsageError(_unknown_message(command, unknown))
    values = {
        flag.dest: _value(command, flag, parsed, environ)
        for flag in [*COMMANDS[command][1], LOG_LEVEL]
    }
    if command == "registry":
        if values["mirror_relay"] not in ("copy", "splice", "redirect"):
            raise UsageError("--mirror-relay: use splice, copy or redirect")
        clients = values["registry_client_connections"]
        if isinstance(clients, int) and clients < 0:
            raise UsageError("--registry-client-connections: use 0 (no limit) or more")
        streams = values["peer_streams"]
        if isinstance(streams, int) and streams < 0:
            raise UsageError("--peer-streams: use 0 (no limit) or more")
        rate = values["peer_upload_rate"]
        if isinstance(rate, int) and rate < 0:
            raise UsageError("--peer-upload-rate: use 0 (no limit) or a rate in bytes per second")
        floor = values["mirror_min_rate"]
        if isinstance(floor, int) and floor < 0:
            raise UsageError("--mirror-min-rate: use 0 (no floor) or a rate in bytes per second")
        width = values["mirror_stripe_width"]
        if isinstance(width, int) and width < 1:
            raise UsageError("--mirror-stripe-width: use 1 (no striping) or more")
        if not values["resolve_latest_tag"]:
            filters = values["registry_filters"]
            assert isinstance(filters, tuple)
            values["registry_filters"] = (*filters, ":latest$")
    # Each value was converted by its flag's kind, which matches the field's type
    # (tests/unit/test_options.py checks the table against the dataclasses).
    return OPTIONS_BY_COMMAND[command](**values)  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> int:
    try:
        options = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        print(f"mirror: error: {exc}", file=sys.stderr)
        return 2
    from mirror.commands import run_command

    return run_command(options)


if __name__ == "__main__":
    sys.exit(main())
