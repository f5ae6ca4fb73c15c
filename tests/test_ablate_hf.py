"""`deltaspec ablate` on runs of a local transformers model (`deltaspec train --model`): a tiny LLaMA
built offline. k = full reproduces the run's recorded evaluation; removing everything gives the base."""
import os

import pytest
import torch

from deltaspec.train import TrainConfig, run
from deltaspec.train import ablate as AB
from deltaspec.train.trainer import evaluate, tokenizer_and_len

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from test_train_hf import bpe_tokenizer  # the offline tokenizer of the trainer's HF tests

    tok = bpe_tokenizer()
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   num_key_value_heads=2, intermediate_size=64, max_position_embeddings=256,
                                   bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                   pad_token_id=tok.pad_token_id)
    root = tmp_path_factory.mktemp("abl")
    base = root / "base"
    transformers.LlamaForCausalLM(cfg).save_pretrained(base)
    tok.save_pretrained(base)
    for method in ("multilora", "full"):
        run(TrainConfig(method=method, out=str(root / method), hf_model=str(base), rank=8, heads=4, steps=4,
                        batch_size=4, lr=1e-2, eval_per_task=3, device="cpu", progress=False), log=lambda s: None)
    return root


def test_hf_multilora_full_and_zero(runs):
    r = AB.open_run(str(runs / "multilora"), "ML")
    assert len(r.layers) == 8 and {x.rank for x in r.layers} == {8}
    AB.set_ablation(r, "trunc", "full")
    tok, max_len = tokenizer_and_len(r.model)
    assert AB.accuracy(r.model, r.seed, 3, max_len, tok) == r.info["per_task_accuracy"]
    AB.set_ablation(r, "remove", 2)
    assert AB.accuracy(r.model, 0, 3, max_len, tok) == evaluate(r.model, 0, 3, max_len, "cpu", tok)
    base = AB.load_model(r.base, r.info)
    AB.set_ablation(r, "random", "full")
    for name, p in base.named_parameters():
        assert torch.allclose(r.model.get_parameter(name), p, atol=1e-6), name


def test_hf_full_ft(runs):
    r = AB.open_run(str(runs / "full"), "FT")
    assert {x.rank for x in r.layers} == {32} and len(r.layers) == 8  # q/k/v/o of 2 layers
    ft = AB.load_model(str(runs / "full"), r.info)
    AB.set_ablation(r, "trunc", "full")
    for x in r.layers:
        assert torch.allclose(x.weight, ft.hf.get_submodule(x.name).weight, atol=1e-5)
    with pytest.raises(Exception, match="larger than the rank"):
        AB.resolve_k(r, 33)
