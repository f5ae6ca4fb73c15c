"""Every input problem raises the right deltaspec error, in one line that names the file; reading writes nothing."""
import json
import os
import sys

import pytest
import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from deltaspec.errors import (CorruptFileError, FormatError, MissingBaseError, NonFiniteError,  # noqa: E402
                              ShapeMismatchError)
from deltaspec.io import detect, load  # noqa: E402
from io_fixtures import LLAMA_LIKE, random_state, snapshot, write_deltaspec, write_mtl, write_sharded  # noqa: E402

Q = "model.layers.0.self_attn.q_proj"


def model_dir(d, seed=0, sd=None):
    d.mkdir(parents=True, exist_ok=True)
    save_file(sd if sd is not None else random_state(LLAMA_LIKE, seed), d / "model.safetensors")
    return d


def lora_dir(d, sd=None, cfg=None):
    d.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    sd = sd if sd is not None else {
        f"base_model.model.{Q}.lora_A.weight": torch.randn(4, 32, generator=g),
        f"base_model.model.{Q}.lora_B.weight": torch.randn(32, 4, generator=g)}
    (d / "adapter_config.json").write_text(json.dumps(cfg or {"peft_type": "LORA", "r": 4, "lora_alpha": 8}))
    save_file(sd, d / "adapter_model.safetensors")
    return d


def raises(cls, *parts, call):
    with pytest.raises(cls) as e:
        call()
    msg = str(e.value)
    assert "\n" not in msg, msg
    for p in parts:
        assert str(p) in msg, (p, msg)
    return msg


