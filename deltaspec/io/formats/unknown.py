"""Tensors a reader does not understand: an error when they sit in a module whose update it reads.

A tensor beside the factors of a module (a learned diagonal between B and A, a magnitude, a mask) may
change that module's ΔW; analysing the factors without it would give wrong singular values with only a
warning. So an unknown tensor inside a module we read stops the file with a one-line error naming it;
an unknown tensor of some *other* module (one we do not analyse at all) stays a "skipped" warning.
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional

from ...errors import FormatError


def owner(key: str, modules, name: Callable[[str], str] = lambda k: k) -> Optional[str]:
    """The module of `modules` that `key` (after `name`) sits in (`<module>.<anything>`), or None."""
    k = name(key)
    i = k.find(".")
    while i != -1:
        if k[:i] in modules:
            return k[:i]
        i = k.find(".", i + 1)
    return None


def refuse_unknown(path, keys: Iterable[str], modules, name: Callable[[str], str] = lambda k: k,
                   what: str = "factors") -> list[str]:
    """Raise FormatError for the first of `keys` inside one of `modules`; return the rest (other modules)."""
    modules = modules if isinstance(modules, (set, frozenset, dict)) else set(modules)
    rest = []
    for key in keys:
        mod = owner(key, modules, name)
        if mod is not None:
            raise unknown_error(path, key, mod, what)
        rest.append(key)
    return rest


def refuse_parts(path, mod: str, parts: dict, known: Iterable[str], what: str = "factors") -> None:
    """Raise FormatError when a module's parts hold one this reader does not use for its ΔW."""
    extra = sorted(set(parts) - set(known))
    if extra:
        raise unknown_error(path, parts[extra[0]], mod, what)


def unknown_error(path, key: str, mod: str, what: str = "factors") -> FormatError:
    return FormatError(f"{path}: tensor '{key}' sits beside the {what} of module '{mod}' and is not understood: "
                       "that module's ΔW is unknown without it, so the file is refused rather than analysed wrong")
