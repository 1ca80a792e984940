"""Inversion methods, one package each, behind the contract in `base`.

`METHODS` is the one map of built methods: the CLI's --method choices, `stylecli train` subcommands and the
converters of `weights convert` all come from it. The core (stylecli.core) knows nothing of methods.
"""

from __future__ import annotations

from types import MappingProxyType

from .base import Inversion, Method, MethodSpec, MethodUnavailable, Option
from .e4e.spec import SPEC as _E4E
from .fwplus.spec import SPEC as _FWPLUS
from .idinvert.spec import SPEC as _IDINVERT
from .samm.spec import SPEC as _SAMM
from .sfe.spec import SPEC as _SFE

METHODS: MappingProxyType[str, MethodSpec] = MappingProxyType(
    {spec.name: spec for spec in (_E4E, _SAMM, _SFE, _IDINVERT, _FWPLUS)})

DEFAULT_METHOD = "e4e"   # what --method is when not given

def get_method(name: str) -> MethodSpec:
    """The spec of method `name`, or MethodUnavailable with a one-line reason."""
    if name in METHODS:
        return METHODS[name]
    raise MethodUnavailable(f"unknown method {name!r}; choose from {', '.join(METHODS)}")


def method_help() -> str:
    """--method's help: the methods with their summaries."""
    return "Inversion method. " + "; ".join(f"{name}: {spec.summary}" for name, spec in METHODS.items())


__all__ = ["METHODS", "DEFAULT_METHOD", "method_help", "get_method", "Inversion", "Method", "MethodSpec", "MethodUnavailable", "Option"]
