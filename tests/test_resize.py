"""`deltaspec resize`: PEFT loads what it writes, and PEFT's own merge of it equals the rank-k truncated SVD
of the input's ΔW computed independently (numpy float64 on PEFT's merge of the input, or on the raw tensors)."""
import json
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

peft = pytest.importorskip("peft")
pytest.importorskip("transformers")

from peft import LoraConfig, PeftModel  # noqa: E402

import deltaspec as ds  # noqa: E402
from deltaspec import ranks as R  # noqa: E402
from deltaspec.errors import DeltaspecError  # noqa: E402
from deltaspec_cli.main import cli  # noqa: E402
from io_fixtures import hand_delta, make_peft_adapter, save_base, snapshot, tiny_model  # noqa: E402

SAMPLES = os.path.join(os.path.dirname(__file__), "..", "sample_checkpoints")
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def truncate(M: torch.Tensor, k: int) -> np.ndarray:
    """The rank-k truncated SVD of M in float64 numpy (Eckart–Young reference)."""
    U, s, Vt = np.linalg.svd(M.double().numpy(), full_matrices=False)
    return (U[:, :k] * s[:k]) @ Vt[:k]


def merged_delta(model, adapter_dir) -> dict:
    """PEFT's own ΔW of an adapter: merge_and_unload() weight − base weight, per changed weight."""
    base = {k: v.detach().clone().double() for k, v in model.state_dict().items()}
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload().state_dict()
    return {k: merged[k].double() - base[k] for k in base if k in merged and not torch.equal(merged[k].double(), base[k])}


def assert_close(got: torch.Tensor, want: np.ndarray, rtol=2e-5):
    """Float32 factors: error relative to the size of the reference update."""
    want = torch.as_tensor(want).reshape(got.shape)
    err = float((got.double() - want).norm() / want.norm())
    assert err < rtol, err


def resize(src, out, *args):
    r = run("resize", src, "-o", out, "-q", *args)
    assert r.exit_code == 0, r.output
    return r


@pytest.fixture(scope="module")
def llama_lora(tmp_path_factory):
    d = tmp_path_factory.mktemp("llama") / "a"
    want = make_peft_adapter("llama", LoraConfig(r=8, lora_alpha=16, target_modules=LLAMA_TARGETS), d)
    return d, want


def test_lora_to_rank_k_is_the_truncated_svd(llama_lora, tmp_path):
    src, want = llama_lora
    before = snapshot(src)
    r = resize(src, tmp_path / "r3", "--rank", "3")
    assert snapshot(src) == before  # nothing written into the input
    cfg = json.loads((tmp_path / "r3" / "adapter_config.json").read_text())
    assert cfg["r"] == 3 and cfg["lora_alpha"] == 6.0 and not cfg["rank_pattern"] and not cfg["alpha_pattern"]
    got = merged_delta(tiny_model("llama"), tmp_path / "r3")
    assert set(got) == set(want) and len(got) == 14
    for k, dW in want.items():
        assert_close(got[k], truncate(dW, 3))
    info = json.loads((tmp_path / "r3" / "resize_info.json").read_text())
    layer = info["layers"][0]
    s = np.linalg.svd(want[layer["name"] + ".weight"].numpy(), compute_uv=False)
    assert layer["relative_error"] == pytest.approx(np.sqrt((s[3:] ** 2).sum() / (s**2).sum()), rel=1e-5)
    assert "L0.q_proj" in r.output and "rank=3" in r.output


def test_full_rank_reproduces_delta_keep_alpha(llama_lora, tmp_path):
    src, want = llama_lora
    resize(src, tmp_path / "r8", "--rank", "8", "--keep-scale", "alpha", "--dtype", "float64")
    cfg = json.loads((tmp_path / "r8" / "adapter_config.json").read_text())
    assert cfg["lora_alpha"] == 16.0
    got = merged_delta(tiny_model("llama"), tmp_path / "r8")
    for k, dW in want.items():
        assert_close(got[k], dW.numpy(), rtol=1e-6)


