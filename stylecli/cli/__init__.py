"""The `stylecli` command: a thin Typer shell over the library.

Heavy modules (torch and the networks) are imported inside the commands, so `stylecli --help` answers at once.
Errors a user can fix end the program with a one-line message and exit code 2, never a traceback.
"""

from __future__ import annotations

import sys

import typer
from rich.text import Text

from .bench import bench_app
from .commands import register_commands
from .common import console
from .data import data_app
from .directions import directions_app
from .train import register_targets, train_app
from .weights import weights_app

app = typer.Typer(
    name="stylecli",
    help="Edit face photos through StyleGAN2 inversion.\n\n"
         "Example: stylecli edit face.png --direction smile --strength 2 --method e4e",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
register_commands(app)
app.add_typer(weights_app, name="weights")
app.add_typer(bench_app, name="bench")
app.add_typer(data_app, name="data")
app.add_typer(directions_app, name="directions")
app.add_typer(train_app, name="train")
register_targets(train_app)


def _user_errors() -> tuple[type[BaseException], ...]:
    from ..directions import DirectionError
    from ..fileio import OutputError
    from ..imageio import ImageError
    from ..latents import LatentError
    from ..methods.base import MethodUnavailable
    from ..models import ModelError
    from ..packs.convert import ConversionError
    from ..packs.pack import PackError
    from .common import UsageError
    return (ImageError, MethodUnavailable, ModelError, ConversionError, PackError, UsageError, DirectionError, LatentError,
            OutputError)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)
    except Exception as exc:
        if isinstance(exc, _user_errors()):
            message = " ".join(str(exc).split())  # one line, whatever the message held
            console.print(Text.assemble(("error:", "red"), " ", message), highlight=False, soft_wrap=True)
            sys.exit(2)
        raise
