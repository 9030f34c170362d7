"""Run a parsed `mirror` command; each subcommand's work lives in its own module."""

from __future__ import annotations

import json
import logging
import platform
from types import SimpleNamespace

import trio

from mirror.cli import VERSION
from mirror.containerd.hosts import ConfigurationError
from mirror.logs import configure_logging

log = logging.getLogger("mirror")


def run_command(options: SimpleNamespace) -> int:
    if options.command == "version":
        info = {"version": VERSION, "python": platform.python_version(), "trio": trio.__version__}
        if options.format == "json":
            print(json.dumps(info))
        else:
            print(f"mirror {VERSION} (python {info['python']}, trio {info['trio']})")
        return 0
    configure_logging(options.log_level)
    try:
        if options.command == "registry":
            from mirror.node import run_registry

            return trio.run(run_registry, options)
        if options.command == "watch":
            from mirror.watch import run_watch

            return trio.run(run_watch, options.nodes)
        from mirror import cleanup

        if options.command == "configuration":
            return cleanup.run_configuration(options)
        if options.command == "cleanup":
            return trio.run(cleanup.run_cleanup, options)
        if options.command == "cleanup-wait":
            return cleanup.run_cleanup_wait(options)
    except ConfigurationError as exc:
        log.error("invalid configuration", extra={"error": str(exc)})
        return 2
    except KeyboardInterrupt:
        return 130
    log.error("command not available in this build", extra={"command": options.command})
    return 2
