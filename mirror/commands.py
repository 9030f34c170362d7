"""Run a parsed `mirror` command; each subcommand's work lives in its own module."""

from __future__ import annotations

import json
import logging
import platform

import trio

from mirror.containerd.hosts import ConfigurationError
from mirror.errors import StartupError
from mirror.logs import configure_logging
from mirror.options import (
    CleanupOptions,
    CleanupWaitOptions,
    ConfigurationOptions,
    Options,
    RegistryOptions,
    VersionOptions,
    WatchOptions,
)
from mirror.version import VERSION

log = logging.getLogger("mirror")


def print_version(options: VersionOptions) -> int:
    info = {"version": VERSION, "python": platform.python_version(), "trio": trio.__version__}
    if options.format == "json":
        print(json.dumps(info))
    else:
        print(f"mirror {VERSION} (python {info['python']}, trio {info['trio']})")
    return 0


def run_command(options: Options) -> int:
    if isinstance(options, VersionOptions):
        return print_version(options)
    configure_logging(options.log_level)
    try:
        return _dispatch(options)
    except ConfigurationError as exc:
        log.error("invalid configuration", extra={"error": str(exc)})
        return 2
    except StartupError as exc:
        log.error(str(exc))
        return 1
    except KeyboardInterrupt:
        return 130


def _dispatch(options: Options) -> int:
    if isinstance(options, RegistryOptions):
        from mirror.node import run_registry

        return trio.run(run_registry, options)
    if isinstance(options, WatchOptions):
        from mirror.watch import run_watch

        return trio.run(run_watch, options.nodes)
    from mirror import cleanup

    if isinstance(options, ConfigurationOptions):
        return cleanup.run_configuration(options)
    if isinstance(options, CleanupOptions):
        return trio.run(cleanup.run_cleanup, options)
    if isinstance(options, CleanupWaitOptions):
        return cleanup.run_cleanup_wait(options)
    log.error("command not available in this build", extra={"command": options.command})
    return 2
