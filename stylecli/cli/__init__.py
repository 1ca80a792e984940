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
from .diffuse import register_diffuse
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
register_diffuse(app)
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


def _click_exceptions() -> tuple[type, type]:
    """The command-line parser's error types (Typer vendors click; older Typer releases use click itself)."""
    try:
        from typer._click.exceptions import ClickException, NoArgsIsHelpError
    except ImportError:  # pragma: no cover - Typer before it vendored click
        from click.exceptions import ClickException, NoArgsIsHelpError
    return ClickException, NoArgsIsHelpError


def main() -> None:
    ClickException, NoArgsIsHelpError = _click_exceptions()
    try:
        # Not standalone: the parser's own errors (a bad flag value, an unknown option) come here and become one line
        # like every other error, instead of a box.
        code = app(standalone_mode=False)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)
    except NoArgsIsHelpError as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ClickException as exc:
        command = getattr(getattr(exc, "ctx", None), "command_path", "stylecli")
        message = " ".join(exc.format_message().split())
        console.print(Text.assemble(("error:", "red"), " ", f"{message} (see `{command} --help`)"), highlight=False,
                      soft_wrap=True)
        sys.exit(exc.exit_code)
    except Exception as exc:
        if isinstance(exc, _user_errors()):
            message = " ".join(str(exc).split())  # one line, whatever the message held
            console.print(Text.assemble(("error:", "red"), " ", message), highlight=False, soft_wrap=True)
            sys.exit(2)
        raise
    sys.exit(code if isinstance(code, int) else 0)
