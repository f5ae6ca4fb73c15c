"""Rank suggestions: per-layer ranks vs numpy float64 spectra, PEFT applying the suggested rank_pattern /
alpha_pattern exactly, the `suggest-rank` command (≤ 80 columns, JSON, plot, errors)."""
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

import deltaspec as ds
from deltaspec.suggest import exact_key, lora_config_fields, source_scales
from deltaspec_cli.main import cli

SAMPLES = os.path.join(os.path.dirname(__file__), "..", "sample_checkpoints")
LORA, FULL, BASE = (os.path.join(SAMPLES, n) for n in ("lora", "full", "base"))


def run(*args, columns="80"):
    return CliRunner().invoke(cli, [str(a) for a in args], env={"COLUMNS": columns})


def numpy_sigma(update) -> np.ndarray:
    return np.linalg.svd(update.load().materialize().double().numpy(), compute_uv=False)


def energy_rank_loop(s, share):
    """The energy policy written out independently: walk down σ until the share is reached."""
    total, acc = float((s**2).sum()), 0.0
    for i, x in enumerate(s):
        acc += x * x
        if acc >= share * total * (1 - 1e-12):
            return i + 1
    return len(s)


@pytest.fixture(scope="module")
def lora():
    u = ds.load(LORA)
    return u, ds.analyze(u, progress=False)


def test_suggested_ranks_match_numpy_spectra(lora):
    u, res = lora
    s = res.suggest_ranks("energy", 0.8, scales=source_scales(u))
    for x, layer in zip(u, s.layers):
        sig = numpy_sigma(x)
        assert layer.chosen == energy_rank_loop(sig, 0.8)
        assert layer.ranks["fro_error=0.1"] == energy_rank_loop(sig, 1 - 0.1**2)
        assert layer.ranks["sv_ratio=10"] == int((sig > sig[0] / 10).sum())
        k = layer.chosen
        assert layer.kept_energy == pytest.approx((sig[:k] ** 2).sum() / (sig**2).sum(), abs=1e-6)
        assert layer.needed[0.99] == energy_rank_loop(sig, 0.99)
        assert layer.alpha == pytest.approx(2.0 * k)  # source α/r = 32/16 kept
    assert s.keep_scale == "ratio"


def test_keep_alpha_and_max_rank(lora):
    u, res = lora
    s = res.suggest_ranks("fro_error", 0.05, max_rank=6, keep_scale="alpha", scales=source_scales(u))
    assert max(x.chosen for x in s.layers) == 6 and all(x.alpha == 32.0 for x in s.layers)
    c = s.peft_config()
    assert c["lora_alpha"] == 32.0 and c["alpha_pattern"] == {}


def test_full_ft_module_table_is_rank_needed(tmp_path):
    u = ds.load(FULL, base=BASE)
    res = ds.analyze(u.select(["q_proj", "down_proj"]), progress=False)
    s = res.suggest_ranks(levels=(0.5, 0.9))
    by_mod = {r["module"]: r for r in s.module_table()}
    for m in ("q_proj", "down_proj"):
        ks = [energy_rank_loop(numpy_sigma(x), 0.9) for x in u if x.module == m]
        assert by_mod[m]["needed"][0.9] == (float(np.median(ks)), max(ks))
        assert by_mod[m]["layers"] == 4 and by_mod[m]["dim"] == 128


def test_peft_applies_the_suggested_patterns_exactly(lora):
    """PEFT itself resolves rank_pattern / alpha_pattern: every module gets the suggested r and α/r."""
    peft = pytest.importorskip("peft")
    from deltaspec.train.model import load_model

    u, res = lora
    s = res.suggest_ranks("knee", scales=source_scales(u))
    fields = s.peft_config()
    assert fields["rank_pattern"]  # the ranks do differ across layers here
    pm = peft.get_peft_model(load_model(BASE), peft.LoraConfig(**fields))
    mods = dict(pm.base_model.model.named_modules())
    for x in s.layers:
        m = mods[x.name]
        assert m.lora_A["default"].weight.shape[0] == x.chosen
        assert m.scaling["default"] == pytest.approx(x.alpha / x.chosen)
    # the snippet is valid Python building the same config
    ns = {}
    exec(s.lora_config_snippet(), ns)
    assert ns["config"].rank_pattern == fields["rank_pattern"] and ns["config"].r == fields["r"]


