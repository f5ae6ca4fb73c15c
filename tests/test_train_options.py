"""Trainer options: MultiLoRA's scaling learning rate (optimizer groups), the option vocabulary and its old
spellings, step checkpoints (--save-every). Ground truth: Adam's first step moves every parameter with a
nonzero gradient by exactly lr (m̂/√v̂ = ±1), and by 0 where the gradient is 0."""
import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

import deltaspec as ds
from deltaspec.train import TrainConfig, run
from deltaspec.train.model import GPTConfig
from deltaspec_cli.main import cli

TINY = GPTConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64, max_len=48)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    out = tmp_path_factory.mktemp("base") / "base"
    run(TrainConfig(method="pretrain", out=str(out), steps=2, batch_size=4, model=TINY, progress=False), log=lambda s: None)
    return out


def one_step(base, out, **kw):
    cfg = TrainConfig(method="multilora", out=str(out), base=str(base), rank=8, heads=4, steps=1, batch_size=4,
                      eval_per_task=1, progress=False, **kw)
    return run(cfg, log=lambda s: None), load_file(out / "adapter_model.safetensors")


@pytest.mark.parametrize("mult", [1.0, 10.0])
def test_scalings_move_by_their_own_lr_on_the_first_adam_step(base, tmp_path, mult):
    info, sd = one_step(base, tmp_path / "m", lr=1e-3, scaling_lr_mult=mult)
    s = torch.cat([v.flatten() for k, v in sd.items() if k.endswith("lora_scaling")])
    moved = s[s != 0].abs()
    assert moved.numel() > 0.9 * s.numel()  # nearly every row gets a gradient
    torch.testing.assert_close(moved.median(), torch.tensor(1e-3 * mult), rtol=1e-3, atol=0)
    assert moved.max() <= 1e-3 * mult * (1 + 1e-5)
    groups = {g["name"]: g for g in info["optimizer"]["param_groups"]}
    n_scal = 2 * 4 * 4 * 32  # 2 layers × q,k,v,o × 4 heads × d_out 32
    assert groups["scaling"] == {"name": "scaling", "lr": 1e-3 * mult, "weight_decay": 0.0, "parameters": n_scal}
    assert groups["adapter"]["lr"] == 1e-3 and groups["adapter"]["parameters"] == info["trainable_parameters"] - n_scal
    assert info["scaling_lr_mult"] == mult


def test_first_step_leaves_a_and_b_at_init(base, tmp_path):
    """At s = 0 the gradients of A and B are exactly 0: their first Adam step is 0 (no weight decay)."""
    from deltaspec.train.trainer import build

    cfg = TrainConfig(method="multilora", out=str(tmp_path / "m"), base=str(base), rank=8, heads=4, steps=1,
                      batch_size=4, eval_per_task=1, progress=False)
    init = {n: p.detach().clone() for n, p in build(cfg)[0].named_parameters() if p.requires_grad}
    run(cfg, log=lambda s: None)
    sd = load_file(tmp_path / "m" / "adapter_model.safetensors")
    for name, p in init.items():
        saved = sd["base_model.model." + name.replace("lora_A", "lora_A.weight").replace("lora_B", "lora_B.weight")]
        if "lora_scaling" in name:
            assert not torch.equal(saved, p)
        else:
            assert torch.equal(saved, p), name


def test_lora_and_full_have_one_group(base, tmp_path):
    for method, name in (("lora", "adapter"), ("full", "weights")):
        info = run(TrainConfig(method=method, out=str(tmp_path / method), base=str(base), rank=4, steps=1,
                               batch_size=4, eval_per_task=1, progress=False), log=lambda s: None)
        (g,) = info["optimizer"]["param_groups"]
        assert g["name"] == name and g["parameters"] == info["trainable_parameters"] and info["scaling_lr_mult"] is None


def cli_train(*args):
    return CliRunner().invoke(cli, ["train", "--batch-size", "4", "-q", *map(str, args)])


def test_new_option_names_and_hidden_old_spellings(base, tmp_path):
    r = cli_train("--method", "multilora", "--base", base, "-o", tmp_path / "new", "--steps", "1", "-r", "8",
                  "--heads", "2", "--lora-alpha", "3", "--target-modules", "v_proj", "--scaling-lr-mult", "4")
    assert r.exit_code == 0, r.output
    info = json.loads((tmp_path / "new" / "train_info.json").read_text())
    assert (info["rank"], info["per_head_rank"], info["lora_alpha"], info["target_modules"], info["scaling_lr_mult"]) == \
        (8, 4, 3.0, ["v_proj"], 4.0)
    r = cli_train("--method", "lora", "--base", base, "--out", tmp_path / "old", "--steps", "1", "--rank", "4",
                  "--alpha", "3", "--targets", "q_proj")
    assert r.exit_code == 0, r.output
    info = json.loads((tmp_path / "old" / "train_info.json").read_text())
    assert (info["lora_alpha"], info["target_modules"]) == (3.0, ["q_proj"])
    cfg = json.loads((tmp_path / "old" / "adapter_config.json").read_text())
    assert (cfg["lora_alpha"], cfg["target_modules"]) == (3.0, ["q_proj"])
    r = cli_train("--method", "lora", "--base", base, "-o", tmp_path / "x", "--alpha", "3", "--lora-alpha", "4")
    assert r.exit_code == 2 and r.output.strip().splitlines()[-1].startswith("error: --alpha is the old name")
    r = cli_train("--method", "multilora", "--base", base, "-o", tmp_path / "y", "--scaling-lr-mult", "0")
    assert r.exit_code == 2 and "--scaling-lr-mult must be positive" in r.output
    help_text = CliRunner().invoke(cli, ["train", "--help"]).output
    assert "--lora-alpha" in help_text and "--alpha " not in help_text and "--targets" not in help_text
    for opt in ("--steps", "--batch-size", "--seed", "--save-every", "--scaling-lr-mult", "-r, --rank", "-o, --out"):
        line = next(ln for ln in help_text.splitlines() if opt in ln)
        assert len(line.split(opt, 1)[1].split()) > 1, f"{opt} has no help text"


