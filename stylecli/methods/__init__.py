"""Inversion methods, one package each, behind the contract in `base`.

`METHODS` is the one map of built methods: the CLI's --method choices, `stylecli train` subcommands and the
converters of `weights convert` all come from it. The core (stylecli.core) knows nothing of methods.
"""

from __future__ import annotations

from types import MappingProxyType

from .base import Inversion, Method, MethodSpec, MethodUnavailable, Option
from .e4e.spec import SPEC as _E4E
from .samm.spec import SPEC as _SAMM

METHODS: MappingProxyType[str, MethodSpec] = MappingProxyType({spec.name: spec for spec in (_E4E, _SAMM)})

DEFAULT_METHOD = "e4e"   # what --method is when not given

# Methods planned but not built yet (each has its issue): --method NAME says so instead of "unknown".
PLANNED = ("sfe", "idinvert", "fwplus")


def get_method(name: str) -> MethodSpec:
    """The spec of method `name`, or MethodUnavailable with a one-line reason."""
    if name in METHODS:
        return METHODS[name]
    if name in PLANNED:
        raise MethodUnavailable(f"method {name!r} is not part of this build of stylecli yet (built: "
                                f"{', '.join(METHODS)}; see the README's roadmap)")
    raise MethodUnavailable(f"unknown method {name!r}; choose from {', '.join(METHODS)}")


def method_help() -> str:
    """--method's help: the built methods with their summaries, then the planned ones."""
    built = "; ".join(f"{name}: {spec.summary}" for name, spec in METHODS.items())
    return f"Inversion method. {built} (planned: {', '.join(PLANNED)})"


__all__ = ["METHODS", "PLANNED", "DEFAULT_METHOD", "method_help", "get_method", "Inversion", "Method", "MethodSpec", "MethodUnavailable", "Option"]
