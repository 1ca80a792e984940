"""Inversion methods, one package each, behind the small interface in `base`.

The core (stylecli.core) knows nothing of them; the CLI finds them by name here.
"""

from __future__ import annotations

import importlib

from .base import InversionMethod, MethodUnavailable

METHOD_NAMES = ("e4e", "idinvert", "fwplus", "sfe", "samm")


def get_method(name: str):
    """The method package `name`, or MethodUnavailable with a one-line reason."""
    if name not in METHOD_NAMES:
        raise MethodUnavailable(f"unknown method {name!r}; choose from {', '.join(METHOD_NAMES)}")
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise
        raise MethodUnavailable(f"method {name!r} is not part of this build of stylecli yet "
                                f"(see the README's roadmap)") from None


__all__ = ["METHOD_NAMES", "get_method", "InversionMethod", "MethodUnavailable"]
