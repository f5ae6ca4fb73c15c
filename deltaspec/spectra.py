"""Singular values (and optionally vectors) of weight updates: exact, batched, on CPU or CUDA.

Two paths (DESIGN §1):
- factored updates ΔW = L @ R (LoRA, MultiLoRA, …) use the exact factored SVD: thin QR of L and Rᵀ,
  SVD of the small core R_L R_Rᵀ. A rank-16 update of a 4096×4096 layer costs a 16×16 SVD. The
  result holds min(R, d_out, d_in) values; all other singular values of ΔW are exactly zero.
- Kronecker updates ΔW = s·(W1 ⊗ W2) (LoKr) take the spectra of the two small factors:
  σ = all products |s|·σ_i(W1)·σ_j(W2), vectors u_i ⊗ u'_j and v_i ⊗ v'_j; ΔW is never formed.
- dense updates (full fine-tuning) are grouped by shape and solved as one batch per chunk, chunked
  so a batch stays under a memory budget: on CUDA by cuSOLVER (gesvda), on CPU by the float64 Gram
  eigensolver (`gram_svdvals`) for float32 values, by scipy's LAPACK gesdd for float64 values
  (`lapack_svdvals`: faster than torch's float64 svdvals) and by torch's LAPACK for vectors.

Pure torch; no file I/O. `spectra_of` takes an iterable of (key, update) so a reader can stream
layers one at a time and nothing here holds more than a chunk of dense matrices.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional

import numpy as np
import torch

from .errors import DeltaspecError, reason
from .updates import Dense, Kronecker, Update

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class Spectrum:
    """Singular values in descending order (float64 numpy), plus vectors when asked for.

    U: (d_out, k) left singular vectors, V: (d_in, k) right singular vectors, k = len(sigma).
    """

    sigma: np.ndarray
    U: Optional[torch.Tensor] = None
    V: Optional[torch.Tensor] = None
    # Truncated mode only (dense updates with top_k): certified upper bounds of σ_1..σ_k and the exact ‖ΔW‖_F.
    upper: Optional[np.ndarray] = None
    frobenius: Optional[float] = None

    def __repr__(self) -> str:
        top = f", σ_1={float(self.sigma[0]):.4g}" if len(self.sigma) else ""
        extra = (", vectors" if self.U is not None else "") + (", truncated" if self.upper is not None else "")
        return f"Spectrum({len(self.sigma)} values{top}{extra})"


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' → the current CUDA device when one is present, else CPU; 'cuda' without one is an error."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeltaspecError(f"device '{device}' requested but torch sees no CUDA device (torch {torch.__version__}); use device='cpu'")
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise DeltaspecError(f"device={device!r}: unknown device; expected 'auto', 'cpu', 'cuda' or 'cuda:N' "
                             f"({reason(e)})") from None


def pick_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """float32 (default) or float64; half precisions are refused (spectra need ≥ float32)."""
    if isinstance(dtype, torch.dtype):
        name = str(dtype).replace("torch.", "")
    else:
        name = dtype
    if name not in DTYPES:
        raise DeltaspecError(f"dtype={name!r}: expected 'float32' or 'float64' (half precisions are upcast, never used "
                             "for the SVD)")
    return DTYPES[name]


def factored_svd(L: torch.Tensor, R: torch.Tensor, vectors: bool = False):
    """Exact SVD of L @ R without forming it. L: (..., d, r), R: (..., r, k); batched over '...'.

    L = Q_L R_L, Rᵀ = Q_R R_R (thin QR), core C = R_L R_Rᵀ = U_c Σ V_cᵀ, so
    L @ R = (Q_L U_c) Σ (Q_R V_c)ᵀ. Returns sigma (..., m) with m = min(r, d, k), and U, V when asked.
    """
    if not vectors:  # σ needs only the R factors: mode="r" skips forming Q (same numbers, fewer flops)
        R_L = torch.linalg.qr(L, mode="r").R  # (min(d,r), r)
        R_R = torch.linalg.qr(R.transpose(-2, -1), mode="r").R  # (min(k,r), r)
        return torch.linalg.svdvals(R_L @ R_R.transpose(-2, -1)), None, None
    Q_L, R_L = torch.linalg.qr(L)  # Q_L: (d, min(d,r)), R_L: (min(d,r), r)
    Q_R, R_R = torch.linalg.qr(R.transpose(-2, -1))  # Q_R: (k, min(k,r)), R_R: (min(k,r), r)
    core = R_L @ R_R.transpose(-2, -1)  # (min(d,r), min(k,r))
    U_c, S, Vh_c = torch.linalg.svd(core, full_matrices=False)
    return S, Q_L @ U_c, Q_R @ Vh_c.transpose(-2, -1)


# cuSOLVER driver for dense SVDs on CUDA. Measured on an H100 (benchmarks/cuda_drivers.py, float32,
# error vs a float64 reference, relative to σ_1): torch's default (gesvdj) 1.0 s and 4.8e-4 — outside
# our 1e-4 tolerance —, gesvd 0.6–0.75 s and 1e-7, gesvda 0.12–0.13 s and 3e-8 at 4096×4096 and
# 11008×4096, flat and decaying spectra. So gesvda: 8× faster than the default and accurate.
CUDA_DRIVER = "gesvda"


def dense_svd(M: torch.Tensor, vectors: bool = False):
    """SVD of a (batch of) dense matrix: M (..., d, k) → sigma (..., min(d, k)) [, U, V].

    On CUDA: gesvda, on tall matrices (a wide one is transposed: same singular values, U and V swap),
    one large matrix at a time (cuSOLVER's batched gesvda workspace query fails for batches of
    LLaMA-sized matrices, and batching them gains nothing: 4×4096² batched 4.06 s vs 4.06 s looped),
    falling back to gesvd if cuSOLVER still refuses.
    """
    if not M.is_cuda:
        return _svd(M, vectors, None)
    wide = M.shape[-2] < M.shape[-1]
    T = M.mT if wide else M
    if T.ndim == 3 and T.shape[-1] * T.shape[-2] >= (1 << 20):
        parts = [_cuda_svd(T[i], vectors) for i in range(T.shape[0])]
        S = torch.stack([p[0] for p in parts])
        U = torch.stack([p[1] for p in parts]) if vectors else None
        V = torch.stack([p[2] for p in parts]) if vectors else None
    else:
        S, U, V = _cuda_svd(T, vectors)
    return (S, V, U) if wide else (S, U, V)


def gram_svdvals(M: torch.Tensor) -> torch.Tensor:
    """σ of M (..., m, n) as sqrt(eigvalsh(MᵀM)), the Gram matrix accumulated in float64.

    The CPU path for float32 spectra without vectors. At LLaMA shapes it is ~2.3x faster than
    LAPACK's float32 SVD (a symmetric n×n eigenproblem instead of an m×n bidiagonalisation) and more
    accurate: σ_i is off by ~u64·σ_1²/σ_i (u64 = 1.1e-16) instead of ~u32·σ_1 (u32 = 6e-8), i.e.
    less for every σ_i > ~1e-8·σ_1. Not used in float64 mode, where LAPACK's u64·σ_1 is better.
    """
    return gram_sigma(gram64(M), M.dtype).reshape(*M.shape[:-2], min(M.shape[-2:]))


def gram64(M: torch.Tensor, block_rows: int = 256) -> torch.Tensor:
    """G = MᵀM (or MMᵀ for a wide M: the smaller square), float64, accumulated over row blocks so the
    float64 copy of M is never made whole. M (..., m, n) → G (b, k, k), b the flattened batch."""
    if M.shape[-2] < M.shape[-1]:
        M = M.mT  # σ(M) = σ(Mᵀ)
    m, n = M.shape[-2:]
    X = M.reshape(-1, m, n)
    G = torch.zeros(X.shape[0], n, n, dtype=torch.float64, device=M.device)
    for r0 in range(0, m, block_rows):
        blk = X[:, r0:r0 + block_rows].double()
        G.baddbmm_(blk.mT, blk)  # in place: no n×n temporary
    return G


def gram_sigma(G: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Descending σ = sqrt(eigenvalues) of a batch of Gram matrices (b, k, k) → (b, k) in dtype."""
    lam = torch.linalg.eigvalsh(G)  # ascending; rounding can make the smallest slightly negative
    return lam.clamp_min(0).sqrt().flip(-1).to(dtype)


