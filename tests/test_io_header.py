"""The pure-Python safetensors header reader: the same names, shapes, dtypes and metadata as
safetensors itself, and a one-line CorruptFileError for every inconsistency."""
import json
import os
import struct
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from deltaspec.errors import CorruptFileError, FormatError  # noqa: E402
from deltaspec.io.files.st_header import read_header, read_scalar  # noqa: E402

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2,
          torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool]


def test_agrees_with_safetensors(tmp_path):
    sd = {f"t{i}.{str(dt).split('.')[1]}": torch.zeros(3, i + 1).to(dt) for i, dt in enumerate(DTYPES)}
    sd["scalar"] = torch.tensor(2.5)
    save_file(sd, tmp_path / "a.safetensors", metadata={"format": "pt", "note": "x"})
    entries, meta, offsets = read_header(tmp_path / "a.safetensors")
    assert meta == {"format": "pt", "note": "x"}
    with safe_open(tmp_path / "a.safetensors", "pt") as f:
        assert sorted(entries) == sorted(f.keys())
        for k in f.keys():
            t = f.get_tensor(k)
            assert entries[k] == (tuple(t.shape), str(t.dtype).replace("torch.", "")), k
    assert read_scalar(tmp_path / "a.safetensors", "float32", offsets["scalar"]) == 2.5


def raw_file(path, header, data=b""):
    h = json.dumps(header).encode() if not isinstance(header, bytes) else header
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)
    return path


@pytest.mark.parametrize("header,data,problem", [
    (None, b"", "shorter than the 8-byte header length"),
    (b"{}" + b" " * 10, b"", None),
    ([1, 2], b"", "header is a JSON list, not an object"),
    ({"a": {"shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "entry 'a' lacks dtype, shape or data_offsets"),
    ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, "negative or non-integer"),
    ({"a": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}}, b"\0" * 8, "negative or non-integer"),
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8, "lies outside the file's 8 data bytes"),
    ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8,
     "F32[3] needs 12 bytes, its offsets give 8"),
    ({"__metadata__": [1]}, b"", "__metadata__ is not an object"),
])
def test_corrupt_headers(tmp_path, header, data, problem):
    p = tmp_path / "x.safetensors"
    if header is None:
        p.write_bytes(b"\x01\x02\x03")
    else:
        raw_file(p, header, data)
    if problem is None:  # a valid (empty) header with padding
        assert read_header(p)[0] == {}
        return
    with pytest.raises(CorruptFileError) as e:
        read_header(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: not a readable safetensors file (") and problem in msg and "\n" not in msg


def test_header_length_beyond_the_file_and_missing_file(tmp_path):
    p = tmp_path / "x.safetensors"
    p.write_bytes(struct.pack("<Q", 10 ** 6) + b"{}")
    with pytest.raises(CorruptFileError, match="header length 1000000 does not fit the file"):
        read_header(p)
    with pytest.raises(FormatError, match="no such file"):
        read_header(tmp_path / "missing.safetensors")
