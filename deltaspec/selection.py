"""Choosing layers by module type and layer index, where a name that matches nothing is an error.

`select(items, modules, layers)` works on anything with `.module` and `.layer` (LayerUpdate,
LayerResult). A typo such as `modules=["kproj"]` used to select 0 layers without a word; now it
raises a DeltaspecError that lists the module types (or layer indices) there are.
"""
from __future__ import annotations

from typing import Optional, Sequence

from .errors import DeltaspecError
from .layernames import module_matches


def ranges(ints: Sequence[int]) -> str:
    """[0, 1, 2, 3, 8] → '0-3, 8'."""
    out, ints = [], sorted(set(ints))
    for i in ints:
        if out and i == out[-1][1] + 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in out) or "none"


def layer_spec(text: str) -> list[int]:
    """'0-3,8' → [0, 1, 2, 3, 8] (empty parts skipped); ValueError saying what is wrong. The one parser
    of layer ranges, for --layers and layers= alike."""
    out: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        lo, sep, hi = (x.strip() for x in part.partition("-"))
        if not (lo.isdigit() and (not sep or hi.isdigit())):
            raise ValueError(f"expected layer indices like '0-3,8', got {text!r}")
        if sep and int(hi) < int(lo):
            raise ValueError(f"'{part}' is an empty range (did you mean {hi}-{lo}?)")
        out += list(range(int(lo), int(hi) + 1)) if sep else [int(lo)]
    return out


def as_layers(layers) -> Optional[list[int]]:
    """layers= as a list of ints: an int, a list, or the CLI's "0-3,8"; anything else is an error."""
    if layers is None:
        return None
    if isinstance(layers, str):
        try:
            return layer_spec(layers)
        except ValueError as e:
            raise DeltaspecError(f"layers={layers!r}: {e} (or pass an int or a list of ints)") from None
    if isinstance(layers, int) and not isinstance(layers, bool):
        return [layers]
    try:
        out = [int(x) for x in layers if not isinstance(x, bool) and int(x) == x]
    except (TypeError, ValueError):
        out = None
    if out is None or len(out) != len(list(layers)):
        raise DeltaspecError(f"layers={layers!r}: use an int, a list of ints or a string like '0-3,8'")
    return out


def select(items: Sequence, modules: Optional[Sequence[str]] = None, layers: Optional[Sequence[int]] = None,
           where: str = "") -> list:
    """The items whose module type is in `modules` and layer index in `layers` (None: all).

    Every requested module type and layer index must exist (among the chosen module types);
    otherwise a DeltaspecError names the missing ones and lists what there is. `where` prefixes
    the message (e.g. the checkpoint path).
    """
    if isinstance(modules, str):
        modules = [modules]
    layers = as_layers(layers)
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
