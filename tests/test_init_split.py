"""Learned vs initial (`--initial` for LoRA and MultiLoRA): init share, learned part, factor movement.

Ground truth: float64 numpy on the materialised matrices ΔW = c Σ diag(s_i) B_i A_i and
ΔW_0 = c Σ diag(s_i) B_i⁰ A_i⁰ (docs/TRAINING.md). Tolerances: 1e-5 relative on float32 factors.
"""
import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import deltaspec as ds
from deltaspec.errors import FormatError
from deltaspec.init_split import init_split, initial_part, learned_part
from deltaspec.train import GPT, GPTConfig, wrap
from deltaspec.train.layers import adapters
from deltaspec.train.save import save_lora, save_multilora
from deltaspec.train.trainer import TrainConfig
from deltaspec.updates import LowRank, SumOfLowRank
from deltaspec_cli.main import cli

G = torch.Generator().manual_seed(0)
rand = lambda *s: torch.randn(*s, generator=G)


def np_(t):
    return np.asarray(t.detach(), dtype=np.float64)


def multilora_pair(n=3, d_out=20, d_in=12, r=2, c=2.0):
    S = [rand(d_out) for _ in range(n)]
    trained = SumOfLowRank([(c * S[i], rand(d_out, r), rand(r, d_in)) for i in range(n)])
    initial = SumOfLowRank([(torch.zeros(d_out), rand(d_out, r), rand(r, d_in)) for _ in range(n)])
    return trained, initial, S, c


def reference(trained, initial, S, c):
    dW = sum(c * np_(s)[:, None] * np_(B) @ np_(A) for s, (_, B, A) in zip(S, trained.terms))
    dW0 = sum(c * np_(s)[:, None] * np_(B) @ np_(A) for s, (_, B, A) in zip(S, initial.terms))
    return dW, dW0


def test_multilora_split_against_numpy():
    trained, initial, S, c = multilora_pair()
    dW, dW0 = reference(trained, initial, S, c)
    np.testing.assert_allclose(np_(initial_part(trained, initial).materialize()), dW0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np_(learned_part(trained, initial).materialize()), dW - dW0, rtol=1e-5, atol=1e-5)
    sp = init_split(trained, initial)
    assert sp.init_share == pytest.approx(np.linalg.norm(dW0) ** 2 / np.linalg.norm(dW) ** 2, rel=1e-6)
    assert sp.init_cos == pytest.approx((dW * dW0).sum() / np.linalg.norm(dW) / np.linalg.norm(dW0), rel=1e-6)
    B, B0 = (np.concatenate([np_(B) for _, B, _ in u.terms], 1) for u in (trained, initial))
    A, A0 = (np.concatenate([np_(A) for _, _, A in u.terms], 0) for u in (trained, initial))
    assert sp.moveB == pytest.approx(np.linalg.norm(B - B0) / np.linalg.norm(B0), rel=1e-6)
    assert sp.moveA == pytest.approx(np.linalg.norm(A - A0) / np.linalg.norm(A0), rel=1e-6)


def test_lora_split_standard_init_is_all_learned():
    A0, A, B = rand(4, 10), rand(4, 10), rand(8, 4)
    trained, initial = LowRank(B, A, 0.5), LowRank(torch.zeros(8, 4), A0, 0.5)
    sp = init_split(trained, initial)
    assert sp.init_share == 0 and math.isnan(sp.moveB) and math.isnan(sp.init_cos)
    assert sp.moveA == pytest.approx(np.linalg.norm(np_(A) - np_(A0)) / np.linalg.norm(np_(A0)), rel=1e-6)
    np.testing.assert_allclose(np_(learned_part(trained, initial).materialize()), 0.5 * np_(B) @ np_(A), rtol=1e-5)
    B0 = rand(8, 4)  # a random B⁰ (PEFT init_lora_weights=False): ΔW_0 = s·B⁰A⁰
    sp = init_split(trained, LowRank(B0, A0, 0.5))
    dW, dW0 = np_(B) @ np_(A), np_(B0) @ np_(A0)
    assert sp.init_share == pytest.approx(np.linalg.norm(dW0) ** 2 / np.linalg.norm(dW) ** 2, rel=1e-6)


def test_mismatched_factors_are_refused():
    trained, initial, _, _ = multilora_pair(r=2)
    other = multilora_pair(r=3)[1]
    with pytest.raises(ValueError, match="do not match"):
        init_split(trained, other)
    with pytest.raises(ValueError, match="form"):
        init_split(trained, LowRank(rand(20, 2), rand(2, 12)))


