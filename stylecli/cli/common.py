"""Options and helpers shared by the commands."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

import typer
from rich.console import Console, RenderableType
from rich.markup import escape  # noqa: F401  (for the commands: user and file-system text is not markup)
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def _console(stderr: bool) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    # Redirected to a file or a pipe, rich would wrap tables at 80 columns; logs get room for the widest instead.
    width = None if stream.isatty() or "COLUMNS" in os.environ else 160
    return Console(stderr=stderr, emoji=False, width=width)


console = _console(stderr=True)    # progress, status, messages and errors
results = _console(stderr=False)   # what a command reports (tables), so that it can be piped and redirected


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
def progress_bar(description: str, total: int):
    """A rich progress bar on stderr; yields a function that advances it by n."""
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)