def test_save_every_keeps_readable_step_checkpoints_without_changing_training(base, tmp_path):
    kw = dict(base=str(base), rank=8, heads=4, steps=5, batch_size=4, eval_per_task=1, progress=False)
    run(TrainConfig(method="multilora", out=str(tmp_path / "plain"), **kw), log=lambda s: None)
    run(TrainConfig(method="multilora", out=str(tmp_path / "ck"), save_every=2, **kw), log=lambda s: None)
    final, plain = (load_file(tmp_path / d / "adapter_model.safetensors") for d in ("ck", "plain"))
    assert all(torch.equal(final[k], plain[k]) for k in plain)  # saving does not perturb training
    dirs = sorted(p.name for p in (tmp_path / "ck").iterdir() if p.is_dir())
    assert dirs == ["checkpoint-0", "checkpoint-2", "checkpoint-4"]  # checkpoint-0: the adapter before training
    dirs = dirs[1:]
    norms = []
    for d in dirs:
        info = json.loads((tmp_path / "ck" / d / "train_info.json").read_text())
        assert info["step"] == int(d.split("-")[1]) and info["steps"] == 5 and "per_task_accuracy" not in info
        res = ds.analyze(str(tmp_path / "ck" / d), device="cpu", progress=False)
        assert res.source["format"] == "multilora" and len(res.layers) == 8
        norms.append(sum(r.metrics["frobenius_norm"] for r in res.layers))
    res = ds.analyze(str(tmp_path / "ck"), device="cpu", progress=False)  # the run dir itself: the final step
    norms.append(sum(r.metrics["frobenius_norm"] for r in res.layers))
    assert norms[0] < norms[1] < norms[2]  # the zero-initialised scalings grow
    assert json.loads((tmp_path / "ck" / "train_info.json").read_text())["step"] == 5
    # full fine-tuning: each checkpoint is a model directory, read with --base
    run(TrainConfig(method="full", out=str(tmp_path / "full"), save_every=3, **kw), log=lambda s: None)
    res = ds.analyze(str(tmp_path / "full" / "checkpoint-3"), base=str(base), device="cpu", progress=False)
    assert res.source["format"] == "full" and all(r.metrics["frobenius_norm"] > 0 for r in res.layers)


def test_save_every_with_a_transformers_model(tmp_path):
    """--model runs keep step checkpoints in the same layouts as their final output (PEFT adapter for LoRA)."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    from test_train_hf import bpe_tokenizer

    tok = bpe_tokenizer()
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
                                   bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                   pad_token_id=tok.pad_token_id)
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path / "hf")
    tok.save_pretrained(tmp_path / "hf")
    run(TrainConfig(method="lora", out=str(tmp_path / "o"), hf_model=str(tmp_path / "hf"), rank=4, steps=2, save_every=1,
                    batch_size=2, lr=1e-2, eval_per_task=1, device="cpu", progress=False), log=lambda s: None)
    ck = tmp_path / "o" / "checkpoint-1"
    assert json.loads((ck / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"
    assert json.loads((ck / "train_info.json").read_text())["step"] == 1
    res = ds.analyze(str(ck), device="cpu", progress=False)
    assert res.source["format"] == "peft" and len(res.layers) == 8


def _train_cli(*args):
    return CliRunner().invoke(cli, ["train", "--steps", "1", "--batch-size", "4", "--preset", "tiny", "-q",
                                    *map(str, args)])


@pytest.mark.parametrize("args,words", [
    (["--steps", "0"], "--steps must be at least 1"),
    (["-r", "0"], "-r/--rank must be at least 1"),
    (["--heads", "0", "--method", "multilora"], "--heads must be at least 1"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--lr", "0"], "--lr must be in (0, 10)"),
    (["--lora-alpha", "0"], "--lora-alpha must be positive"),
    (["--target-modules", "q_proj,zzz"], "['zzz'] match no nn.Linear module"),
    (["--target-modules", ","], "--target-modules is empty"),
])
def test_bad_training_values_are_one_line_errors(base, tmp_path, args, words):
    method = [] if "--method" in args else ["--method", "lora"]
    r = _train_cli(*method, "--base", base, "-o", tmp_path / "o", *args)
    assert r.exit_code == 2 and r.output.startswith("error: ") and words in r.output, r.output
    assert not (tmp_path / "o").exists()


def test_out_must_be_new_or_forced_and_never_inside_an_input(base, tmp_path):
    """A non-empty --out is refused without --force; with it, an earlier run's adapter goes, so the folder
    holds one checkpoint (a full run left next to an old LoRA adapter was read as that adapter)."""
    out = tmp_path / "run"
    assert _train_cli("--method", "lora", "--base", base, "-o", out).exit_code == 0
    r = _train_cli("--method", "full", "--base", base, "-o", out)
    assert r.exit_code == 2 and "is not empty" in r.output and "--force" in r.output
    r = _train_cli("--method", "full", "--base", base, "-o", out, "--force")
    assert r.exit_code == 0, r.output
    assert not (out / "adapter_config.json").exists() and ds.load(out, base=base).format == "full"
    r = _train_cli("--method", "lora", "--base", base, "-o", base / "sub")
    assert r.exit_code == 2 and "inside the input checkpoint" in r.output and not (base / "sub").exists()
