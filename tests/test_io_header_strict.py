"""safetensors files the safetensors library itself refuses are refused by deltaspec's own header reader too
(one line naming the file): overlapping or out-of-order offsets, holes, bytes no tensor covers, a name given
twice (json would keep the last one: numbers for weights that were not the trained ones), an unknown dtype,
metadata that is not strings, a sub-byte tensor off a byte boundary."""
import json
import os
import struct
import sys

import pytest
from click.testing import CliRunner
from safetensors import safe_open

sys.path.insert(0, os.path.dirname(__file__))
from deltaspec.errors import CorruptFileError  # noqa: E402
from deltaspec.io import load  # noqa: E402
from deltaspec.io.files.st_header import read_header  # noqa: E402
from deltaspec_cli.main import cli  # noqa: E402


def t(begin, end, shape=(1,), dtype="F32"):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": [begin, end]}


def write(path, header, data: bytes):
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)
    return path


def dup(*entries) -> bytes:
    return ("{" + ",".join(f'"{k}":{json.dumps(v)}' for k, v in entries) + "}").encode()


HOSTILE = {  # name: (header, data bytes, words of deltaspec's message)
    "overlap": ({"a": t(0, 8, (2,)), "b": t(4, 8)}, 8, "overlaps the tensor before it"),
    "hole": ({"a": t(0, 4), "b": t(8, 12)}, 12, "a hole of 4 bytes"),
    "not_from_0": ({"a": t(4, 8)}, 8, "starts at data byte 4, expected 0"),
    "uncovered_tail": ({"a": t(0, 4)}, 8, "cover 4 of the file's 8 data bytes"),
    "duplicate_name": (dup(("a", t(0, 4)), ("b", t(4, 8)), ("a", t(8, 12))), 12, "names 'a' twice"),
    "duplicate_field": (b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"data_offsets":[4,8]}}', 8,
                        "names 'data_offsets' twice"),
    "unknown_dtype": ({"a": t(0, 4, dtype="F99")}, 4, "unknown dtype 'F99'"),
    "metadata_not_strings": ({"__metadata__": {"k": 1}, "a": t(0, 4)}, 4, "not an object of strings"),
    "length_mismatch": ({"a": t(0, 8, (3,))}, 8, "needs 12 bytes, its offsets give 8"),
    "subbyte": ({"a": t(0, 2, (3,), "F4")}, 2, "needs 1.5 bytes"),
}


def library_refuses(p) -> bool:
    try:
        with safe_open(str(p), "np") as f:
            for k in f.keys():
                sl = f.get_slice(k)
                if 0 not in sl.get_shape():  # (the library cannot slice an empty tensor)
                    sl[:]
    except Exception:  # noqa: BLE001 (the library's own exception types vary)
        return True
    return False


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_library_and_deltaspec_refuse(tmp_path, case):
    header, n, words = HOSTILE[case]
    p = write(tmp_path / "model.safetensors", header, b"\0" * n)
    assert library_refuses(p), "not a hostile file: the safetensors library reads it"
    with pytest.raises(CorruptFileError) as e:
        read_header(p)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{p}: not a readable safetensors file") and words in msg, msg
    with pytest.raises(CorruptFileError):
        load(p, base=p)
    r = CliRunner().invoke(cli, ["info", str(p)])
    assert r.exit_code == 2 and r.output.count("error:") == 1 and words in r.output, r.output


def test_valid_edge_cases_still_read(tmp_path):
    """Zero-size tensors sharing an offset, keys in any order, padded header: the library reads them; so do we."""
    p = write(tmp_path / "ok.safetensors", {"z": t(4, 4, (0,)), "b": t(4, 8), "a": t(0, 4), "e": t(0, 0, (0,))},
              b"\0" * 8)
    assert not library_refuses(p)
    assert sorted(read_header(p)[0]) == ["a", "b", "e", "z"]
