"""End to end, for every reader: deltaspec's singular values vs numpy.linalg.svd (float64) of ΔW built
independently (PEFT's merge_and_unload() − base, or the format's formula in a float64 loop).

Tolerance (docs/METRICS.md): max |σ − σ_ref| ≤ 1e-4·σ_1 in float32 mode, ≤ 1e-5·σ_1 in float64 mode.
"""
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import deltaspec as ds
from io_fixtures import LLAMA_LIKE, hand_delta, random_state, write_deltaspec, write_mtl

TOL = {"float32": 1e-4, "float64": 1e-5}


def check(result, truth: dict, dtype):
    """truth: layer name → float64 ΔW; every analysed layer must be in it and match."""
    assert {r.name for r in result.layers} == set(truth)
    for r in result.layers:
        ref = np.linalg.svd(truth[r.name].double().numpy(), compute_uv=False)
        got = r.singular_values
        assert len(got) == (min(r.shape) if r.kind == "dense" else min(r.rank, *r.shape))
        assert np.max(np.abs(got - ref[: len(got)])) <= TOL[dtype] * ref[0], r.name
        # what a factored result omits is zero (up to float32 noise of a merged ground truth)
    assert np.all(ref[len(got):] <= 1e-6 * ref[0])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_full_finetune_bf16(tmp_path, dtype):
    base = random_state(LLAMA_LIKE, 0, torch.bfloat16)
    ft = {k: (v.float() + 0.05 * torch.randn(v.shape)).bfloat16() for k, v in base.items()}
    for name, sd in (("base", base), ("ft", ft)):
        (tmp_path / name).mkdir()
        save_file(sd, tmp_path / name / "model.safetensors")
    truth = {k[: -len(".weight")]: ft[k].double() - base[k].double() for k in base
             if base[k].ndim == 2 and "embed" not in k and "lm_head" not in k}
    res = ds.analyze(ds.load(tmp_path / "ft", base=tmp_path / "base"), dtype=dtype)
    check(res, truth, dtype)
    assert res.source["format"] == "full" and all(r.kind == "dense" for r in res.layers)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("vector", [True, False])
def test_deltaspec_multilora(tmp_path, dtype, vector):
    truth = write_deltaspec(tmp_path / "m", vector=vector, n=3, r=2)
    res = ds.analyze(tmp_path / "m", dtype=dtype)
    check(res, truth, dtype)
    assert all(r.rank == 6 for r in res.layers)


def test_mtl_multilora(tmp_path):
    path = tmp_path / "out" / "checkpoint" / "final_checkpoint.pt"
    write_mtl(path, n=3, r=4)
    raw = torch.load(path, weights_only=True)
    names = sorted({k[len("module."):].rsplit(".", 1)[0] for k in raw})
    truth = {m: hand_delta(raw[f"module.{m}.lora_A"], raw[f"module.{m}.lora_B"], raw[f"module.{m}.lora_scaling"], 16.0)
             for m in names}
    check(ds.analyze(ds.load(tmp_path / "out", lora_alpha=16.0)), truth, "float32")


def test_kohya(tmp_path):
    g = torch.Generator().manual_seed(0)
    down, up = torch.randn(4, 3, 3, 3, generator=g), torch.randn(8, 4, 1, 1, generator=g)
    d2, u2 = torch.randn(2, 20, generator=g), torch.randn(12, 2, generator=g)
    save_file({"lora_unet_conv.lora_down.weight": down, "lora_unet_conv.lora_up.weight": up,
               "lora_unet_conv.alpha": torch.tensor(2.0),
               "lora_te_text_model_q.lora_down.weight": d2, "lora_te_text_model_q.lora_up.weight": u2},
              tmp_path / "sd.safetensors")
    truth = {"lora_unet_conv": 0.5 * up.flatten(1).double() @ down.flatten(1).double(),
             "lora_te_text_model_q": u2.double() @ d2.double()}  # no alpha: scale 1
    check(ds.analyze(tmp_path / "sd.safetensors"), truth, "float32")


# ---- PEFT adapters, ground truth from PEFT's own merge ------------------------------------------
peft = pytest.importorskip("peft")


def peft_truth(kind, config, tmp_path):
    from io_fixtures import make_peft_adapter, save_base

    base_state = save_base(kind, tmp_path / "base")
    deltas = make_peft_adapter(kind, config, tmp_path / "adapter", base_state=base_state)
    return {k[: -len(".weight")]: v for k, v in deltas.items()}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_peft_lora_llama(tmp_path, dtype):
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"])
    truth = peft_truth("llama", cfg, tmp_path)
    check(ds.analyze(tmp_path / "adapter", dtype=dtype), truth, dtype)


def test_peft_rslora_gpt2_fan_in_fan_out(tmp_path):
    cfg = peft.LoraConfig(r=4, lora_alpha=8, use_rslora=True, fan_in_fan_out=True, target_modules=["c_attn", "c_proj"])
    truth = peft_truth("gpt2", cfg, tmp_path)
    check(ds.analyze(tmp_path / "adapter"), truth, "float32")


def test_peft_dora_with_base(tmp_path):
    cfg = peft.LoraConfig(r=4, lora_alpha=8, use_dora=True, target_modules=["q_proj", "v_proj"])
    truth = peft_truth("llama", cfg, tmp_path)
    res = ds.analyze(ds.load(tmp_path / "adapter", base=tmp_path / "base"), dtype="float64")
    check(res, truth, "float64")
    assert all(r.kind == "dense" for r in res.layers)  # DoRA's ΔW is not low rank


def test_truncated_top_k_mode_on_a_full_delta(tmp_path):
    """--top-k: σ̃_i ≤ σ_i ≤ upper_i against numpy; energies use the exact ‖ΔW‖_F; whole-spectrum metrics NaN."""
    g = torch.Generator().manual_seed(3)
    base = {f"model.layers.{i}.mlp.down_proj.weight": torch.randn(48, 96, generator=g) for i in range(2)}
    U, _ = torch.linalg.qr(torch.randn(48, 48, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(96, 48, generator=g, dtype=torch.float64))
    delta = (U * torch.logspace(0, -4, 48, dtype=torch.float64)) @ V.T  # decaying spectrum
    ft = {k: (v.double() + delta).float() for k, v in base.items()}
    for name, sd in (("base", base), ("ft", ft)):
        (tmp_path / name).mkdir()
        save_file(sd, tmp_path / name / "model.safetensors")
    exact = ds.analyze(ds.load(tmp_path / "ft", base=tmp_path / "base"))
    trunc = ds.analyze(ds.load(tmp_path / "ft", base=tmp_path / "base"), svd_top_k=4)
    for e, t in zip(exact.layers, trunc.layers):
        assert len(t.singular_values) == 4
        ref = np.linalg.svd((ft[e.name + ".weight"].double() - base[e.name + ".weight"].double()).numpy(), compute_uv=False)
        assert np.all(t.singular_values <= ref[:4] * (1 + 1e-5)) and np.all(ref[:4] <= t.upper * (1 + 1e-5))
        np.testing.assert_allclose(t.singular_values, ref[:4], rtol=1e-4)
        assert t.metrics["frobenius_norm"] == pytest.approx(e.metrics["frobenius_norm"], rel=1e-5)
        assert t.metrics["top1_energy"] == pytest.approx(e.metrics["top1_energy"], rel=1e-4)
        assert np.isnan(t.metrics["effective_rank"]) and np.isnan(t.metrics["top16_energy"])
    assert "singular_values_upper_bound" in trunc.to_dict()["layers"][0]
