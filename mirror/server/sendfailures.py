"""Why a body could not be sent whole: raised by the loop's send paths (`io.py`) and
by the worker thread's `sendfile` (`offload.py`) alike."""

from __future__ import annotations


class PeerStalled(Exception):
    """The peer accepted no byte within the stall timeout."""


class SourceShort(Exception):
    """The file ended before the promised length: it was truncated or replaced."""
