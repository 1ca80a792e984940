"""The contract every inversion method meets.

A method is two things:

- a `MethodSpec`: its declaration, light to import (no torch). Name, one-line summary, the pack networks it needs,
  the options its inversion takes, how it trains (`stylecli.train.TrainingSpec`), how official checkpoints of it
  convert, whether it makes masks. The CLI builds its commands and flags from these; no command names a method.
- an implementation: a subclass of `Method`, imported only when the method is used. `spec.load(pack, device)`
  checks the pack, then builds it.

The registry of built methods is `stylecli.methods.METHODS`. A new method adds a package with a `spec.py` (its
`SPEC`) and its implementation, and one line in that map; `tests/test_methods.py` then checks it against this contract.
"""

from __future__ import annotations

import importlib
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar

if TYPE_CHECKING:  # the spec stays importable without torch; only the implementations need it
    import torch

    from ..packs import Pack
    from ..train.targets import TrainingSpec


class MethodUnavailable(Exception):
    """The method asked for does not exist, is not built, or its pack lacks what it needs."""


def resolve(reference: str) -> Any:
    """The object named by "package.module:attribute" inside stylecli (specs refer to code by name, so declaring a
    method imports nothing heavy)."""
    module_name, _, attribute = reference.partition(":")
    if not module_name.startswith("stylecli.") or not attribute:
        raise ValueError(f"{reference!r}: expected 'stylecli.module:attribute'")
    return getattr(importlib.import_module(module_name), attribute)


@dataclass
class Inversion:
    """A photo found in the generator: its latent code(s), the reconstruction they give, and any extras."""
    latents: dict[str, "torch.Tensor"]   # {"w_plus": [N, num_ws, w_dim]} at least; methods add feature codes
                                         # (e.g. SFE's F_k); all of them are saved in latent files
    image: "torch.Tensor | None"         # [N, 3, R, R] reconstruction in [-1, 1]; None when loaded from a file
    extras: dict[str, "torch.Tensor"] = field(default_factory=dict)  # per-image outputs that are not codes, e.g.
                                                                       # SAMM's invertibility "mask" [N, 1, R, R]

    def row(self, i: int) -> "Inversion":
        """Image i of the batch, as a batch of one."""
        return Inversion(latents={k: v[i:i + 1] for k, v in self.latents.items()},
                         image=None if self.image is None else self.image[i:i + 1],
                         extras={k: v[i:i + 1] for k, v in self.extras.items()})


@dataclass(frozen=True)
class Option:
    """One option of a method's inversion (e.g. optimisation steps). The CLI offers it as --NAME on the commands
    that invert; a user who passes it to a method that does not declare it gets a one-line error."""
    name: str                      # python identifier; the flag is --name-with-dashes
    type: type                     # int, float, bool or str
    default: Any                   # the method's default (used when the flag is not given)
    help: str                      # one line for --help
    min: float | None = None       # inclusive bounds for numbers
    max: float | None = None
    choices: tuple[str, ...] | None = None  # the values a str option takes (None: any)
    edits_only: bool = False       # an option of editing only: offered by `edit`, not by `invert` or `blend`

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def check(self, value: Any) -> Any:
        """`value` converted to the option's type and checked against its bounds; ValueError (one line) if not."""
        try:
            value = self.type(value)
        except (TypeError, ValueError):
            raise ValueError(f"{self.flag}: expected {self.type.__name__}, got {value!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{self.flag}: must be a finite number, got {value}")
        if self.min is not None and value < self.min or self.max is not None and value > self.max:
            raise ValueError(f"{self.flag}: {value} is outside [{self.min}, {self.max}]")
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{self.flag}: {value!r} is not one of {', '.join(self.choices)}")
        return value


@dataclass(frozen=True)
class ConverterSpec:
    """How official checkpoints of a method become pack networks (`stylecli weights convert`)."""
    detect: str    # "stylecli.module:function": path -> bool, True for a checkpoint of this method (reads no code)
    convert: str   # "stylecli.module:function": path -> ({pack network name: nn.Module}, {name: ConversionReport})
    formats: str   # what it reads, for --help (e.g. "e4e's e4e_ffhq_encode.pt")
    into_pack: str | None = None  # "stylecli.module:function": (path, pack, dtype) -> None, for files without a
                                  # generator that need more than their networks written into an existing pack
                                  # (F/W+ fits its P-space whitening on the pack's mapping network); None: written as is


