"""Two single-file Stable Diffusion / SDXL / Flux checkpoints: which tensors pair up, under which layer names
(model/sdsingle.py), and the refusals when the two are not the same model.

Tensors pair by key (Flux: after the optional `model.diffusion_model.` / `diffusion_model.` prefix, which
ComfyUI adds and BFL's files lack). The two must be the same family (SD 1.x/2.x, SDXL, Flux); a component
(UNet / transformer, a text encoder) in both must have the same weight names, else the files are different
models and the extraction stops; a component in one file only is left out with a warning (UNet-only files).
Parts no LoRA covers (VAE, EMA copies, OpenCLIP's embeddings and projection) are left out with a warning.
"""
from __future__ import annotations

from ...errors import FormatError
from ..model.names import summarize
from ..model.sdsingle import FAMILY_NAMES, family, names, strip_flux

__all__ = ["sd_pairs"]


def sd_pairs(ft, b0, path, base):
    """(family or None, [(layer key, ft key, base key, SDName)], warnings); family None: not SD files."""
    fam, fam_b = family(ft.keys()), family(b0.keys())
    if fam is None and fam_b is None:
        return None, [], []
    if fam != fam_b:
        def what(f, p):
            return (f"a single-file {FAMILY_NAMES[f]} checkpoint" if f else "not a single-file SD / SDXL / Flux "
                    "checkpoint (a diffusers folder or another model?)") + f" ({p})"
        raise FormatError(f"{path}: {what(fam, path)} vs base {what(fam_b, base)}; extract needs two checkpoints of "
                          "the same model in the same layout (two single files, or two diffusers component folders)")
    canon = strip_flux if fam == "flux" else (lambda k: k)
    n_ft, n_b = names(ft.keys(), fam), names(b0.keys(), fam)
    b_by = {canon(k): k for k in n_b}
    ft_by = {canon(k): k for k in n_ft}
    comp_ft, comp_b = _components(ft_by, n_ft), _components(b_by, n_b)
    warnings = []
    for c in sorted(set(comp_ft) | set(comp_b)):
        if c not in comp_b or c not in comp_ft:
            where, other = (path, base) if c in comp_ft else (base, path)
            warnings.append(f"{where}: has {c} weights and {other} has none: {c} left out")
        elif comp_ft[c] != comp_b[c]:
            diff = sorted(comp_ft[c] ^ comp_b[c])
            raise FormatError(f"{path}: its {c} weights differ in name from the base's ({len(diff)} of them, e.g. "
                              f"'{diff[0]}'): the base is another model (e.g. SDXL base vs refiner)")
    mapped = {k.rpartition(".")[0] for k in n_ft}
    other = [k for k in ft.keys() if k not in n_ft and k.rpartition(".")[0] not in mapped
             and len(ft.shape(k)) >= 2]  # biases and norms are no parts (and the full reader skips 1-D tensors)
    if other:
        warnings.append(f"{path}: {len(other)} tensor(s) of parts no LoRA covers, left out: {summarize(other)}")
    pairs = [(sd.name + ".weight", ft_by[c], b_by[c], sd) for c in ft_by if c in b_by
             for sd in n_ft[ft_by[c]]]
    return fam, pairs, warnings


def _components(by: dict, n: dict) -> dict:
    out: dict = {}
    for c, k in by.items():
        out.setdefault(n[k][0].name.partition(".")[0], set()).add(c)
    return out