def test_per_layer_energy_ranks_through_rank_pattern(llama_lora, tmp_path):
    src, want = llama_lora
    resize(src, tmp_path / "e", "--energy", "0.8", "--max-rank", "6")
    model = tiny_model("llama")
    pm = PeftModel.from_pretrained(tiny_model("llama"), str(tmp_path / "e"))
    mods = dict(pm.base_model.model.named_modules())
    got = merged_delta(model, tmp_path / "e")
    ranks = set()
    for k, dW in want.items():
        s = np.linalg.svd(dW.numpy(), compute_uv=False)
        kk = min(int(np.searchsorted(np.cumsum(s**2) / (s**2).sum(), 0.8 * (1 - 1e-12))) + 1, 6)
        assert mods[k[: -len(".weight")]].lora_A["default"].weight.shape[0] == kk
        assert_close(got[k], truncate(dW, kk))
        ranks.add(kk)
    assert len(ranks) > 1  # the pattern really is per layer


def test_multilora_to_lora_is_exact(tmp_path):
    """The sample MultiLoRA (4 heads x r=4) at total rank 16 becomes an equivalent PEFT LoRA."""
    from safetensors.torch import load_file

    from deltaspec.train.model import load_model

    src = os.path.join(SAMPLES, "multilora")
    resize(src, tmp_path / "m", "--rank", "16", "--dtype", "float64")
    got = merged_delta(load_model(os.path.join(SAMPLES, "base")), tmp_path / "m")
    raw = load_file(os.path.join(src, "adapter_model.safetensors"))
    alpha = json.loads(open(os.path.join(src, "adapter_config.json")).read())["lora_alpha"]
    assert len(got) == 16
    for k, dW in got.items():
        p = "base_model.model." + k[: -len(".weight")]
        want = hand_delta(raw[p + ".lora_A.weight"], raw[p + ".lora_B.weight"], raw[p + ".lora_scaling"], alpha)
        assert_close(dW, want.numpy(), rtol=1e-6)


def perturbed_full(kind, tmp_path, seed=3):
    """base/ and ft/ of a tiny transformers model; ft = base + a decaying low-rank part + noise."""
    base = save_base(kind, tmp_path / "base")
    g = torch.Generator().manual_seed(seed)
    model = tiny_model(kind)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.ndim == 2 and not any(e in n for e in ("wte", "wpe", "embed", "lm_head")):
                o, i = p.shape
                p.add_((torch.randn(o, 6, generator=g) * torch.tensor([1, .5, .3, .2, .1, .05])) @ torch.randn(6, i, generator=g)
                       * 0.05 + 1e-3 * torch.randn(o, i, generator=g))
    model.save_pretrained(tmp_path / "ft")
    ft = {k: v.detach().double() for k, v in model.state_dict().items()}
    return {k: ft[k] - base[k].double() for k in base if base[k].ndim == 2 and not torch.equal(ft[k], base[k].double())}


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_full_ft_delta_to_rank_k(tmp_path, kind):
    """Dense ΔW = W_ft − W0 (GPT-2: Conv1D weights stored (in, out), written with fan_in_fan_out)."""
    want = perturbed_full(kind, tmp_path)
    resize(tmp_path / "ft", tmp_path / "out", "--base", tmp_path / "base", "--rank", "4")
    cfg = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert cfg["fan_in_fan_out"] == (kind == "gpt2") and cfg["lora_alpha"] == 4.0  # no source scale: α = r
    got = merged_delta(tiny_model(kind), tmp_path / "out")
    assert set(got) == set(want)
    for k, dW in want.items():
        assert_close(got[k], truncate(dW, 4))


