"""`analyze`: named updates → spectra → metrics, streamed so only a few layers are ever in memory.

On a GPU, loading dense updates (disk, upcasting, subtraction) runs one layer ahead in a background
thread while the SVD of the current layers runs, so I/O and compute overlap; on a CPU, loading is
serial, so at most one ΔW is being loaded or solved at a time. Under `torchrun` (torch.distributed
initialised) each rank analyses its share of the layers and rank 0 gathers one result (see
distributed.py).
"""
from __future__ import annotations

import contextvars
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch

from . import metrics as M
from .formatting import short_names
from .progress import Progress
from .results import AnalysisResult, LayerResult
from .errors import DeltaspecError, NonFiniteError
from .layernames import summarize
from .io.files.tensors import float64_reads
from .spectra import LayerOverflow, pick_device, pick_dtype, spectra_of
from .updates import LayerUpdate, Updates


@dataclass
class AnalysisSettings:
    """How spectra and metrics are computed (what `analyze` records in its output)."""

    device: str = "auto"
    dtype: str = "float32"
    vectors: bool = False
    energy_k: Sequence[int] = M.DEFAULT_TOP_K  # k of the top{k}_energy metrics
    n_ref: Union[str, int] = "shape"  # "shape": min(d_out, d_in); "rank": the update's rank bound; or an int
    svd_top_k: Optional[int] = None  # truncated mode for dense updates (randomized top-k SVD)

    def n_ref_for(self, u: LayerUpdate) -> int:
        if self.n_ref == "shape":
            return min(u.shape)
        if self.n_ref == "rank":
            return u.rank_bound
        return int(self.n_ref)


def _loaded(layers: Sequence[LayerUpdate], device: torch.device,
            on_start=None) -> Iterator[tuple[int, object]]:
    """Yield (index, loaded update). Dense updates headed for a GPU are loaded one layer ahead in a
    thread, so disk reads and subtraction overlap the (fast) GPU SVD. Otherwise loading is serial:
    adapter loads are tiny (a thread only adds hand-offs), and on a CPU loading a dense layer costs
    ~1% of its SVD, while a prefetched layer would hold another ΔW in memory."""
    if device.type == "cuda" and any(u.kind == "dense" for u in layers):
        yield from _prefetched(layers)
        return
    for i, u in enumerate(layers):
        if on_start:
            on_start(i)
        yield i, u.load()  # no local name: the previous update is not kept alive while loading the next


def _prefetched(layers: Sequence[LayerUpdate]) -> Iterator[tuple[int, object]]:
    """Yield (index, loaded update), loading the next layer in a thread while the caller computes."""
    if not layers:
        return
    ctx = contextvars.copy_context()  # the loading thread reads as the caller does (float64_reads)
    with ThreadPoolExecutor(max_workers=1) as pool:
        nxt = pool.submit(ctx.run, layers[0].load)
        for i in range(len(layers)):
            update = nxt.result()
            if i + 1 < len(layers):
                nxt = pool.submit(contextvars.copy_context().run, layers[i + 1].load)
            yield i, update


def _announced(items, on_next):
    for i, update in items:
        on_next(i)
        yield i, update


def _named_errors(spectra, layers):
    """The spectra, with an overflow inside one layer's SVD raised as a NonFiniteError naming it."""
    try:
        yield from spectra
    except LayerOverflow as e:
        u = layers[e.key]
        raise NonFiniteError(f"{u.source}: '{u.name}': {e}") from None


def analyze_layers(layers: Sequence[LayerUpdate], settings: AnalysisSettings,
                   progress: Optional[Progress] = None) -> list[LayerResult]:
    """Spectra and metrics of `layers`, returned in the same order."""
    dtype = pick_dtype(settings.dtype)
    eps = torch.finfo(dtype).eps
    out: list[Optional[LayerResult]] = [None] * len(layers)
    device = pick_device(settings.device)
    items = _loaded(layers, device)
    done = None
    if progress is not None and progress.enabled:
        short = short_names([u.name for u in layers])
        items = _announced(_loaded(layers, device, lambda i: progress.status(f"reading {short[layers[i].name]}")),
                           lambda i: progress.status(f"SVD {short[layers[i].name]}"))
        done = lambda i: progress.update(1)
    spectra = spectra_of(items, device, dtype, settings.vectors, on_done=done, top_k=settings.svd_top_k)
    with float64_reads(dtype == torch.float64):
        out = _results(_named_errors(spectra, layers), layers, settings, out, eps)
        if any(u.initial is not None for u in layers):
            _learned_vs_initial(out, layers, settings, eps)
    return out


def _learned_vs_initial(out: list, layers: Sequence[LayerUpdate], settings: AnalysisSettings, eps: float) -> None:
    """Layers with initial factors (`load(…, initial=)`): add init_share, init_cos, moveA, moveB and the
    learned part's spectrum and metrics (`learned_<metric>`, same n_ref) to their results (init_split.py)."""
    from .init_split import init_split, learned_part

    todo = [i for i, u in enumerate(layers) if u.initial is not None]
    parts = [LayerUpdate(layers[i].name, layers[i].shape, "lowrank", min(2 * layers[i].rank_bound, *layers[i].shape),
                         lambda u=layers[i]: _paired(u, learned_part), layers[i].source) for i in todo]
    spectra = spectra_of(_loaded(parts, torch.device("cpu")), pick_device(settings.device), pick_dtype(settings.dtype))
    for k, spec in _named_errors(spectra, parts):
        i = todo[k]
        r, u = out[i], layers[i]
        learned = M.all_metrics(spec.sigma, u.shape, eps, r.n_ref, settings.energy_k)
        r.metrics.update(_paired(u, init_split).as_dict(), **{f"learned_{m}": v for m, v in learned.items()})
        r.learned_singular_values = spec.sigma


