"""Choosing layers by module type and layer index, where a name that matches nothing is an error.

`select(items, modules, layers)` works on anything with `.module` and `.layer` (LayerUpdate,
LayerResult). A typo such as `modules=["kproj"]` used to select 0 layers without a word; now it
raises a DeltaspecError that lists the module types (or layer indices) there are.
"""
from __future__ import annotations

from typing import Optional, Sequence

from .errors import DeltaspecError
from .updates import module_matches


def ranges(ints: Sequence[int]) -> str:
    """[0, 1, 2, 3, 8] → '0-3, 8'."""
    out, ints = [], sorted(set(ints))
    for i in ints:
        if out and i == out[-1][1] + 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in out) or "none"


def select(items: Sequence, modules: Optional[Sequence[str]] = None, layers: Optional[Sequence[int]] = None,
           where: str = "") -> list:
    """The items whose module type is in `modules` and layer index in `layers` (None: all).

    Every requested module type and layer index must exist (among the chosen module types);
    otherwise a DeltaspecError names the missing ones and lists what there is. `where` prefixes
    the message (e.g. the checkpoint path).
    """
    if isinstance(modules, str):
        modules = [modules]
    where = f"{where}: " if where else ""
    have = list(dict.fromkeys(x.module for x in items))
    if modules:
        unknown = [m for m in modules if not any(module_matches(x.name, x.module, m) for x in items)]
        if unknown:
            raise DeltaspecError(f"{where}modules={unknown}: no such module type; available: "
                                 f"{', '.join(have) or 'none'}")
    chosen = [x for x in items if not modules or any(module_matches(x.name, x.module, m) for m in modules)]
    if layers is not None:
        present = {x.layer for x in chosen if x.layer is not None}
        missing = [i for i in layers if i not in present]
        if missing:
            raise DeltaspecError(f"{where}layers={missing}: no such layer index"
                                 + (f" for modules={list(modules)}" if modules else "") + f"; available: {ranges(present)}")
        chosen = [x for x in chosen if x.layer in layers]
    return chosen