def test_gpt2_orientation_needs_a_config(tmp_path):
    """The model type (Conv1D or not) comes from the config next to the base or the fine-tune, also when the
    base is given as a file; with no config anywhere, GPT-2's layer names are an error, not a guess (the
    adapter was written transposed)."""
    import shutil

    want = perturbed_full("gpt2", tmp_path)
    resize(tmp_path / "ft", tmp_path / "out", "--base", tmp_path / "base" / "model.safetensors", "--rank", "4")
    got = merged_delta(tiny_model("gpt2"), tmp_path / "out")
    for k, dW in want.items():
        assert_close(got[k], truncate(dW, 4))
    for d in ("base", "ft"):
        (tmp_path / f"{d}_bare").mkdir()
        shutil.copy(tmp_path / d / "model.safetensors", tmp_path / f"{d}_bare")
    r = CliRunner().invoke(cli, ["resize", str(tmp_path / "ft_bare"), "--base", str(tmp_path / "base_bare"),
                                 "--rank", "4", "-o", str(tmp_path / "out2"), "-q"])
    assert r.exit_code == 2 and "no config.json says the model type" in r.output


def test_gpt2_fan_in_fan_out_lora(tmp_path):
    cfg = LoraConfig(r=4, lora_alpha=8, fan_in_fan_out=True, target_modules=["c_attn", "c_proj", "c_fc"])
    want = make_peft_adapter("gpt2", cfg, tmp_path / "a")
    resize(tmp_path / "a", tmp_path / "out", "--rank", "2")
    got = merged_delta(tiny_model("gpt2"), tmp_path / "out")
    assert set(got) == set(want)
    for k, dW in want.items():
        assert_close(got[k], truncate(dW, 2))


def test_embedding_and_dora(tmp_path):
    """An embedding LoRA (lora_embedding_A/B, stored transposed) and a DoRA update (dense, needs --base)."""
    save_base("llama", tmp_path / "base")
    want = make_peft_adapter("llama", LoraConfig(r=4, lora_alpha=16, target_modules=["embed_tokens", "q_proj"]),
                             tmp_path / "emb")
    resize(tmp_path / "emb", tmp_path / "o1", "--rank", "2", "--include-embeddings")
    got = merged_delta(tiny_model("llama"), tmp_path / "o1")
    assert "model.embed_tokens.weight" in got and set(got) == set(want)
    for k, dW in want.items():
        assert_close(got[k], truncate(dW, 2))
    want = make_peft_adapter("llama", LoraConfig(r=4, lora_alpha=8, use_dora=True, target_modules=["v_proj"]),
                             tmp_path / "dora")
    resize(tmp_path / "dora", tmp_path / "o2", "--rank", "3", "--base", tmp_path / "base")
    got = merged_delta(tiny_model("llama"), tmp_path / "o2")
    for k, dW in want.items():
        assert_close(got[k], truncate(dW, 3))


def test_conv2d_lora(tmp_path):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3)
            self.head = torch.nn.Linear(8, 4)

    def net():
        torch.manual_seed(0)
        return Net()

    want = make_peft_adapter("custom", LoraConfig(r=4, lora_alpha=4, target_modules=["conv", "head"]), tmp_path / "a",
                             model=net())
    resize(tmp_path / "a", tmp_path / "out", "--rank", "2")
    got = merged_delta(net(), tmp_path / "out")
    conv = got["conv.weight"]
    assert conv.shape == (8, 3, 3, 3)
    assert_close(conv.reshape(8, 27), truncate(want["conv.weight"].reshape(8, 27), 2))


def test_zero_layers_are_left_out_with_a_warning(tmp_path):
    from safetensors.torch import load_file, save_file

    make_peft_adapter("llama", LoraConfig(r=4, target_modules=["q_proj"]), tmp_path / "a")
    f = tmp_path / "a" / "adapter_model.safetensors"
    sd = load_file(f)
    zero = "base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight"
    sd[zero] = torch.zeros_like(sd[zero])
    save_file(sd, f)
    r = resize(tmp_path / "a", tmp_path / "out", "--rank", "2")
    assert "model.layers.1.self_attn.q_proj: zero update, left out" in r.output
    cfg = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert cfg["target_modules"] == ["model.layers.0.self_attn.q_proj"]
    sd[zero.replace("layers.1", "layers.0")] *= 0
    save_file(sd, f)
    r = run("resize", tmp_path / "a", "-o", tmp_path / "out2", "--rank", "2")
    assert r.exit_code == 2 and "every update is zero" in r.output