def test_paths_that_are_not_checkpoints(tmp_path):
    raises(FormatError, tmp_path / "nope", "no such file or directory", call=lambda: detect(tmp_path / "nope"))
    raises(FormatError, tmp_path / "nope", call=lambda: load(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    raises(FormatError, tmp_path / "empty", "empty directory", call=lambda: load(tmp_path / "empty"))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("hi")
    raises(FormatError, tmp_path / "other", "unknown checkpoint format", call=lambda: detect(tmp_path / "other"))
    raises(FormatError, "notes.txt", "unknown checkpoint format", call=lambda: load(tmp_path / "other" / "notes.txt"))
    raises(FormatError, "unknown checkpoint format 'lohax'",
           call=lambda: load(tmp_path / "other", format="lohax"))


def test_adapter_weights_without_config(tmp_path):
    d = lora_dir(tmp_path / "a")
    (d / "adapter_config.json").unlink()
    raises(FormatError, d, "no adapter_config.json", call=lambda: load(d))
    raises(FormatError, d, "no adapter_config.json", call=lambda: load(d / "adapter_model.safetensors"))
    raises(FormatError, d, "no adapter_config.json", call=lambda: load(d, format="peft"))


def test_bad_adapter_config(tmp_path):
    d = lora_dir(tmp_path / "a")
    (d / "adapter_config.json").write_text("{not json")
    raises(FormatError, d / "adapter_config.json", call=lambda: load(d))
    lora_dir(tmp_path / "b", cfg={"peft_type": "FOURIERFT", "r": 4})
    raises(FormatError, "adapter_config.json", "peft_type FOURIERFT is not supported yet", call=lambda: load(tmp_path / "b"))


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_truncated_and_garbage_safetensors(tmp_path):
    base = model_dir(tmp_path / "base")
    ft = model_dir(tmp_path / "ft", seed=1)
    truncate(ft / "model.safetensors")
    raises(CorruptFileError, ft / "model.safetensors", "not a readable safetensors file", "truncated or corrupt",
           call=lambda: load(ft, base=base))
    (ft / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage header}" * 4)
    raises(CorruptFileError, ft / "model.safetensors", call=lambda: load(ft, base=base))
    a = lora_dir(tmp_path / "a")
    truncate(a / "adapter_model.safetensors", 0.3)
    raises(CorruptFileError, a / "adapter_model.safetensors", call=lambda: load(a))
    k = tmp_path / "k.safetensors"
    k.write_bytes(b"garbage")
    raises(CorruptFileError, k, call=lambda: detect(k))


def test_corrupt_bin_and_index(tmp_path):
    base = model_dir(tmp_path / "base")
    d = tmp_path / "ft"
    d.mkdir()
    torch.save(random_state(LLAMA_LIKE, 1), d / "pytorch_model.bin")
    truncate(d / "pytorch_model.bin")
    raises(CorruptFileError, d / "pytorch_model.bin", "not a readable PyTorch checkpoint",
           call=lambda: load(d, base=base))
    s = tmp_path / "sharded"
    write_sharded(random_state(LLAMA_LIKE, 1), s, n=2)
    (s / "model-00002-of-00002.safetensors").unlink()
    raises(FormatError, s / "model.safetensors.index.json", "model-00002-of-00002.safetensors",
           call=lambda: load(s, base=base))
    (s / "model.safetensors.index.json").write_text("[1, 2")
    raises(CorruptFileError, s / "model.safetensors.index.json", call=lambda: load(s, base=base))


def test_missing_base_and_shape_mismatch(tmp_path):
    ft = model_dir(tmp_path / "ft")
    raises(MissingBaseError, ft, "needs the base weights: pass base=PATH", call=lambda: load(ft))
    other = random_state(LLAMA_LIKE, 1)
    other[Q + ".weight"] = torch.randn(32, 16)
    base = model_dir(tmp_path / "base", sd=other)
    raises(ShapeMismatchError, Q + ".weight", ft / "model.safetensors", base / "model.safetensors",
           call=lambda: load(ft, base=base))
    g = torch.Generator().manual_seed(0)
    bad = lora_dir(tmp_path / "bad", sd={f"{Q}.lora_A.weight": torch.randn(4, 32, generator=g),
                                         f"{Q}.lora_B.weight": torch.randn(32, 3, generator=g)})
    raises(ShapeMismatchError, bad / "adapter_model.safetensors", Q, call=lambda: load(bad))


def test_dora_needs_base(tmp_path):
    g = torch.Generator().manual_seed(0)
    sd = {f"{Q}.lora_A.weight": torch.randn(4, 32, generator=g), f"{Q}.lora_B.weight": torch.randn(32, 4, generator=g),
          f"{Q}.lora_magnitude_vector": torch.rand(32, generator=g)}
    d = lora_dir(tmp_path / "dora", sd=sd, cfg={"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_dora": True})
    raises(MissingBaseError, d / "adapter_model.safetensors", "DoRA adapter needs base=", call=lambda: load(d))
    base = model_dir(tmp_path / "base")
    assert load(d, base=base)[0].load().materialize().shape == (32, 32)


def test_non_finite(tmp_path):
    sd = random_state(LLAMA_LIKE, 1)
    sd[Q + ".weight"][3, 4] = float("nan")
    ft, base = model_dir(tmp_path / "ft", sd=sd), model_dir(tmp_path / "base")
    u = {x.name: x for x in load(ft, base=base)}  # headers only: reading is lazy
    raises(NonFiniteError, ft / "model.safetensors", f"tensor '{Q}.weight'", "NaN/Inf", call=u[Q].load)
    u["model.layers.0.self_attn.k_proj"].load()  # other layers are fine
    u = {x.name: x for x in load(base, base=ft)}  # the NaN in the base: the error names the base file
    raises(NonFiniteError, ft / "model.safetensors", f"tensor '{Q}.weight'", "NaN/Inf", call=u[Q].load)
    g = torch.Generator().manual_seed(0)
    a = lora_dir(tmp_path / "a", sd={f"{Q}.lora_A.weight": torch.full((4, 32), float("inf")),
                                     f"{Q}.lora_B.weight": torch.randn(32, 4, generator=g)})
    raises(NonFiniteError, a / "adapter_model.safetensors", "lora_A", call=load(a)[0].load)


def test_mtl_needs_alpha(tmp_path):
    p = tmp_path / "final_checkpoint.pt"
    torch.save({f"{Q}.lora_A": torch.randn(2, 2, 32), f"{Q}.lora_B": torch.randn(2, 32, 2),
                f"{Q}.lora_scaling": torch.zeros(2, 32)}, p)
    raises(FormatError, p, "pass lora_alpha=ALPHA", call=lambda: load(p))


def test_inputs_unchanged(tmp_path):
    base, ft = model_dir(tmp_path / "base"), tmp_path / "ft"
    write_sharded(random_state(LLAMA_LIKE, 1), ft, n=2)
    sd = {f"{Q}.lora_A.weight": torch.randn(4, 32), f"{Q}.lora_B.weight": torch.randn(32, 4),
          f"{Q}.lora_magnitude_vector": torch.rand(32)}
    lora_dir(tmp_path / "dora", sd=sd, cfg={"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_dora": True})
    write_deltaspec(tmp_path / "ml", vector=True)
    write_mtl(tmp_path / "mtl" / "checkpoint" / "final_checkpoint.pt")
    before = snapshot(tmp_path)
    for path, kw in [(ft, {"base": base}), (tmp_path / "dora", {"base": base}), (tmp_path / "ml", {}),
                     (tmp_path / "mtl", {"lora_alpha": 4}), (ft, {"base": base, "include_embeddings": True})]:
        for x in load(path, **kw):
            x.load().materialize()
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.bool, torch.complex64])
def test_non_float_factors_are_refused_not_cast(tmp_path, dtype):
    """Integer/bool (packed quantized data) or complex factors: one line naming the tensor and its dtype;
    before, they were cast to float (complex silently losing its imaginary part)."""
    g = torch.Generator().manual_seed(0)
    a = (torch.randn(4, 32, generator=g) * 3).to(dtype)
    d = lora_dir(tmp_path / "a", {f"base_model.model.{Q}.lora_A.weight": a,
                                  f"base_model.model.{Q}.lora_B.weight": torch.randn(32, 4, generator=g)})
    name = str(dtype).removeprefix("torch.")
    u = load(d)
    raises(FormatError, "adapter_model.safetensors", f"lora_A.weight' is {name}, not a floating-point weight",
           call=lambda: u[0].load())