def _paired(u: LayerUpdate, fn):
    """fn(trained update, initial update); factors that do not fit are another run's (FormatError)."""
    from .errors import FormatError

    try:
        return fn(u.load(), u.initial())
    except ValueError as e:
        raise FormatError(f"{u.meta.get('initial', 'initial=')}: '{u.name}': {e}") from None


def _results(spectra, layers, settings, out, eps) -> list:
    for i, spec in spectra:
        u = layers[i]
        n_ref = settings.n_ref_for(u)
        if spec.frobenius is None:
            metrics = M.all_metrics(spec.sigma, u.shape, eps, n_ref, settings.energy_k)
        else:
            metrics = M.truncated_metrics(spec.sigma, spec.frobenius, len(spec.sigma), settings.energy_k)
        out[i] = LayerResult(
            name=u.name, module=u.module, layer=u.layer, shape=tuple(u.shape), kind=u.kind, rank=u.rank_bound,
            n_ref=n_ref, singular_values=spec.sigma, metrics=metrics, U=spec.U, V=spec.V, upper=spec.upper)
    return out


def check_n_ref(n_ref) -> Union[str, int]:
    """'shape', 'rank' or an integer >= 2 (also as a string, as the CLI passes it)."""
    if n_ref in ("shape", "rank"):
        return n_ref
    try:
        n = int(n_ref)
        ok = n >= 2 and not isinstance(n_ref, bool) and float(n_ref) == n
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise DeltaspecError(f"n_ref={n_ref!r}: expected 'shape' (min(d_out, d_in)), 'rank' (the update's rank "
                             "bound) or an integer >= 2")
    return n


def check_ks(ks, name: str) -> tuple[int, ...]:
    """Positive integers (the k of top{k}_energy, or svd_top_k), also as strings."""
    items = [ks] if isinstance(ks, (int, float, str)) else ks
    try:
        items = list(items)
        out = tuple(int(k) for k in items)
        ok = bool(out) and all(k >= 1 and not isinstance(x, bool) and float(x) == k for x, k in zip(items, out))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise DeltaspecError(f"{name}={ks!r}: expected positive integers, e.g. {name}=(1, 4, 16)"
                             if name == "energy_k" else f"{name}={ks!r}: expected a positive integer")
    return out


def analyze(
    updates: Union[Updates, str, os.PathLike],
    *,
    base: Optional[str] = None,
    device: str = "auto",
    dtype: str = "float32",
    vectors: bool = False,
    energy_k: Iterable[int] = M.DEFAULT_TOP_K,
    n_ref: Union[str, int] = "shape",
    modules: Optional[Sequence[str]] = None,
    layers: Optional[Sequence[int]] = None,
    progress: Union[bool, str, None] = None,
    svd_top_k: Optional[int] = None,
    top_k: Optional[Iterable[int]] = None,
) -> AnalysisResult:
    """Singular values and balance metrics of every layer's update.

    `updates` is what `deltaspec.load` returns, or a checkpoint path (then `base` is passed to load).
    device: "auto" (CUDA when present) | "cpu" | "cuda"; dtype: "float32" | "float64".
    vectors=True keeps singular vectors (LayerResult.U/V) for subspace analysis.
    energy_k: the k of the `top{k}_energy` metrics (default 1, 4, 16); `top_k` is its old name.
    n_ref: reference size of `normalized_entropy` ("shape" = min(d_out, d_in), "rank", or an int).
    progress: None shows a bar on stderr only when it is a terminal, True always, False never; a
    string shows it as None does, labelled with that name (which input, when there are several).
    svd_top_k: truncated mode: dense updates get only their top-k singular values by randomized SVD,
    each with a certified upper bound (LayerResult.upper); metrics needing the full spectrum are NaN.
    """
    from . import distributed

    if top_k is not None:  # the old name of energy_k
        energy_k = top_k
    settings = AnalysisSettings(device, dtype, vectors, check_ks(energy_k, "energy_k"), check_n_ref(n_ref),
                                None if svd_top_k is None else check_ks(svd_top_k, "svd_top_k")[0])
    pick_device(device)  # fail early on a bad device or dtype, before any reading
    pick_dtype(dtype)
    if not isinstance(updates, Updates):
        from .io import load

        updates = load(updates, base=base)
    elif base is not None:
        raise DeltaspecError("base= is for a checkpoint path; these updates were already loaded: "
                             "pass base= to deltaspec.load instead")
    if modules or layers is not None:
        updates = updates.select(modules, layers)
    todo = list(updates)
    mine = distributed.my_share(todo)
    label = progress if isinstance(progress, str) else ""
    bar = Progress(len(mine), "layers", enabled=None if label or progress is None else bool(progress), label=label)
    try:
        results = analyze_layers(mine, settings, bar)
    finally:
        bar.close()
    results = distributed.gather(results, todo)
    zero = [r.name for r in results if r.upper is None and not np.any(r.singular_values > 0)]
    extra = [f"{updates.path}: {len(zero)} layer(s) have ΔW = 0 (every singular value is 0; an adapter saved "
             f"before training, or α = 0?), their ratio metrics are undefined: {summarize(zero)}"] if zero else []
    resolved = str(pick_device(device)) if device == "auto" else device
    return AnalysisResult(
        layers=results,
        source={"path": updates.path, "format": updates.format, "base": updates.base},
        settings={"dtype": settings.dtype, "device": resolved, "n_ref": settings.n_ref, "energy_k": list(settings.energy_k),
                  "vectors": vectors, "svd_top_k": svd_top_k},
        warnings=list(updates.warnings) + extra,
        notes=list(updates.notes),
    )
