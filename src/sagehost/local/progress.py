"""The progress of a local transform: records and files done. A rich progress bar when rich is
installed and stderr is a terminal; else a plain line every few seconds and one per file."""

from __future__ import annotations

import importlib
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

_EVERY_S = 5.0


class Progress(Protocol):
    def records(self, count: int) -> None: ...

    def file_done(self) -> None: ...

    def say(self, line: str) -> None:
        """A message, printed without breaking the bar."""

    def close(self) -> None: ...


def progress(files: int, say: Callable[[str], None]) -> Progress:
    if sys.stderr.isatty():
        try:
            return _Bar(importlib.import_module("rich.progress"), importlib.import_module("rich.console"), files)
        except ModuleNotFoundError:
            pass
    return _Lines(files, say)


class _Lines:
    def __init__(self, files: int, say: Callable[[str], None], clock: Callable[[], float] = time.monotonic) -> None:
        self._files, self._say, self._clock = files, say, clock
        self._done_records = 0
        self._done_files = 0
        self._shown = clock()

    def records(self, count: int) -> None:
        self._done_records += count
        if self._clock() - self._shown >= _EVERY_S:
            self._show()

    def file_done(self) -> None:
        self._done_files += 1
        self._show()

    def say(self, line: str) -> None:
        self._say(line)

    def close(self) -> None:
        pass

    def _show(self) -> None:
        self._shown = self._clock()
        self._say(f"  {self._done_records:,} records, {self._done_files}/{self._files} files")


class _Bar:
    def __init__(self, rich_progress: Any, rich_console: Any, files: int) -> None:
        columns = (
            rich_progress.TextColumn("{task.description}"),
            rich_progress.BarColumn(),
            rich_progress.MofNCompleteColumn(),
            rich_progress.TimeElapsedColumn(),
        )
        self._bar = rich_progress.Progress(*columns, console=rich_console.Console(stderr=True))
        self._files = self._bar.add_task("files", total=files)
        self._records = self._bar.add_task("records", total=None)
        self._bar.start()

    def records(self, count: int) -> None:
        self._bar.advance(self._records, count)

    def file_done(self) -> None:
        self._bar.advance(self._files, 1)

    def say(self, line: str) -> None:
        self._bar.console.print(line, markup=False, highlight=False)

    def close(self) -> None:
        self._bar.stop()