def test_zero_update_is_warned(tmp_path):
    """An adapter saved before training (lora_B = 0): exact zeros, metrics undefined, and a warning says so."""
    import deltaspec as ds

    g = torch.Generator().manual_seed(0)
    d = lora_dir(tmp_path / "a", {f"base_model.model.{Q}.lora_A.weight": torch.randn(4, 32, generator=g),
                                  f"base_model.model.{Q}.lora_B.weight": torch.zeros(32, 4)})
    res = ds.analyze(d, progress=False)
    assert not res.layers[0].singular_values.any()
    assert any("1 layer(s) have ΔW = 0" in w and Q in w for w in res.warnings)
    lora_dir(tmp_path / "b")
    assert not any("ΔW = 0" in w for w in ds.analyze(tmp_path / "b", progress=False).warnings)


def test_zero_size_weights_are_skipped_with_a_warning(tmp_path):
    import deltaspec as ds

    sd = {Q + ".weight": torch.zeros(0, 32), "model.layers.0.self_attn.k_proj.weight": torch.randn(16, 32)}
    model_dir(tmp_path / "b", sd={k: v.clone() for k, v in sd.items()})
    sd["model.layers.0.self_attn.k_proj.weight"] = sd["model.layers.0.self_attn.k_proj.weight"] + 1
    model_dir(tmp_path / "f", sd=sd)
    res = ds.analyze(tmp_path / "f", base=tmp_path / "b", progress=False)
    assert [r.name for r in res.layers] == ["model.layers.0.self_attn.k_proj"]
    assert any("1 layer(s) with an empty (zero-size) weight skipped: " + Q in w for w in res.warnings)


def test_factors_whose_product_overflows_are_an_error(tmp_path):
    """Finite factors (1e20 each) whose product is beyond float32: one line naming the layer, not a LinAlgError."""
    import deltaspec as ds

    g = torch.Generator().manual_seed(0)
    d = lora_dir(tmp_path / "a", {f"base_model.model.{Q}.lora_A.weight": 1e20 * torch.randn(4, 32, generator=g),
                                  f"base_model.model.{Q}.lora_B.weight": 1e20 * torch.randn(32, 4, generator=g)})
    raises(NonFiniteError, "adapter_model.safetensors", f"'{Q}'", "overflow float32",
           call=lambda: ds.analyze(d, progress=False))
    assert ds.analyze(d, dtype="float64", progress=False).layers[0].singular_values[0] > 1e39  # fits float64