def test_a_selection_targets_only_its_layers(tmp_path):
    """suggest-rank --modules k_proj --layers 1: the LoraConfig adapts exactly that layer in PEFT (a module
    type in target_modules adapted every k_proj); kohya names get no config at all."""
    peft = pytest.importorskip("peft")
    from deltaspec.train.model import load_model

    r = run("suggest-rank", LORA, "--modules", "k_proj", "--layers", "1", "--format", "json", "-q")
    assert r.exit_code == 0, r.output
    fields = json.loads(r.stdout)["peft"]
    pm = peft.get_peft_model(load_model(BASE), peft.LoraConfig(**fields))
    adapted = [n for n, m in pm.base_model.model.named_modules() if hasattr(m, "lora_A")]
    assert adapted == ["model.layers.1.self_attn.k_proj"]
    from safetensors.torch import save_file
    import torch

    g = torch.Generator().manual_seed(0)
    save_file({"lora_unet_a_1_to_q.lora_down.weight": torch.randn(4, 8, generator=g),
               "lora_unet_a_1_to_q.lora_up.weight": torch.randn(8, 4, generator=g)}, tmp_path / "k.safetensors")
    r = run("suggest-rank", tmp_path / "k.safetensors", "-q")
    assert r.exit_code == 0 and "no PEFT config: kohya layer names" in r.output and "LoraConfig(" not in r.output


def test_exact_keys_do_not_match_prefixes():
    """layers.1 vs layers.11: an escaped key matches one module only (PEFT's own get_pattern_key)."""
    pytest.importorskip("peft")
    from peft.utils.other import get_pattern_key

    names = [f"model.layers.{i}.self_attn.q_proj" for i in (1, 11, 21)]
    f = lora_config_fields({names[0]: 3, names[1]: 5, names[2]: 5}, dict.fromkeys(names, 8.0))
    assert f["r"] == 5 and list(f["rank_pattern"]) == [exact_key(names[0])]
    for n in names:
        key = get_pattern_key(list(f["rank_pattern"]), n)
        assert f["rank_pattern"].get(key, f["r"]) == (3 if n == names[0] else 5)


def test_cli_table_fits_80_columns_and_json():
    r = run("suggest-rank", FULL, "--base", BASE, "-q")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert max(len(x) for x in lines) <= 80, [x for x in lines if len(x) > 80]
    assert "*e0.9" in r.output and "LoraConfig(" in r.output and "L3.down_proj" in r.output
    r = run("suggest-rank", LORA, "--policy", "sv-ratio", "--sv-ratio", "4", "--format", "json", "-q")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["chosen"] == "sv_ratio=4" and d["peft"]["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert {x["chosen"] for x in d["layers"]} == {x["ranks"]["sv_ratio=4"] for x in d["layers"]}


def test_cli_saved_analysis_and_plot(tmp_path):
    saved = tmp_path / "lora.json"
    assert run("analyze", LORA, "-o", saved, "-q").exit_code == 0
    fig = tmp_path / "need.svg"
    r = run("suggest-rank", saved, "--plot", fig, "--levels", "0.5,0.9", "-q")
    assert r.exit_code == 0, r.output
    assert "α = r" in r.output and fig.stat().st_size > 1000


@pytest.mark.parametrize("args,msg", [
    (["--energy", "1.5"], "energy share must be in (0, 1]"),
    (["--levels", "0,2"], "--levels must be shares"),
    (["--policy", "fro-error", "--fro-error", "1"], "relative Frobenius error must be in [0, 1)"),
])
def test_cli_errors(args, msg):
    r = run("suggest-rank", LORA, *args, "-q")
    assert r.exit_code == 2 and msg in r.output and "Traceback" not in r.output


def test_cli_full_without_base_is_one_line_error():
    r = run("suggest-rank", FULL, "-q")
    assert r.exit_code == 2 and r.output.startswith("error: ") and "--base" in r.output
