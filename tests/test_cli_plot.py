"""`deltaspec compare / plot / subspace` end to end on tiny checkpoints written here (base, full FT,
PEFT LoRA) and on saved analyses (JSON)."""
import json

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from deltaspec_cli.main import cli  # noqa: E402

NAMES = [f"model.layers.{i}.self_attn.{m}" for i in range(2) for m in ("k_proj", "v_proj")]
D, R = 16, 4


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    g = torch.Generator().manual_seed(0)
    W0 = {n + ".weight": torch.randn(D, D, generator=g) for n in NAMES}
    for d in ("base", "full", "lora", "lora2"):
        (root / d).mkdir()
    save_file(W0, str(root / "base" / "model.safetensors"))
    save_file({k: w + 0.05 * torch.randn(D, D, generator=g) for k, w in W0.items()}, str(root / "full" / "model.safetensors"))
    for d in ("lora", "lora2"):
        cfg = {"peft_type": "LORA", "r": R, "lora_alpha": 8, "target_modules": ["k_proj", "v_proj"]}
        (root / d / "adapter_config.json").write_text(json.dumps(cfg))
        t = {}
        for n in NAMES:
            t[f"base_model.model.{n}.lora_A.weight"] = torch.randn(R, D, generator=g)
            t[f"base_model.model.{n}.lora_B.weight"] = torch.randn(D, R, generator=g) * torch.logspace(0, -1, R)
        save_file(t, str(root / d / "adapter_model.safetensors"))
    return root


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def saved(ckpts):
    """analyze -o X.json for the LoRA and the full fine-tune."""
    out = {}
    for name, extra in (("lora", []), ("full", ["--base", ckpts / "base"])):
        out[name] = ckpts / f"{name}.json"
        r = invoke("analyze", ckpts / name, *extra, "-q", "-o", out[name])
        assert r.exit_code == 0, r.output
    return out


def test_compare_checkpoints_base_only_where_needed(ckpts):
    r = invoke("compare", ckpts / "lora", ckpts / "full", "--base", ckpts / "base", "--labels", "LoRA,FT", "-q")
    assert r.exit_code == 0, r.output
    assert "LoRA" in r.output and "Δ FT" in r.output and "k_proj (2 layers)" in r.output
    assert "same 4 layers in every column" in r.output and "one n_ref per layer" in r.output
    r = invoke("compare", ckpts / "lora", ckpts / "full", "-q")
    assert r.exit_code == 2 and "--base" in r.output


def test_compare_saved_json_and_csv(ckpts, saved):
    r = invoke("compare", saved["lora"], saved["full"], "--format", "json", "--per-layer")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["labels"] == ["lora", "full"] and len(d["groups"]) == 4 and d["group_by"] == "layer"
    r = invoke("compare", saved["lora"], saved["full"], "--format", "csv", "--metrics", "top1_energy")
    assert r.output.splitlines()[0] == "module,n_layers,metric,lora,full,full-lora,lora_std,full_std"
    assert len(r.output.splitlines()) == 3
    assert invoke("compare", saved["lora"], saved["full"], "--labels", "a").exit_code == 2


@pytest.mark.parametrize("kind,ext,extra", [
    ("hist", "pdf", ["--modules", "k_proj,v_proj"]),
    ("spectrum", "svg", ["--log-x"]),
    ("energy", "png", ["--mark", "4", "--dpi", "80"]),
])
def test_plot_kinds_from_saved_analyses(saved, tmp_path, kind, ext, extra):
    out = tmp_path / f"fig.{ext}"
    r = invoke("plot", kind, saved["lora"], saved["full"], "--labels", "LoRA,FT", "-o", out, *extra)
    assert r.exit_code == 0, r.output
    assert out.stat().st_size > 1000


def test_plot_hist_from_checkpoints_is_deterministic(ckpts, tmp_path):
    args = [ckpts / "lora", ckpts / "full", "--base", ckpts / "base", "-q", "--size", "double", "--top", "all",
            "--density", "--log-counts"]
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    assert invoke("plot", "hist", *args, "-o", a).exit_code == 0
    assert invoke("plot", "hist", *args, "-o", b).exit_code == 0
    assert a.read_bytes() == b.read_bytes()


def test_plot_heatmap_and_similarity(ckpts, saved, tmp_path):
    r = invoke("plot", "heatmap", saved["full"], "--metric", "effective_rank", "-o", tmp_path / "h.pdf")
    assert r.exit_code == 0 and (tmp_path / "h.pdf").stat().st_size > 1000
    r = invoke("plot", "heatmap", saved["full"], saved["lora"], "-o", tmp_path / "h2.pdf")
    assert r.exit_code == 0 and (tmp_path / "h2.pdf").stat().st_size > 1000  # side by side, one scale
    r = invoke("plot", "similarity", ckpts / "lora", ckpts / "lora2", "--modules", "v_proj", "-k", "4",
               "-o", tmp_path / "s.svg", "-q")
    assert r.exit_code == 0, r.output
    r = invoke("plot", "similarity", saved["lora"], saved["full"], "-o", tmp_path / "s2.svg")
    assert r.exit_code == 2 and "singular vectors" in r.output
    assert invoke("plot", "energy", saved["lora"], "-o", tmp_path / "e.jpg").exit_code == 2


def test_subspace_command(ckpts):
    r = invoke("subspace", ckpts / "lora", ckpts / "lora", ckpts / "full", "--base", ckpts / "base",
               "--labels", "A,A2,FT", "--layers", "0", "--format", "json", "-q", "-k", "1,4")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    rows = {(x["layer"], x["input"]): x for x in d["rows"]}
    assert len(rows) == 6
    a2 = rows[("model.layers.0.self_attn.k_proj", "A2")]
    assert a2["phi@4"] == pytest.approx(1.0) and a2["amp_r"] == R
    ft = rows[("model.layers.0.self_attn.k_proj", "FT")]
    assert ft["amplification"] > 0 and ft["intruders"] >= 0
    r = invoke("subspace", ckpts / "lora", "--base", ckpts / "base", "--modules", "k_proj", "-q")
    assert r.exit_code == 0 and "amplification" in r.output and "intruders" in r.output
    assert invoke("subspace", ckpts / "lora", "-q").exit_code == 2
