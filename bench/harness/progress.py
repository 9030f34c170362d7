"""One progress bar over every pull of a run (rich), with a line per finished phase.

rich (the `bench` extra) is imported when a bar is made, so that the commands'
`--help` works without it.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    from rich.console import Console


class PullProgress:
    def __init__(self, total: int, console: Console | None = None, unit: str = "pulls") -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = console or Console()
        self._progress = Progress(
            TextColumn("{task.description:<36}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(unit),
            TimeElapsedColumn(),
            console=self.console,
        )
        self._task = self._progress.add_task("starting", total=total)

    def doing(self, text: str) -> None:
        self._progress.update(self._task, description=text)

    def pulled(self, count: int = 1) -> None:
        self._progress.advance(self._task, count)

    def log(self, text: str) -> None:
        self._progress.console.print(text)

    def __enter__(self) -> Self:
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.stop()
