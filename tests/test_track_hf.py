"""SpectraCallback in a real transformers Trainer: values in TensorBoard equal `analyze` on the
checkpoint the Trainer saved at the same step (tiny Llama from a config, PEFT LoRA, CPU, seconds)."""
import glob
import math

import pytest
import torch

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

import deltaspec as ds  # noqa: E402
from deltaspec.integrations import SpectraCallback  # noqa: E402
from deltaspec.integrations import record  # noqa: E402


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n=16, length=12, vocab=64):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randint(0, vocab, (n, length), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"input_ids": self.x[i], "labels": self.x[i]}


def tiny_peft_llama(**lora):
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    return peft.get_peft_model(model, peft.LoraConfig(**lora))


def run_trainer(tmp_path, model, callback, steps=4, report_to=("tensorboard",)):
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=steps, per_device_train_batch_size=4, learning_rate=2e-2,
        logging_steps=1, save_steps=2, report_to=list(report_to), use_cpu=True, disable_tqdm=True, seed=0,
        )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Tokens(), callbacks=[callback])
    trainer.train()
    return trainer


def scalars_from_events(folder):
    files = glob.glob(f"{folder}/**/events.out.tfevents*", recursive=True)
    out = {}
    for f in files:
        acc = event_accumulator.EventAccumulator(f, size_guidance={"histograms": 0, "scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
    return out


def test_tensorboard_values_equal_analyze_of_checkpoint(tmp_path):
    model = tiny_peft_llama(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_rslora=True,
                            alpha_pattern={"v_proj": 16}, rank_pattern={"v_proj": 2})
    trainer = run_trainer(tmp_path, model, SpectraCallback(every=2))
    tb = scalars_from_events(tmp_path / "out")
    assert "train/loss" in tb  # the Trainer's own logging is untouched
    checked = 0
    for step in (2, 4):
        res = ds.analyze(str(tmp_path / "out" / f"checkpoint-{step}"), progress=False)
        for mod, agg in res.aggregates().items():
            for metric in ("normalized_entropy", "effective_rank", "top1_energy", "frobenius_norm"):
                want = agg["mean"][metric]
                got = tb[f"train/spectra/{mod}/{metric}"][step]
                assert math.isclose(got, want, rel_tol=1e-5), (step, mod, metric, got, want)
                checked += 1
    assert checked == 16
    logged = [h for h in trainer.state.log_history if "spectra/q_proj/normalized_entropy" in h]
    assert [h["step"] for h in logged] == [2, 4]
    # the trajectory file holds the same analysis, read as the last step by `analyze`-like readers
    header, points = record.read(tmp_path / "out" / record.TRAJECTORY_FILE)
    assert [s for s, _ in points] == [2, 4] and header["modules"] == ["q_proj", "v_proj"]
    last = points[-1][1]
    want = ds.analyze(str(tmp_path / "out" / "checkpoint-4"), progress=False)
    assert [r.name for r in last.layers] == [r.name for r in want.layers]
    for a, b in zip(last.layers, want.layers):
        assert a.singular_values == pytest.approx(b.singular_values, rel=1e-5)


def test_histograms_and_per_layer(tmp_path):
    model = tiny_peft_llama(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    run_trainer(tmp_path, model, SpectraCallback(every=2, per_layer=True, histograms=True, modules=["q_proj"],
                                                 trajectory=False), steps=2)
    files = glob.glob(f"{tmp_path}/out/**/events.out.tfevents*", recursive=True)
    acc = event_accumulator.EventAccumulator(files[0], size_guidance={"histograms": 0, "scalars": 0})
    acc.Reload()
    assert "spectra/q_proj/singular_values" in acc.Tags()["histograms"]
    tb = scalars_from_events(tmp_path / "out")
    assert "train/spectra/layer/model.layers.1.self_attn.q_proj/normalized_entropy" in tb
    assert not any("v_proj" in t for t in tb)  # modules= selects
    assert not (tmp_path / "out" / record.TRAJECTORY_FILE).exists()
