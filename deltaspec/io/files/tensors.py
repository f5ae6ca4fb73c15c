"""Safe, lazy tensor reading: headers up front, one tensor at a time on demand.

`TensorFile` is one checkpoint file: the header (names, shapes, dtypes) is read when it is opened,
tensors only by `get(key)`, which upcasts to float32 (float64 stays) and checks for NaN/Inf.
Safetensors tensors are read from their byte range (offsets from the header parsed once) into a fresh
tensor: nothing stays memory-mapped, so the pages of tensors already analysed do not stay resident (a
kept mmap of a 1 GB shard grew RSS by the whole shard). Adapter files (`keep_open=True`) keep one
open file per thread for their many tiny tensors. Torch pickles
(`.bin`, `.pt`) are loaded once with `weights_only=True, mmap=True`.
`TensorStore` is a model's tensors over one or several files (sharded checkpoints).
Every read error becomes a one-line `CorruptFileError` naming the file.
torch is imported inside the functions that read tensors: safetensors headers are parsed in pure
Python (`st_header`), so `deltaspec info` and format detection never import it.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
import threading
from pathlib import Path
from typing import Iterable, Optional

from ...errors import CorruptFileError, FormatError, NonFiniteError, reason as _reason
from .model_files import model_files, pipeline_hint
from .st_header import DTYPES, read_header
from .validate import model_config, read_json  # noqa: F401 (read_json re-exported: readers import it from here)

DTYPES_BYTES = {name: size for name, size in DTYPES.values()}  # torch dtype name → bytes per element
FLOAT_DTYPES = {"float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2"}


_FLOAT64 = contextvars.ContextVar("deltaspec_float64_reads", default=False)


@contextlib.contextmanager
def float64_reads(on: bool = True):
    """Within: tensors are read as float64 (an analysis with dtype="float64"), so W_ft − W0 of float32
    checkpoints is formed exactly instead of rounded to float32 first."""
    token = _FLOAT64.set(bool(on))
    try:
        yield
    finally:
        _FLOAT64.reset(token)


def compute_dtype(stored):
    """The dtype arithmetic on a stored tensor happens in: float64 stays (and everything is float64
    inside `float64_reads`), everything else float32."""
    import torch

    return torch.float64 if stored == torch.float64 or _FLOAT64.get() else torch.float32


def upcast(t):
    """float32 copy of a stored tensor (float64 stays float64); done before any arithmetic."""
    return t.to(compute_dtype(t.dtype))


def as_float(t, file: str, key: str):
    """upcast(t) checked finite; an integer, bool or complex tensor where a weight belongs (packed
    quantized data, a corrupt export) is a FormatError naming it, never numbers."""
    if not t.is_floating_point():
        raise FormatError(f"{file}: tensor '{key}' is {str(t.dtype).removeprefix('torch.')}, not a floating-point "
                          "weight (quantized or packed data?): deltaspec cannot read it as an update")
    return check_finite(upcast(t), file, key)


def check_finite(t, file: str, key: str):
    """t, or NonFiniteError naming the file and tensor. NaN/Inf anywhere makes the sum non-finite, and a
    sum is ~4x cheaper than an elementwise test; only a non-finite sum (NaN/Inf, or a finite tensor
    whose sum overflows) pays for the elementwise check."""
    if t.numel() and math.isfinite(t.sum().item()):
        return t
    if not bool(t.isfinite().all()):
        raise NonFiniteError(f"{file}: tensor '{key}' contains NaN/Inf values")
    return t


class TensorFile:
    """One checkpoint file. `entries`: key → (shape, dtype name), in file order."""

    path: str
    entries: dict[str, tuple[tuple[int, ...], str]]
    metadata: dict

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def keys(self) -> list[str]:
        return list(self.entries)

    def shape(self, key: str) -> tuple[int, ...]:
        return self.entries[key][0]

    def dtype(self, key: str) -> str:
        return self.entries[key][1]

    def raw(self, key: str):  # pragma: no cover - abstract
        raise NotImplementedError

    def get(self, key: str):
        """The tensor as float32 (or float64), checked finite."""
        return as_float(self.raw(key), self.path, key)

    def raw_slice(self, key: str, index):
        """raw(key)[index], reading only that part where the format allows (safetensors slices)."""
        return self.raw(key)[index]

    def scalar(self, key: str) -> float:
        return float(self.raw(key).reshape(-1)[0])


class SafetensorsFile(TensorFile):
    def __init__(self, path, keep_open: bool = False) -> None:
        self.path = str(path)
        self._keep_open, self._local, self._handles = keep_open, threading.local(), []
        self.entries, self.metadata, self._offsets = read_header(self.path)  # pure Python: no torch, no mmap yet

    def scalar(self, key: str) -> float:
        """A one-element tensor's value, read without torch (e.g. kohya's alpha)."""
        from .st_header import read_scalar

        try:
            return read_scalar(self.path, self.dtype(key), self._offsets[key])
        except (OSError, ValueError) as e:
            raise CorruptFileError(f"{self.path}: cannot read tensor '{key}' ({_reason(e)})") from None

    def raw(self, key: str):
        return self._read(key, None)

    def raw_slice(self, key: str, index):
        return self._read(key, index)

    def _read(self, key: str, index):
        """Tensor `key` (or `[index]` of it) read straight from its byte range, one read per tensor.
        safe_open parses the whole header on every open, which made a file of n tensors cost O(n²)
        (10,000 tensors: 321 s); an int index on the first axis (one expert of a stack) reads only
        its rows. Sub-byte dtypes and other indices go through safe_open."""
        import torch

        shape, dtype = self.entries[key]
        begin, end = self._offsets[key]
        tdtype = getattr(torch, dtype, None)
        if not isinstance(tdtype, torch.dtype) or DTYPES_BYTES.get(dtype) is None or \
                (index is not None and not (isinstance(index, int) and shape and 0 <= index < shape[0])):
            return self._safe_open(key, index)
        if index is not None:
            row = (end - begin) // shape[0]
            begin, end, shape = begin + index * row, begin + (index + 1) * row, shape[1:]
        buf = torch.empty(end - begin, dtype=torch.uint8)
        try:
            f = self._handle()
            try:
                f.seek(begin)
                got = f.readinto(memoryview(buf.numpy())) if end > begin else 0
            finally:
                if not self._keep_open:
                    f.close()
        except OSError as e:
            raise CorruptFileError(f"{self.path}: cannot read tensor '{key}' ({_reason(e)})") from None
        if got != end - begin:
            raise CorruptFileError(f"{self.path}: tensor '{key}' is cut short ({got} of {end - begin} bytes); "
                                   "the file may be truncated")
        return buf.view(tdtype).reshape(shape)

    def _handle(self):
        """An open binary file: one per thread for adapter files (many tiny tensors), else a new one."""
        if not self._keep_open:
            return open(self.path, "rb")
        f = getattr(self._local, "handle", None)
        if f is None:
            f = self._local.handle = open(self.path, "rb")
            self._handles.append(f)
        return f

    def close(self) -> None:
        """Close the files kept open for this adapter (also done when it is garbage-collected)."""
        for f in self._handles:
            f.close()
        self._handles.clear()

    __del__ = close

    def _safe_open(self, key: str, index):
        from safetensors import safe_open

        try:
            with safe_open(self.path, "pt") as f:
                return f.get_tensor(key) if index is None else f.get_slice(key)[index]
        except Exception as e:
            raise CorruptFileError(f"{self.path}: cannot read tensor '{key}' ({_reason(e)}); "
                                   "the file may be truncated or corrupt") from None


class TorchFile(TensorFile):
    """A `torch.save` pickle of a state dict (`pytorch_model.bin`, `adapter_model.bin`, `.pt`)."""

    def __init__(self, path) -> None:
        self.path = str(path)
        self.metadata = {}
        obj = _torch_load(self.path)
        tensors = _state_dict_of(obj)
        if tensors is None:
            raise FormatError(f"{self.path}: a torch pickle but not a state dict of tensors "
                              f"(found {type(obj).__name__}); expected a model or adapter state dict")
        self._tensors = tensors
        self.entries = {k: (tuple(t.shape), str(t.dtype).replace("torch.", "")) for k, t in tensors.items()}

    def raw(self, key: str):
        return self._tensors[key]


def _torch_load(path: str):
    import warnings

    import torch

    try:
        with warnings.catch_warnings():  # torch's own warnings (pickle protocol, …) are not the user's business
            warnings.simplefilter("ignore")
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except FileNotFoundError:
                raise
            except Exception as first:
                try:  # legacy (non-zip) pickles cannot be memory-mapped
                    return torch.load(path, map_location="cpu", weights_only=True)
                except Exception as e:
                    raise (e if "mmap" in str(first) else first) from None
    except FileNotFoundError:
        raise FormatError(f"{path}: no such file") from None
    except Exception as e:
        if "weights only load failed" in str(e).lower():
            raise FormatError(f"{path}: holds Python objects besides tensors, which deltaspec does not unpickle "
                              "(that could run code): save a state dict of tensors (or safetensors)") from None
        raise CorruptFileError(f"{path}: not a readable PyTorch checkpoint ({_reason(e)}); "
                               "the file may be truncated or corrupt") from None


def _state_dict_of(obj) -> Optional[dict]:
    """The tensors of a state dict, unwrapping one level ({"state_dict": {...}}, {"model": {...}})."""
    import torch

    if not isinstance(obj, dict):
        return None
    for k in ("state_dict", "model", "module", "model_state_dict"):  # a wrapper (Lightning, training scripts)
        if isinstance(obj.get(k), dict) and (inner := _state_dict_of(obj[k])):
            return inner
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if tensors:
        return tensors
    return None if obj else {}


def open_file(path, keep_open: bool = False) -> TensorFile:
    """Open one checkpoint file by its suffix: `.safetensors`, else a torch pickle.
    keep_open: for adapter files (many small tensors), see the module docstring."""
    p = str(path)
    return SafetensorsFile(p, keep_open) if p.endswith(".safetensors") else TorchFile(p)


class TensorStore:
    """A model's tensors over one or more files; keys are unique across files.

    `config` is the model's config.json ({} if none). FP8 block-scaled weights are dequantized on
    read (`quant.plan`); their `*_scale_inv` companions are consumed, not listed in `keys()`.
    Quantized layouts that cannot be dequantized are refused when the store is opened.
    """

    def __init__(self, files: Iterable[TensorFile], path, config: Optional[dict] = None, config_path=None) -> None:
        from .quant import plan

        self.path = str(path)
        self.files = list(files)
        self.config = config or {}
        self._where: dict[str, TensorFile] = {}
        for f in self.files:
            for k in f.keys():
                if self._where.setdefault(k, f) is not f:
                    raise FormatError(f"{self.path}: tensor '{k}' is in both {self._where[k].path} and {f.path}; "
                                      "pass the one file to analyse")
        self.dequant = plan(list(self._where), self.dtype, self.shape, self.config, config_path, self.path)
        hidden = {sk for sk, _ in self.dequant.values()}
        self._keys = {k: None for k in self._where if k not in hidden}

    def __contains__(self, key: str) -> bool:
        return key in self._keys

    def keys(self) -> list[str]:
        return list(self._keys)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._where[key].shape(key)

    def dtype(self, key: str) -> str:
        return self._where[key].dtype(key)

    def source(self, key: str) -> str:
        return self._where[key].path

    def get(self, key: str):
        """float32 (float64 stays), dequantized, checked finite."""
        return as_float(self.raw(key), self.source(key), key)

    def raw(self, key: str, index=None):
        """The tensor as stored (dtype kept, maybe memory-mapped: read it, never write to it), or
        `raw[index]` read alone (one expert of a stack). FP8 block-scaled weights come dequantized."""
        f = self._where[key]
        t = f.raw(key) if index is None else f.raw_slice(key, index)
        if key in self.dequant:
            from .quant import dequantize

            sk, block = self.dequant[key]
            s = self._where[sk].raw(sk) if index is None or block is None else self._where[sk].raw_slice(sk, index)
            t = dequantize(t, s, block)
        return t

    def private(self, key: str) -> bool:
        """raw(key) is a fresh tensor (dequantized), not the stored one: it may be modified in place."""
        return key in self.dequant

    def find(self, name: str) -> Optional[str]:
        """The key of module `name`'s weight, allowing one leading `model.`/`transformer.` mismatch."""
        cands = [name + ".weight"]
        head, _, rest = name.partition(".")
        if rest:
            cands.append(rest + ".weight")
        cands += [p + name + ".weight" for p in ("model.", "transformer.")]
        return next((c for c in cands if c in self._keys), None)


def open_model(path) -> TensorStore:
    """A model's weights from a directory (single, sharded, legacy .bin) or a single file."""
    p = Path(path)
    if p.is_dir():
        files, _ = model_files(p)
        if not files:
            raise FormatError(pipeline_hint(p) or f"{p}: no model weights found (expected model.safetensors, "
                              "sharded model-0000X-of-0000N.safetensors + index json, or pytorch_model.bin)")
        return TensorStore((open_file(f) for f in files), p, *model_config(p))
    if not p.exists():
        raise FormatError(f"{p}: no such file or directory")
    return TensorStore([open_file(p)], p, *model_config(p))