def lapack_svdvals(M: torch.Tensor) -> torch.Tensor:
    """σ of a CPU batch M (b, m, n), float64, by LAPACK's gesdd through scipy (values only).

    The CPU float64 path without vectors: with one thread, torch.linalg.svdvals in float64 took 317 s
    per 7B-shaped decoder layer against 242 s for numpy's LAPACK (issue 20); scipy's gesdd is as fast
    as numpy's (benchmarks/bench_full.py, row `float64`). The transpose of a C-ordered matrix is the
    Fortran-ordered one LAPACK wants (same σ), so no reordering copy is made; M is never modified."""
    import scipy.linalg

    X = M.detach().numpy()
    out = [scipy.linalg.svd(x.T, compute_uv=False, check_finite=False, lapack_driver="gesdd") for x in X]
    return torch.from_numpy(np.stack(out))


def _cuda_svd(M, vectors):
    try:
        return _svd(M, vectors, CUDA_DRIVER)
    except RuntimeError:  # torch.linalg.LinAlgError: cuSOLVER refused gesvda for this size
        return _svd(M, vectors, "gesvd")


def _svd(M, vectors, driver):
    if not vectors:
        return torch.linalg.svdvals(M, driver=driver), None, None
    U, S, Vh = torch.linalg.svd(M, full_matrices=False, driver=driver)
    return S, U, Vh.transpose(-2, -1)