@dataclass(frozen=True)
class MethodSpec:
    name: str                                  # what --method takes
    summary: str                               # one line for --help and `stylecli methods`
    implementation: str                        # "stylecli.module:Class", a `Method` subclass
    networks: tuple[str, ...] = ()             # pack networks it needs besides the generator
    options: tuple[Option, ...] = ()           # options of its inversion
    training: "TrainingSpec | None" = None     # how `stylecli train NAME` trains its networks
    converter: ConverterSpec | None = None     # how its official checkpoints convert
    makes_masks: bool = False                  # its Inversion.extras holds "mask" (what `stylecli blend` needs)

    def check_options(self, given: dict[str, Any]) -> dict[str, Any]:
        """The method's options: its defaults updated with `given` (None = not given), each checked."""
        declared = {o.name: o for o in self.options}
        unknown = [name for name, value in given.items() if value is not None and name not in declared]
        if unknown:
            flags = ", ".join("--" + n.replace("_", "-") for n in unknown)
            raise ValueError(f"{flags}: not an option of method {self.name!r}"
                             + (f" (it takes {', '.join(o.flag for o in self.options)})" if self.options else
                                " (it takes none)"))
        return {name: o.check(given[name]) if given.get(name) is not None else o.default
                for name, o in declared.items()}

    def missing_networks(self, pack: "Pack") -> list[str]:
        return [n for n in ("generator", *self.networks) if not pack.has(n)]

    def load(self, pack: "Pack", device: "str | torch.device" = "cpu", **options) -> "Method":
        """The method on `pack`, built on `device` with `options` (checked); MethodUnavailable names what the pack
        lacks, with the command that trains it."""
        missing = self.missing_networks(pack)
        if missing:
            hint = ""
            if self.training is not None and "generator" not in missing:
                hint = f"; train it with `stylecli train {self.name} --model {_model_argument(pack)}`"
            raise MethodUnavailable(f"pack {pack.name!r} has no {', '.join(missing)} for method {self.name!r}{hint}")
        try:
            checked = self.check_options(options)
        except ValueError as exc:
            raise MethodUnavailable(str(exc)) from None
        cls = resolve(self.implementation)
        method = cls.load(pack, device, **checked)
        assert isinstance(method, Method) and method.name == self.name, f"{self.implementation} breaks the contract"
        return method


def _model_argument(pack: "Pack") -> str:
    """How --model names `pack` for the user: its name where that finds this very pack, else its folder (a pack
    opened by path is usually not on the search path)."""
    import shlex

    from ..packs import Pack, PackError
    try:
        if Pack.open(pack.name).root.resolve() == pack.root.resolve():
            return shlex.quote(pack.name)
    except PackError:
        pass
    return shlex.quote(str(pack.root))


class Method(ABC):
    """An inversion method, loaded on one pack and one device.

    Images go in as [N, 3, R, R] in [-1, 1], aligned to the pack's domain, R = `resolution`, on any device; the
    method computes on its own `device` and returns tensors on the images' device.
    """

    name: ClassVar[str]            # equals its spec's name
    resolution: int                # the size it inverts (the generator's)
    device: "torch.device"         # where it computes
    # Set by a caller that shows progress; a method that optimises per image calls it after every step with
    # (step, steps) of the images it is working on, so a long inversion shows more than a still bar.
    on_step: "Callable[[int, int], None] | None" = None

    @classmethod
    @abstractmethod
    def load(cls, pack: "Pack", device: "str | torch.device" = "cpu", **options) -> "Method":
        """Build the method from `pack`'s networks; `options` are those its spec declares, already checked."""

    @abstractmethod
    def invert(self, images: "torch.Tensor") -> Inversion:
        """images [N, 3, R, R] -> latents (at least "w_plus" [N, num_ws, w_dim]), reconstruction, extras."""

    @abstractmethod
    def edit(self, inversion: Inversion, direction: "torch.Tensor", strength: float) -> "torch.Tensor":
        """The edited image [N, 3, R, R] for a W+ direction [num_ws, w_dim] (or [w_dim]) times `strength`, or a code
        edit (a learned direction, several edits) at `strength`, on the inversion's device: a method moves its codes
        by `stylecli.edits.edit_step(codes, direction, strength)`, which serves both. `inversion` may come from a
        latent file (image None)."""

    def edit_inversion(self, inversion: Inversion, direction: "torch.Tensor", strength: float) -> Inversion:
        """The edit with what the edited pass makes besides the image: the moved codes, the image, and for a method
        with masks the mask of the edited pass (extras["mask"]). By default: `edit`'s image and no extras."""
        from ..edits import edit_step

        image = self.edit(inversion, direction, strength)
        w = inversion.latents["w_plus"]
        moved = w + edit_step(w, direction, strength)
        return Inversion(latents={**inversion.latents, "w_plus": moved}, image=image)

