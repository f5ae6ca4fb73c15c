"""`deltaspec ablate` on the shipped samples: k = full reproduces the run's own evaluation (the numbers
the trainer recorded in train_info.json), removing every direction reproduces the base model, the
batched scorer agrees with the trainer's `evaluate`, and bad input is one line with exit code 2."""
import json
import os
import shutil

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from deltaspec.train import ablate as AB
from deltaspec.train import data as D
from deltaspec.train.trainer import evaluate, tokenizer_and_len
from deltaspec_cli.main import cli

ROOT = os.path.join(os.path.dirname(__file__), "..")
S = os.path.join(ROOT, "sample_checkpoints")
pytestmark = pytest.mark.skipif(not os.path.isfile(os.path.join(S, "base", "model.safetensors")),
                                reason="needs sample_checkpoints/")


@pytest.fixture(scope="module")
def lora():
    return AB.open_run(os.path.join(S, "lora"), "LoRA", base=os.path.join(S, "base"))


def test_full_reproduces_the_runs_recorded_accuracy(lora):
    AB.set_ablation(lora, "trunc", "full")
    tok, max_len = tokenizer_and_len(lora.model)
    got = AB.accuracy(lora.model, lora.seed, 40, max_len, tok)
    assert got == lora.info["per_task_accuracy"]  # 160 greedy decodes, scored by the trainer after training


def test_remove_all_is_the_base_and_scorer_matches_evaluate(lora):
    base = AB.load_model(lora.base, lora.info)
    for mode in ("remove", "random"):
        AB.set_ablation(lora, mode, "full")
        for name, p in base.named_parameters():
            assert torch.allclose(lora.model.get_parameter(name), p, atol=1e-6), name
    tok, max_len = tokenizer_and_len(base)
    AB.set_ablation(lora, "remove", 1)
    for model in (base, lora.model):  # the batched scorer against the trainer's one-by-one evaluate
        assert AB.accuracy(model, 0, 4, max_len, tok) == evaluate(model, 0, 4, max_len, "cpu", tok)
    AB.set_ablation(lora, None, 0)


def test_heldout_loss_is_the_mean_answer_token_cross_entropy(lora):
    tok, max_len = tokenizer_and_len(lora.model)
    total = n = 0
    with torch.no_grad():
        for _, p, a in D.eval_set(1, 3):  # one example at a time, no padding
            ids, tgt = D.encode_pair(tok, p, a, max_len)
            logits = lora.model(torch.tensor([ids]))[0]
            total += float(F.cross_entropy(logits, torch.tensor(tgt), ignore_index=-100, reduction="sum"))
            n += sum(t != -100 for t in tgt)
    assert AB.heldout_loss(lora.model, 1, 3, max_len, tok) == pytest.approx(total / n, rel=1e-5)


def test_full_ft_trunc_full_is_the_fine_tune():
    run = AB.open_run(os.path.join(S, "full"), "FT", base=os.path.join(S, "base"))
    assert {x.rank for x in run.layers} == {128} and len(run.layers) == 16  # q/k/v/o by default
    ft = AB.load_model(os.path.join(S, "full"), run.info)
    AB.set_ablation(run, "trunc", "full")
    for x in run.layers:
        ref = ft.get_submodule(x.name).weight
        assert (x.weight - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_cli_json_table_plot_and_errors(tmp_path):
    r = CliRunner()
    out, fig = tmp_path / "a.json", tmp_path / "a.png"
    res = r.invoke(cli, ["ablate", os.path.join(S, "multilora"), "--k", "2,full", "--modes", "remove,random",
                         "--per-task", "1", "-q", "-o", str(out), "--plot", str(fig)])
    assert res.exit_code == 0, res.output
    d = json.loads(out.read_text())
    assert d["k"] == [2, "full"] and set(d["cost_per_k"]) == {"2", "full"} and fig.stat().st_size > 0
    (run,) = d["runs"]
    cell = {(x["mode"], x["k"]): x for x in run["results"]}
    assert cell[("remove", "full")]["removed_energy"] == pytest.approx(1.0)
    assert cell[("random", 2)]["removed_energy"] == pytest.approx(cell[("remove", 2)]["removed_energy"], rel=1e-9)
    from deltaspec_cli.ablate import format_table

    assert max(len(line) for line in format_table(d, 80).splitlines()) <= 80
    res = r.invoke(cli, ["plot", "ablation", str(out), "-o", str(tmp_path / "b.png")])  # redrawn from the JSON
    assert res.exit_code == 0 and (tmp_path / "b.png").read_bytes() == fig.read_bytes()
    res = r.invoke(cli, ["plot", "ablation", os.path.join(S, "lora", "adapter_config.json"), "-o", str(fig)])
    assert res.exit_code == 2 and "not ablation data" in res.output

    def err(*args):
        res = r.invoke(cli, ["ablate", *args, "-q"])
        assert res.exit_code == 2 and res.output.count("\n") == 1 and res.output.startswith("error: "), res.output
        return res.output

    assert "larger than the rank" in err(os.path.join(S, "lora"), "--k", "17")
    assert "unknown ablation mode" in err(os.path.join(S, "lora"), "--modes", "keep")
    assert "no train_info.json" in err(str(tmp_path))
    assert "SHA-256 differs" in err(os.path.join(S, "lora"), "--base", os.path.join(S, "full"))
    moved = tmp_path / "run"
    shutil.copytree(os.path.join(S, "lora"), moved)
    info = json.loads((moved / "train_info.json").read_text())
    (moved / "train_info.json").write_text(json.dumps({**info, "base": str(tmp_path / "gone")}))
    assert "is not a directory here" in err(str(moved))