def _chunk_budget(device: torch.device, budget_bytes: Optional[int]) -> int:
    """Bytes of dense input per batched call: small on CPU (batching buys little, memory is the
    limit), a fraction of free memory on CUDA (LAPACK-style SVD needs a few copies as workspace)."""
    if budget_bytes is not None:
        return budget_bytes
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(free // 8, 1 << 26)
    return 64 << 20


def _to_numpy(S: torch.Tensor) -> np.ndarray:
    return S.detach().to("cpu", torch.float64).numpy()


def _flush_dense(batch, device, dtype, vectors) -> Iterator[tuple[object, Spectrum]]:
    """Solve one chunk of same-shape dense updates. Empties `batch`, so that on the CPU float32 path
    the ΔWs are freed once their Gram is formed: the eigensolver then holds two Grams, not ΔW too."""
    keys = [k for k, _ in batch]
    M = torch.stack([m for _, m in batch]) if len(batch) > 1 else batch[0][1].unsqueeze(0)
    batch.clear()
    M = M.to(device, dtype)
    if not M.is_cuda and not vectors and dtype == torch.float64:
        S, U, V = lapack_svdvals(M), None, None
    elif M.is_cuda or vectors or dtype != torch.float32:
        S, U, V = dense_svd(M, vectors)
    else:
        G = gram64(M)
        del M
        S, U, V = gram_sigma(G, dtype), None, None
    S = S.cpu()
    for i, key in enumerate(keys):
        yield key, Spectrum(_to_numpy(S[i]), None if U is None else U[i].cpu(), None if V is None else V[i].cpu())


def _stage(M: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Move a dense update towards the device as soon as it arrives: on CUDA the copy is queued
    asynchronously from pinned memory, so it overlaps with the SVDs already queued on the GPU."""
    if device.type != "cuda":
        return M
    if M.device.type == "cpu":
        M = M.pin_memory()
    return M.to(device, non_blocking=True).to(dtype)


def _truncated_one(M: torch.Tensor, k: int, device, dtype) -> Spectrum:
    """Randomized top-k SVD of one dense update (deltaspec.truncated), with its certified bounds."""
    from .truncated import topk_svdvals

    t = topk_svdvals(M.to(device, dtype), k)
    return Spectrum(_to_numpy(t.sigma), upper=_to_numpy(t.upper), frobenius=float(t.frobenius))


class LayerOverflow(OverflowError):
    """A spectrum that overflows the compute dtype, with the key of the update it belongs to."""

    def __init__(self, key, message: str) -> None:
        super().__init__(message)
        self.key = key


def _factored_one(update: Update, device, dtype, vectors) -> Spectrum:
    L, R = update.factors()
    try:
        S, U, V = factored_svd(L.to(device, dtype), R.to(device, dtype), vectors)
    except torch.linalg.LinAlgError:  # finite factors whose product overflows dtype
        S = torch.full((1,), float("inf"))
    if not bool(torch.isfinite(S).all()):
        raise OverflowError(f"its singular values overflow {str(dtype).removeprefix('torch.')} (finite factors, "
                            "product beyond its range): the checkpoint's values are implausible")
    return Spectrum(_to_numpy(S), None if U is None else U.cpu(), None if V is None else V.cpu())


def _kronecker_one(update: Kronecker, device, dtype, vectors) -> Spectrum:
    """σ(s·W1⊗W2) = |s|·σ_i(W1)·σ_j(W2), sorted; U = U1⊗U2 and V = V1⊗V2 in the same order (the sign
    of s goes into U). Exact: the SVD of a Kronecker product is the Kronecker product of the SVDs."""
    s1 = spectrum(update.W1, device, dtype, vectors)
    s2 = spectrum(update.W2, device, dtype, vectors)
    prod = np.outer(s1.sigma, s2.sigma).ravel() * abs(float(update.scale))  # index i·m2 + j
    order = np.argsort(-prod, kind="stable")
    if not vectors:
        return Spectrum(prod[order])
    idx = torch.from_numpy(order)
    U = torch.kron(s1.U.contiguous(), s2.U.contiguous())[:, idx] * (-1.0 if update.scale < 0 else 1.0)
    V = torch.kron(s1.V.contiguous(), s2.V.contiguous())[:, idx]
    return Spectrum(prod[order], U, V)


def spectra_of(
    items: Iterable[tuple[object, Update]],
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "float32",
    vectors: bool = False,
    budget_bytes: Optional[int] = None,
    on_done: Optional[Callable[[object], None]] = None,
    top_k: Optional[int] = None,
) -> Iterator[tuple[object, Spectrum]]:
    """Yield (key, Spectrum) for every (key, update), in the order results become ready.

    Factored and Kronecker updates are solved at once (their SVDs are small). Dense ones are held per shape until a
    chunk reaches the memory budget, then solved as one batch; leftovers are flushed at the end.
    `on_done(key)` is called as each result is produced (for progress bars).
    `top_k`: dense updates get only their top-k singular values by randomized SVD (truncated mode,
    with certified bounds; see deltaspec/truncated.py); factored updates stay exact.
    """
    device, dtype = pick_device(device), pick_dtype(dtype)
    budget = _chunk_budget(device, budget_bytes)
    pending: dict[tuple, list] = {}
    pending_bytes: dict[tuple, int] = {}

    def emit(results):
        for key, spec in results:
            if on_done:
                on_done(key)
            yield key, spec

    for key, update in items:
        if isinstance(update, Kronecker):
            spec = _kronecker_one(update, device, dtype, vectors)
            del update
            yield from emit([(key, spec)])
            continue
        if not isinstance(update, Dense):
            try:
                spec = _factored_one(update, device, dtype, vectors)
            except OverflowError as e:
                raise LayerOverflow(key, str(e)) from None
            del update
            yield from emit([(key, spec)])
            continue
        M = update.delta
        del update  # from here on M (or the pending list) is the only owner of ΔW
        if top_k:
            spec = _truncated_one(M, top_k, device, dtype)
            del M
            yield from emit([(key, spec)])
            continue
        shape = tuple(M.shape)
        nbytes = M.numel() * torch.finfo(dtype).bits // 8
        pending.setdefault(shape, []).append((key, _stage(M, device, dtype)))
        del M  # so a flushed chunk is freed before the next update is loaded
        pending_bytes[shape] = pending_bytes.get(shape, 0) + nbytes
        if pending_bytes[shape] >= budget:
            pending_bytes.pop(shape)
            yield from emit(_flush_dense(pending.pop(shape), device, dtype, vectors))
    for shape in list(pending):
        yield from emit(_flush_dense(pending.pop(shape), device, dtype, vectors))


def spectrum(update: Update, device="auto", dtype="float32", vectors: bool = False) -> Spectrum:
    """Spectrum of a single update (convenience wrapper around `spectra_of`)."""
    return next(spectra_of([(0, update)], device, dtype, vectors))[1]
