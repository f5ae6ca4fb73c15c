"""`deltaspec resize` on Stable Diffusion files: kohya in → kohya out, diffusers in → diffusers out, LyCORIS →
plain LoRA, kohya's dynamic rank rules. Checked by diffusers' own load_lora_weights + fuse_lora on a tiny
pipeline built from configs, against the float64 numpy truncation of the input's ΔW (≤ 1e-5·σ₁)."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("diffusers")
pytest.importorskip("peft")
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from deltaspec_cli.main import cli  # noqa: E402
from sd_fixtures import KOHYA_MODULES, kohya_delta, kohya_lora, module_weights, tiny_pipeline, truncate  # noqa: E402

TO_MODULE = {k: "unet." + m for m, k in KOHYA_MODULES.items()}


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def kohya_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("kohya")
    sd = kohya_lora(tiny_pipeline())
    save_file(sd, d / "in.safetensors", metadata={"ss_network_dim": "6", "ss_network_alpha": "3.0",
                                                   "ss_training_comment": "hand made", "sshs_model_hash": "stale"})
    return d / "in.safetensors", sd


def fused_deltas(path) -> dict:
    """diffusers' own ΔW of a LoRA file: fuse_lora() weights − base weights, per module (float64)."""
    pipe = tiny_pipeline()
    before = module_weights(pipe)
    pipe.load_lora_weights(str(path))
    pipe.fuse_lora()
    after = module_weights(pipe)
    return {n: (after[n] - before[n]).flatten(1).numpy() for n in before if not torch.equal(after[n], before[n])}


def assert_close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    s1 = np.linalg.norm(want, 2)
    assert np.abs(got - want).max() <= 1e-5 * s1, what


def test_kohya_to_kohya_fused_by_diffusers(kohya_file, tmp_path):
    src, sd = kohya_file
    out = tmp_path / "r3.safetensors"
    r = run("resize", src, "--rank", "3", "-o", out, "-q")
    assert r.exit_code == 0, r.output
    got = load_file(out)
    assert set(got) == set(sd)  # the same key names: lora_down / lora_up / alpha per module
    for key in TO_MODULE:
        assert got[f"{key}.lora_down.weight"].shape[0] == 3
        assert got[f"{key}.lora_down.weight"].dim() == sd[f"{key}.lora_down.weight"].dim()  # conv stays conv-shaped
        assert float(got[f"{key}.alpha"]) == pytest.approx(3.0 / 6 * 3)  # kohya: new α = α/r · new r
    with safe_open(out, "pt") as f:
        meta = f.metadata()
    assert meta["ss_network_dim"] == "3" and meta["ss_network_alpha"] == "1.5" and "sshs_model_hash" not in meta
    fused = fused_deltas(out)
    assert set(fused) == set(TO_MODULE.values())
    for key, mod in TO_MODULE.items():
        assert_close(fused[mod], truncate(kohya_delta(sd, key), 3), key)


def test_conv_rank_and_verbose(kohya_file, tmp_path):
    src, sd = kohya_file
    out = tmp_path / "c.safetensors"
    r = run("resize", src, "--rank", "4", "--conv-rank", "2", "--verbose", "-o", out, "-q")
    assert r.exit_code == 0, r.output
    assert "fro kept" in r.output and "Frobenius norm retained: mean" in r.output
    got = load_file(out)
    for key in TO_MODULE:
        conv = sd[f"{key}.lora_down.weight"].dim() == 4  # kohya applies --new_conv_rank to every 4-D lora_down
        assert got[f"{key}.lora_down.weight"].shape[0] == (2 if conv else 4), key
    with safe_open(out, "pt") as f:
        assert f.metadata()["ss_network_dim"] == "Dynamic"


def kohya_rank(M: np.ndarray, method: str, t: float, cap: int) -> int:
    """kohya's rule, written from its formula: full SVD, index, clamp to [1, n-1], plus one, cap."""
    S = np.linalg.svd(M, compute_uv=False)
    if method == "sv_ratio":
        i = int(np.sum(S > S[0] / t))
    elif method == "sv_fro":
        i = int(np.searchsorted(np.cumsum(S**2) / np.sum(S**2), t**2))
    else:
        i = int(np.searchsorted(np.cumsum(S) / np.sum(S), t))
    return min(max(1, min(i, len(S) - 1)) + 1, cap)


@pytest.mark.parametrize("method,param", [("sv_ratio", 3.0), ("sv_ratio", 6.0), ("sv_fro", 0.8), ("sv_fro", 0.95),
                                          ("sv_cumulative", 0.7), ("sv_cumulative", 0.9)])
def test_dynamic_ranks_equal_kohyas_formula(kohya_file, tmp_path, method, param):
    src, sd = kohya_file
    out = tmp_path / "d.safetensors"
    r = run("resize", src, "--rank", "5", "--dynamic-method", method, "--dynamic-param", param, "-o", out, "-q")
    assert r.exit_code == 0, r.output
    got = load_file(out)
    for key in TO_MODULE:
        up, down = sd[f"{key}.lora_up.weight"].double(), sd[f"{key}.lora_down.weight"].double()
        want = kohya_rank((up.flatten(1) @ down.flatten(1)).numpy(), method, param, 5)
        assert got[f"{key}.lora_down.weight"].shape[0] == want, (key, method, param)


def test_suggest_rank_offers_kohyas_rules(kohya_file):
    src, sd = kohya_file
    r = run("suggest-rank", src, "--policy", "kohya-sv-fro", "--dynamic-param", "0.8", "--format", "json", "-q")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    for layer in d["layers"]:
        up, down = sd[f"{layer['name']}.lora_up.weight"].double(), sd[f"{layer['name']}.lora_down.weight"].double()
        assert layer["chosen"] == kohya_rank((up.flatten(1) @ down.flatten(1)).numpy(), "sv_fro", 0.8, 10**6)