def test_output_rules_and_refusals(llama_lora, tmp_path):
    src, _ = llama_lora
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("keep me")
    cases = [
        (["--rank", "2", "-o", src], "refusing to overwrite the input"),
        (["--rank", "2", "-o", src / "sub"], "refusing to write inside the input checkpoint"),
        (["--rank", "2", "-o", ""], "an empty path"),
        (["--rank", "2", "-o", tmp_path / "busy"], "not empty"),
        (["--rank", "2", "--energy", "0.9", "-o", tmp_path / "x"], "choose exactly one"),
        (["-o", tmp_path / "x"], "choose exactly one"),
        (["--energy", "2", "-o", tmp_path / "x"], "energy share must be in (0, 1]"),
    ]
    before = snapshot(src)
    for args, msg in cases:
        r = run("resize", src, *args)
        assert r.exit_code == 2 and msg in r.output and "Traceback" not in r.output, (args, r.output)
    assert snapshot(src) == before and not (tmp_path / "x").exists()
    resize(src, tmp_path / "busy", "--rank", "2", "--force")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "keep me"
    assert (tmp_path / "busy" / "adapter_model.safetensors").is_file()


def test_refused_inputs(tmp_path):
    """Inputs resize cannot turn into a LoRA: each a one-line error, nothing written. (kohya files themselves are
    resized since issue 21: tests/test_sd_resize.py; this checks the kohya cases that stay refused.)"""
    from safetensors.torch import save_file

    def one_line(r, msg):
        lines = [x for x in r.output.splitlines() if x.strip()]
        assert r.exit_code == 2 and msg in r.output and len(lines) == 1, r.output

    k = {"lora_unet_x.lora_down.weight": torch.randn(2, 8), "lora_unet_x.lora_up.weight": torch.randn(8, 2)}
    save_file({**k, "lora_unet_x.lora_up.weight": torch.randn(8, 3)}, tmp_path / "bad.safetensors")
    one_line(run("resize", tmp_path / "bad.safetensors", "--rank", "1", "-o", tmp_path / "o.safetensors"),
             "'lora_unet_x' lora_up [8, 3] does not fit lora_down [2, 8]")  # the two factors' ranks disagree
    save_file(k, tmp_path / "k.safetensors")
    one_line(run("resize", tmp_path / "k.safetensors", "--rank", "1", "--to", "diffusers", "-o", tmp_path / "o.safetensors"),
             "map to diffusers module names only through the base model's: pass --base")  # kohya names, no base
    one_line(run("resize", tmp_path / "k.safetensors", "--rank", "1", "-o", tmp_path / "o"),
             "--to kohya writes one file; give -o a name ending in .safetensors")
    assert not (tmp_path / "o.safetensors").exists() and not (tmp_path / "o").exists()
    perturbed_full("llama", tmp_path)
    with torch.no_grad():  # an embedding update too
        m = tiny_model("llama")
        m.model.embed_tokens.weight.add_(0.1)
        m.save_pretrained(tmp_path / "ft")
    r = run("resize", tmp_path / "ft", "--base", tmp_path / "base", "--rank", "1", "--include-embeddings",
            "-o", tmp_path / "o")
    assert r.exit_code == 2 and "embedding" in r.output and not (tmp_path / "o").exists()


def test_api_resize_matches_policy(llama_lora):
    from deltaspec.resize import resize as api_resize

    src, want = llama_lora
    res = api_resize(ds.load(src), R.policy("sv_ratio", 3.0))
    for layer in res.layers:
        s = np.linalg.svd(want[layer.name + ".weight"].numpy(), compute_uv=False)
        assert layer.rank == max(int((s > s[0] / 3).sum()), 1)
    with pytest.raises(DeltaspecError):
        api_resize(ds.load(src), R.policy("rank", 2), max_rank=0)
