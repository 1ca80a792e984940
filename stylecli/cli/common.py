"""Options and helpers shared by the commands."""

from __future__ import annotations

from contextlib import contextmanager

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True, emoji=False)

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