def test_diffusers_in_diffusers_out_and_to_kohya(kohya_file, tmp_path):
    _, sd = kohya_file
    diff = {}
    for key, mod in TO_MODULE.items():
        diff[f"{mod}.lora_A.weight"] = sd[f"{key}.lora_down.weight"]
        diff[f"{mod}.lora_B.weight"] = sd[f"{key}.lora_up.weight"]
    meta = {"unet.r": 6, "unet.lora_alpha": 3.0, "unet.target_modules": list(KOHYA_MODULES)}
    save_file(diff, tmp_path / "d.safetensors", metadata={"format": "pt", "lora_adapter_metadata": json.dumps(meta)})
    for to, name in (("diffusers", "o_diff.safetensors"), ("kohya", "o_kohya.safetensors")):
        out = tmp_path / name
        args = ["--to", to] if to == "kohya" else []
        r = run("resize", tmp_path / "d.safetensors", "--rank", "2", *args, "-o", out, "-q")
        assert r.exit_code == 0, r.output
        keys = list(load_file(out))
        assert all(k.startswith(("lora_unet_", "lora_te_")) for k in keys) == (to == "kohya")
        fused = fused_deltas(out)
        for key, mod in TO_MODULE.items():
            assert_close(fused[mod], truncate(kohya_delta(sd, key), 2), (to, key))


def test_loha_becomes_plain_lora(tmp_path):
    pipe = tiny_pipeline()
    mod = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    out_d, in_d = dict(pipe.unet.named_modules())[mod].weight.shape
    g = torch.Generator().manual_seed(3)
    t = {p: torch.randn(*s, generator=g) for p, s in (("hada_w1_a", (out_d, 2)), ("hada_w1_b", (2, in_d)),
                                                     ("hada_w2_a", (out_d, 2)), ("hada_w2_b", (2, in_d)))}
    key = KOHYA_MODULES[mod]
    save_file({f"{key}.{p}": v for p, v in t.items()} | {f"{key}.alpha": torch.tensor(1.0)}, tmp_path / "loha.safetensors")
    T = {p: v.double().numpy() for p, v in t.items()}
    dW = 0.5 * (T["hada_w1_a"] @ T["hada_w1_b"]) * (T["hada_w2_a"] @ T["hada_w2_b"])  # (α/r)·(W1a W1b)⊙(W2a W2b)
    for k in (4, 3):  # 4 = r1·r2: exact
        out = tmp_path / f"l{k}.safetensors"
        r = run("resize", tmp_path / "loha.safetensors", "--rank", k, "-o", out, "-q")
        assert r.exit_code == 0, r.output
        assert sorted(load_file(out)) == sorted(f"{key}.{p}" for p in ("alpha", "lora_down.weight", "lora_up.weight"))
        assert_close(fused_deltas(out)["unet." + mod], truncate(dW, k), k)


def test_sd_errors_are_one_line(kohya_file, tmp_path):
    src, _ = kohya_file
    cases = [(["--rank", "2", "--to", "peft", "-o", tmp_path / "p"], "pass --base"),
             (["--rank", "2", "-o", tmp_path / "dir"], "ending in .safetensors"),
             (["--rank", "64", "-o", tmp_path / "x.safetensors"], "above the input's largest rank"),
             (["--dynamic-method", "sv_max", "--dynamic-param", "2", "-o", tmp_path / "x.safetensors"],
              "unknown --dynamic-method"),
             (["--dynamic-method", "sv_fro", "-o", tmp_path / "x.safetensors"], "needs --dynamic-param"),
             (["--dynamic-method", "sv_fro", "--dynamic-param", "1.5", "-o", tmp_path / "x.safetensors"], "(0, 1]"),
             (["--rank", "2", "-o", src], "refusing")]
    for args, msg in cases:
        r = run("resize", src, *args)
        lines = [x for x in r.output.splitlines() if x.strip()]
        assert r.exit_code == 2 and msg in r.output and len(lines) == 1, (args, r.output)


def test_diffusers_to_peft_loaded_by_peft(kohya_file, tmp_path):
    """diffusers file → --to peft (one component): PEFT's own merge_and_unload into the UNet gives ΔW_k."""
    from peft import PeftModel

    _, sd = kohya_file
    diff = {f"{mod}.lora_{ab}.weight": sd[f"{key}.lora_{ud}.weight"] for key, mod in TO_MODULE.items()
            for ab, ud in (("A", "down"), ("B", "up"))}
    meta = {"unet.r": 6, "unet.lora_alpha": 3.0, "unet.target_modules": list(KOHYA_MODULES)}
    save_file(diff, tmp_path / "d.safetensors", metadata={"format": "pt", "lora_adapter_metadata": json.dumps(meta)})
    r = run("resize", tmp_path / "d.safetensors", "--rank", "2", "--to", "peft", "-o", tmp_path / "p", "-q")
    assert r.exit_code == 0, r.output
    unet = tiny_pipeline().unet
    before = {n: m.weight.detach().double().clone() for n, m in unet.named_modules() if n in KOHYA_MODULES}
    merged = dict(PeftModel.from_pretrained(unet, str(tmp_path / "p")).merge_and_unload().named_modules())
    for key, mod in TO_MODULE.items():
        m = mod.removeprefix("unet.")
        got = (merged[m].weight.detach().double() - before[m]).flatten(1).numpy()
        assert_close(got, truncate(kohya_delta(sd, key), 2), key)
