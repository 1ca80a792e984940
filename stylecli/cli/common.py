"""Options and helpers shared by the commands."""

from __future__ import annotations

import os
from contextlib import contextmanager

import typer
from rich.console import Console, ConsoleDimensions, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from ..fileio import printable


def escape(value: object) -> str:
    """User or file-system text (a path, a pack name) for a message: printable whatever its bytes (a file name that
    is not UTF-8 shows them as \\xNN). No markup escaping is needed: the consoles never read markup."""
    return printable(str(value))


class PlainConsole(Console):
    """A console that prints text as it is given. Paths, pack names and file contents end up in messages, tables and
    progress lines, and rich markup would read `[/b]` in a file name as a closing tag (a crash) or `[red]x.png` as a
    style (the wrong name): markup is off, here and in status lines. Styled text is passed as `rich.text.Text`."""

    def __init__(self, stderr: bool):
        super().__init__(stderr=stderr, emoji=False, markup=False)
        self._width = None  # rich fixes COLUMNS at construction; the width is decided at each print instead

    def _live_size(self) -> ConsoleDimensions:
        """The terminal's size, COLUMNS as it is now, or, redirected to a file or a pipe without COLUMNS, 160 columns
        (rich would wrap tables at 80; logs get room for the widest)."""
        size = Console.size.fget(self)
        if self._width is None and "COLUMNS" not in os.environ and not self.file.isatty():
            return ConsoleDimensions(160, size.height)
        return size

    size = property(_live_size, Console.size.fset)

    def status(self, status: RenderableType, **kwargs):
        return super().status(Text(status) if isinstance(status, str) else status, **kwargs)


console = PlainConsole(stderr=True)    # progress, status, messages and errors
results = PlainConsole(stderr=False)   # what a command reports (tables), so that it can be piped and redirected


def show(result: RenderableType, json_output: bool = False) -> None:
    """Print a command's result on stdout, or on stderr when --json gives stdout to the JSON."""
    (console if json_output else results).print(result)

DEFAULT_MODEL = "synthface-64"

ModelOption = typer.Option(DEFAULT_MODEL, "--model", "-m",
                           help="Model pack name or folder, an official .pkl/.pt checkpoint, or random:CONFIG.")
DeviceOption = typer.Option("auto", "--device", help="cpu, cuda, cuda:N, or auto (CUDA when available).")


class UsageError(Exception):
    """A bad combination of arguments, reported as one line."""


@contextmanager
def progress_bar(description: str, total: int, method=None):
    """A rich progress bar on stderr; yields a function that advances it by n. With a `method` that optimises per
    image (it calls `Method.on_step`), a second line follows the optimisation steps of the images it is working on."""
    columns = [TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total)
        if method is not None:
            steps = progress.add_task("  optimisation steps", total=None, visible=False)
            method.on_step = lambda step, of: progress.update(steps, completed=step, total=of, visible=True)
        try:
            yield lambda n=1: progress.advance(task, n)
        finally:
            if method is not None:
                method.on_step = None


def train_with_progress(trainer, description: str, report: bool = True) -> None:
    """Run a trainer (`progress()` -> (done, total); `run(on_progress)` calls on_progress(now, record)) under a
    progress bar that starts where a resumed run stands. `report=False` (torchrun's other ranks) trains without it."""
    done, total = trainer.progress()
    with progress_bar(description, total) as advance:
        advance(done)
        position = [done]

        def on_progress(now: int, record: dict) -> None:
            advance(now - position[0])
            position[0] = now

        trainer.run(on_progress=on_progress if report else None)
