"""Errors below the command line that end a command with a message, not a traceback."""

from __future__ import annotations


class StartupError(Exception):
    """A node cannot start as configured; the message names the flag or setting to fix."""