def run_dirs(tmp_path, method, seed=0, rank=4, heads=2):
    """RUN/checkpoint-0 (the adapter as initialised) and RUN (factors and scalings moved), as the trainer writes."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64, max_len=16))
    wrap(model, ["k_proj", "v_proj"], method, rank=rank, alpha=2 * rank // (heads if method == "multilora" else 1),
         heads=heads)
    cfg = TrainConfig(method=method, out=str(tmp_path), rank=rank, heads=heads)
    save = save_lora if method == "lora" else save_multilora
    run = tmp_path / f"{method}_s{seed}_r{rank}"
    save(model, str(run / "checkpoint-0"), cfg, "base")
    info = {"method": method, "seed": seed, "rank": rank, "base_sha256": "ab" * 32}
    (run / "checkpoint-0" / "train_info.json").write_text(json.dumps({**info, "step": 0}))
    g = torch.Generator().manual_seed(seed + 10)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.add_((0.5 if "scaling" in n else 0.05) * torch.randn(p.shape, generator=g))
    save(model, str(run), cfg, "base")
    (run / "train_info.json").write_text(json.dumps({**info, "step": 5}))
    return run, adapters(model)


@pytest.mark.parametrize("method", ["lora", "multilora"])
def test_analyze_with_initial(tmp_path, method):
    run, layers = run_dirs(tmp_path, method)
    init = ds.load(run / "checkpoint-0")
    res = ds.analyze(ds.load(run, initial=run / "checkpoint-0"), device="cpu")
    plain = ds.analyze(run, device="cpu")
    for r, p, u0 in zip(res.layers, plain.layers, init):
        np.testing.assert_array_equal(r.singular_values, p.singular_values)  # ΔW itself is unchanged
        dW = np_(layers[r.name].delta_weight())
        t0 = u0.load()
        if method == "lora":
            dW0 = np.zeros_like(dW)
        else:
            m = layers[r.name]
            dW0 = sum(m.scaling * np_(m.lora_scaling[i])[:, None] * np_(B) @ np_(A)
                      for i, (_, B, A) in enumerate(t0.terms))
        assert r.metrics["init_share"] == pytest.approx(np.linalg.norm(dW0) ** 2 / np.linalg.norm(dW) ** 2,
                                                        rel=1e-5, abs=1e-12)
        sigma = np.linalg.svd(dW - dW0, compute_uv=False)
        np.testing.assert_allclose(r.learned_singular_values[:len(sigma)][:8], sigma[:8], rtol=1e-4, atol=1e-6)
        assert r.metrics["learned_top1_energy"] == pytest.approx(sigma[0] ** 2 / (sigma ** 2).sum(), rel=1e-4)
        assert math.isnan(r.metrics["moveB"]) == (method == "lora")
    assert "init_share" in res.aggregates()["k_proj"]["mean"]
    back = ds.AnalysisResult.from_dict(json.loads(res.to_json()))
    np.testing.assert_array_equal(back.layers[0].learned_singular_values, res.layers[0].learned_singular_values)


def test_cli_initial_table_compare_and_errors(tmp_path):
    run, _ = run_dirs(tmp_path, "multilora")
    lora, _ = run_dirs(tmp_path, "lora")
    r = CliRunner().invoke(cli, ["analyze", str(run), "--initial", "auto"])
    assert r.exit_code == 0, r.output
    assert "init_share" in r.output and "learned_top1_energy" in r.output
    r = CliRunner().invoke(cli, ["compare", str(lora), str(run), "--initial", "auto", "--format", "json"])
    assert r.exit_code == 0, r.output
    shares = json.loads(r.stdout)["groups"]["k_proj"]["metrics"]["init_share"]
    assert shares[lora.name] == 0 and 0 < shares[run.name] < 1

    def error(*args):
        r = CliRunner().invoke(cli, [*map(str, args)])
        assert r.exit_code == 2 and r.output.startswith("error: ") and len(r.output.strip().splitlines()) == 1, r.output
        return r.output

    other_seed, _ = run_dirs(tmp_path, "multilora", seed=1)
    assert "another run: its seed is 1" in error("analyze", run, "--initial", other_seed / "checkpoint-0")
    other_rank, _ = run_dirs(tmp_path, "multilora", rank=8, heads=2)
    (other_rank / "checkpoint-0" / "train_info.json").unlink()  # shapes alone must tell
    assert "differs" in error("analyze", run, "--initial", other_rank / "checkpoint-0")
    assert "step 5" in error("analyze", run, "--initial", run)
    assert "multilora adapter saved before training" in error("analyze", run, "--initial", lora / "checkpoint-0")
    assert "auto needs" in error("analyze", run / "checkpoint-0", "--initial", "auto")
    assert "one per input" in error("compare", lora, run, "--initial", str(run / "checkpoint-0"))
    from deltaspec.train import save_model
    save_model(GPT(GPTConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64, max_len=16)), str(tmp_path / "ft"))
    assert "its base" in error("analyze", tmp_path / "ft", "--base", tmp_path / "ft", "--initial", run)


def test_initial_is_refused_for_other_formats(tmp_path):
    run, _ = run_dirs(tmp_path, "multilora")
    with pytest.raises(FormatError, match="LoRA and MultiLoRA"):
        ds.load(run, format="kohya", initial=run / "checkpoint-0")
