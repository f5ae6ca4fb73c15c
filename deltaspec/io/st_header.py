"""The header of a .safetensors file, read and validated without torch (pure Python).

Layout: 8 bytes little-endian u64 N, then N bytes of JSON
`{"__metadata__": {str: str}, name: {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, …}`,
then the tensor bytes. Reading names, shapes and dtypes this way lets `deltaspec info`, `--help` and
format detection run without importing torch (~1.5 s); tensors are read later with `safe_open`.
"""
from __future__ import annotations

import json
import math
import os
import struct

from ..errors import CorruptFileError, FormatError, reason

# safetensors dtype tag -> (torch dtype name, bytes per element; None where elements are sub-byte)
DTYPES = {"F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2),
          "F8_E4M3": ("float8_e4m3fn", 1), "F8_E5M2": ("float8_e5m2", 1), "F8_E8M0": ("float8_e8m0fnu", 1),
          "I64": ("int64", 8), "I32": ("int32", 4), "I16": ("int16", 2), "I8": ("int8", 1),
          "U64": ("uint64", 8), "U32": ("uint32", 4), "U16": ("uint16", 2), "U8": ("uint8", 1),
          "BOOL": ("bool", 1), "C64": ("complex64", 8), "F4": ("float4_e2m1fn_x2", None),
          "F6_E2M3": ("float6_e2m3", None), "F6_E3M2": ("float6_e3m2", None)}
MAX_HEADER = 100_000_000  # the limit safetensors itself enforces


def read_header(path) -> tuple[dict[str, tuple[tuple[int, ...], str]], dict]:
    """({name: (shape, dtype name)} in file order, metadata) of a .safetensors file.

    Every inconsistency (short file, oversized or non-JSON header, offsets outside the file or not
    matching shape × dtype) is a one-line CorruptFileError naming the file.
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
    except (OSError, ValueError) as e:
        raise _corrupt(p, e) from None
    try:
        header = json.loads(raw)
        return _parse(header, size - 8 - n)
    except (ValueError, TypeError, RecursionError, KeyError) as e:
        raise _corrupt(p, e) from None


def _corrupt(p: str, e: BaseException) -> CorruptFileError:
    why = "header is too deeply nested" if isinstance(e, RecursionError) else reason(e, 200)
    return CorruptFileError(f"{p}: not a readable safetensors file ({why}); the file may be truncated or corrupt")


def _parse(header, data_size: int):
    if not isinstance(header, dict):
        raise ValueError(f"header is a JSON {type(header).__name__}, not an object")
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise ValueError("__metadata__ is not an object")
    entries = {}
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
        dtype, itemsize = DTYPES.get(tag, (tag.lower(), None))
        if itemsize is not None and math.prod(shape) * itemsize != end - begin:
            raise ValueError(f"tensor '{name}' {tag}{shape} needs {math.prod(shape) * itemsize} bytes, "
                             f"its offsets give {end - begin}")
        entries[name] = (tuple(shape), dtype)
    return entries, {str(k): v for k, v in meta.items()}


def _uint(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0
