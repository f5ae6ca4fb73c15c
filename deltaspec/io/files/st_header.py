"""The header of a .safetensors file, read and validated without torch (pure Python).

Layout: 8 bytes little-endian u64 N, then N bytes of JSON
`{"__metadata__": {str: str}, name: {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, …}`,
then the tensor bytes. Reading names, shapes and dtypes this way lets `deltaspec info`, `--help` and
format detection run without importing torch (~1.5 s); tensors are read later with `safe_open`.
"""
from __future__ import annotations

import errno
import json
import math
import os
import struct

from ...errors import CorruptFileError, FormatError, reason

# safetensors dtype tag -> (torch dtype name, bytes per element; None where elements are sub-byte)
DTYPES = {"F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2),
          "F8_E4M3": ("float8_e4m3fn", 1), "F8_E5M2": ("float8_e5m2", 1), "F8_E8M0": ("float8_e8m0fnu", 1),
          "I64": ("int64", 8), "I32": ("int32", 4), "I16": ("int16", 2), "I8": ("int8", 1),
          "U64": ("uint64", 8), "U32": ("uint32", 4), "U16": ("uint16", 2), "U8": ("uint8", 1),
          "BOOL": ("bool", 1), "C64": ("complex64", 8), "F4": ("float4_e2m1fn_x2", None),
          "F6_E2M3": ("float6_e2m3", None), "F6_E3M2": ("float6_e3m2", None)}
MAX_HEADER = 100_000_000  # the limit safetensors itself enforces
_BITS = {"F4": 4, "F6_E2M3": 6, "F6_E3M2": 6}  # sub-byte dtypes: bits per element


def read_header(path) -> tuple[dict[str, tuple[tuple[int, ...], str]], dict, dict[str, tuple[int, int]]]:
    """({name: (shape, dtype name)} in file order, metadata, {name: (first byte, end byte) in the file}).

    Every inconsistency the safetensors library refuses is a one-line CorruptFileError naming the file:
    a short file, an oversized or non-JSON header, a tensor name given twice, an unknown dtype, metadata
    that is not strings, offsets outside the file or not matching shape × dtype, and tensors that
    overlap, leave holes or do not cover the data exactly (each tensor starts where the previous ends).
    """
    p = str(path)
    try:
        size = os.path.getsize(p)
        with open(p, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError(f"{size} bytes, shorter than the 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or n > size - 8:
                raise ValueError(f"header length {n} does not fit the file ({size} bytes)")
            raw = f.read(n)
    except FileNotFoundError:
        raise FormatError(f"{p}: no such file") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise FormatError(f"{p}: a symbolic link loop (too many levels of symbolic links)") from None
        raise _corrupt(p, e) from None
    except ValueError as e:
        raise _corrupt(p, e) from None
    try:
        header = json.loads(raw)
        if isinstance(header, dict) and raw.count(b'"data_offsets"') != len(header) - ("__metadata__" in header):
            header = json.loads(raw, object_pairs_hook=_unique)  # slower: only to name a repeated key, if any
        entries, meta, offsets = _parse(header, size - 8 - n)
        return entries, meta, {k: (8 + n + b, 8 + n + e) for k, (b, e) in offsets.items()}
    except (ValueError, TypeError, RecursionError, KeyError) as e:
        raise _corrupt(p, e) from None


def _corrupt(p: str, e: BaseException) -> CorruptFileError:
    why = "header is too deeply nested" if isinstance(e, RecursionError) else reason(e, 200)
    return CorruptFileError(f"{p}: not a readable safetensors file ({why}); the file may be truncated or corrupt")


def _unique(pairs: list) -> dict:
    """A JSON object without repeated names (json.loads would keep the last one silently)."""
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"the header names '{dup}' twice")
    return d


def _parse(header, data_size: int):
    if not isinstance(header, dict):
        raise ValueError(f"header is a JSON {type(header).__name__}, not an object")
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ValueError("__metadata__ is not an object of strings")
    entries, offsets = {}, {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(e, dict):
            raise ValueError(f"entry '{name}' is not an object")
        tag, shape, offs = e.get("dtype"), e.get("shape"), e.get("data_offsets")
        if not isinstance(tag, str) or not isinstance(shape, list) or not isinstance(offs, list) or len(offs) != 2:
            raise ValueError(f"entry '{name}' lacks dtype, shape or data_offsets")
        if not all(_uint(v) for v in shape + offs):
            raise ValueError(f"entry '{name}' has a negative or non-integer shape or offset")
        begin, end = offs
        if begin > end or end > data_size:
            raise ValueError(f"tensor '{name}' lies outside the file's {data_size} data bytes (offsets {offs})")
        if tag not in DTYPES:
            raise ValueError(f"tensor '{name}' has an unknown dtype {tag!r}")
        dtype, itemsize = DTYPES[tag]
        bits = math.prod(shape) * (_BITS[tag] if itemsize is None else 8 * itemsize)
        if bits % 8 or bits // 8 != end - begin:
            raise ValueError(f"tensor '{name}' {tag}{shape} needs {bits / 8:g} bytes, its offsets give {end - begin}")
        entries[name] = (tuple(shape), dtype)
        offsets[name] = (begin, end)
    _check_coverage(offsets, data_size)
    return entries, {str(k): v for k, v in meta.items()}, offsets


def _check_coverage(offsets: dict, data_size: int) -> None:
    """The tensors tile the data exactly, in offset order: no overlap, no hole, nothing left over."""
    spans = sorted(offsets.values())
    if (spans[0][0] if spans else 0) == 0 and (spans[-1][1] if spans else 0) == data_size and \
            all(a[1] == b[0] for a, b in zip(spans, spans[1:])):
        return  # the fast path; otherwise name the first tensor out of place
    pos = 0
    for name, (begin, end) in sorted(offsets.items(), key=lambda kv: kv[1]):
        if begin != pos:
            raise ValueError(f"tensor '{name}' starts at data byte {begin}, expected {pos}: "
                             + ("it overlaps the tensor before it" if begin < pos else
                                f"a hole of {begin - pos} bytes lies before it"))
        pos = end
    if pos != data_size:
        raise ValueError(f"the tensors cover {pos} of the file's {data_size} data bytes")


_SCALAR = {"F64": "<d", "F32": "<f", "F16": "<e", "I64": "<q", "I32": "<i", "I16": "<h", "I8": "<b", "U8": "<B"}


def read_scalar(path, dtype: str, offsets: tuple[int, int]) -> float:
    """The value of a one-element tensor (a kohya `alpha`) straight from the file, without torch."""
    tag = next((t for t, (name, _) in DTYPES.items() if name == dtype), None)
    begin, end = offsets
    with open(path, "rb") as f:
        f.seek(begin)
        raw = f.read(end - begin)
    if tag == "BF16" and len(raw) == 2:
        return struct.unpack("<f", b"\0\0" + raw)[0]  # bf16 = the top half of a float32
    if tag in _SCALAR and len(raw) == struct.calcsize(_SCALAR[tag]):
        return float(struct.unpack(_SCALAR[tag], raw)[0])
    raise ValueError(f"cannot read a {dtype} scalar of {len(raw)} bytes")


def _uint(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0
