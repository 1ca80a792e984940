"""Method options as flags: every option a registered method declares (`MethodSpec.options`) becomes a flag of the
commands that invert, with its help naming the methods that take it. A flag left out means the method's default;
a flag given to a method that does not declare it is a one-line error (`MethodSpec.check_options`)."""

from __future__ import annotations

import functools
import inspect
from typing import Callable, Iterable, Optional

import typer


def with_method_options(command: Callable, specs: Iterable, edits: bool = True) -> Callable:
    """`command` with one keyword flag per option declared by `specs` (MethodSpec), merged by name; the command
    receives them as a dict in its `method_options` parameter (None for each flag not given). `edits`: the command
    edits, so it takes the options of editing too (`Option.edits_only`)."""
    merged: dict[str, tuple] = {}
    for spec in specs:
        for option in spec.options:
            if option.edits_only and not edits:
                continue
            first, takers = merged.get(option.name, (option, []))
            assert first.type is option.type, f"option --{option.name} has two types across methods"
            merged[option.name] = (first, takers + [spec.name])
    signature = inspect.signature(command)
    assert "method_options" in signature.parameters, f"{command.__name__} takes no method_options"
    kept = [p for p in signature.parameters.values() if p.name != "method_options"]
    taken = {p.name for p in kept}
    added = []
    for name, (option, takers) in merged.items():
        assert name not in taken, f"method option --{name} clashes with a flag of {command.__name__}"
        bounds = " ".join(f"{label} {value}" for label, value in (("min", option.min), ("max", option.max))
                          if value is not None) or ("|".join(option.choices) if option.choices else "")
        help_text = f"{option.help} ({', '.join(takers)}; default {option.default}{'; ' + bounds if bounds else ''})"
        added.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[option.type],
                                       default=typer.Option(None, option.flag, help=help_text)))

    @functools.wraps(command)
    def wrapper(**values):
        options = {name: values.pop(name) for name in merged}
        return command(**values, method_options=options)

    wrapper.__signature__ = signature.replace(parameters=[
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in kept] + added)
    return wrapper
