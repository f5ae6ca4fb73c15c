"""`deltaspec train --model PATH`: a local transformers causal LM gets the same adapters as the built-in GPT.

A tiny LLaMA (hidden 32, 2 layers) and a byte-level BPE tokenizer are built offline in code and saved
like any HF model directory. Ground truth is independent of deltaspec: PEFT's own merge_and_unload(),
hashlib over the weight file, transformers loading the full-FT output, safetensors keys on disk.
"""
import hashlib
import json
import os
import shutil
import sys

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

import deltaspec as ds
from deltaspec.errors import DeltaspecError
from deltaspec.train import TrainConfig, run
from deltaspec.train import data as D
from deltaspec.train.hf import HFTokenizer
from deltaspec_cli.main import cli

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
ATTN_NAMES = [f"model.layers.{i}.self_attn.{m}" for i in range(2) for m in ATTN]


def bpe_tokenizer(specials=("<pad>", "<s>", "</s>", "<unk>"), **tokens):
    """A byte-level BPE (GPT-2 style) trained in milliseconds on the generated pretraining text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator([D.pretrain_text(0, 20_000)], trainers.BpeTrainer(
        vocab_size=320, special_tokens=list(specials), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tokens = tokens or {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tk, **tokens)


@pytest.fixture(scope="module")
def hf_base(tmp_path_factory):
    tok = bpe_tokenizer()
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   num_key_value_heads=2, intermediate_size=64, max_position_embeddings=256,
                                   bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                   pad_token_id=tok.pad_token_id)
    path = tmp_path_factory.mktemp("hf") / "tiny-llama"
    transformers.LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def runs(hf_base, tmp_path_factory):
    """One short run per method on the task mixture (lr high enough that every update is clearly nonzero)."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for method in ("lora", "multilora", "full"):
        cfg = TrainConfig(method=method, out=str(root / method), hf_model=str(hf_base), rank=8, heads=4, steps=4,
                          batch_size=4, lr=1e-2, eval_per_task=2, device="cpu", progress=False)
        out[method] = (root / method, run(cfg, log=lambda s: None))
    return out


def base_weights(path, dtype=torch.float32):
    return transformers.AutoModelForCausalLM.from_pretrained(path, local_files_only=True).to(dtype)


def test_every_method_writes_its_layout_and_train_info(hf_base, runs):
    sha = hashlib.sha256((hf_base / "model.safetensors").read_bytes()).hexdigest()
    for method, (out, info) in runs.items():
        on_disk = json.loads((out / "train_info.json").read_text())
        assert on_disk["method"] == method and on_disk["base"] == str(hf_base) and on_disk["base_sha256"] == sha
        assert on_disk["model_config"]["model_type"] == "llama" and on_disk["model_config"]["hidden_size"] == 32
        assert set(on_disk["per_task_accuracy"]) == {"arithmetic", "classify", "facts", "instruct"}
        assert on_disk["max_len"] == 128 and on_disk["steps"] == 4
    lora = load_file(runs["lora"][0] / "adapter_model.safetensors")
    assert sorted(lora) == sorted(f"base_model.model.{n}.lora_{f}.weight" for n in ATTN_NAMES for f in "AB")
    assert lora["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].shape == (8, 32)
    cfg = json.loads((runs["lora"][0] / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(hf_base) and cfg["task_type"] == "CAUSAL_LM"
    ml = load_file(runs["multilora"][0] / "adapter_model.safetensors")
    assert ml["base_model.model.model.layers.1.self_attn.o_proj.lora_scaling"].shape == (4, 32)
    # the full-FT output is itself a model directory: transformers loads model and tokenizer from it
    full = runs["full"][0]
    ft = transformers.AutoModelForCausalLM.from_pretrained(full, local_files_only=True)
    tok = transformers.AutoTokenizer.from_pretrained(full, local_files_only=True)
    assert tok.encode("Q: 12+30=") == transformers.AutoTokenizer.from_pretrained(hf_base).encode("Q: 12+30=")
    w0 = base_weights(hf_base).state_dict()
    assert ft.state_dict().keys() == w0.keys()
    assert not torch.equal(ft.state_dict()["model.layers.0.self_attn.q_proj.weight"],
                           w0["model.layers.0.self_attn.q_proj.weight"])


def test_peft_merge_equals_the_delta_deltaspec_reads(hf_base, runs):
    peft = pytest.importorskip("peft")
    out = runs["lora"][0]
    w0 = base_weights(hf_base, torch.float64).state_dict()
    merged = peft.PeftModel.from_pretrained(base_weights(hf_base, torch.float64), str(out)).merge_and_unload()
    merged = merged.state_dict()
    updates = ds.load(out)
    assert [u.name for u in updates] == ATTN_NAMES
    for u in updates:
        ours = u.load().materialize().double()
        theirs = merged[u.name + ".weight"] - w0[u.name + ".weight"]
        assert ours.norm() > 1e-3  # a real update, not a zero B
        assert (ours - theirs).norm() <= 1e-6 * theirs.norm(), u.name
    # untouched layers stay untouched
    assert torch.equal(merged["model.layers.0.mlp.up_proj.weight"], w0["model.layers.0.mlp.up_proj.weight"])


def test_analyze_full_against_the_hf_base_and_multilora_names(hf_base, runs):
    res = ds.analyze(runs["full"][0], base=hf_base)
    names = {r.name for r in res.layers}
    mlp = {f"model.layers.{i}.mlp.{m}" for i in range(2) for m in ("gate_proj", "up_proj", "down_proj")}
    assert set(ATTN_NAMES) | mlp <= names
    assert all(r.metrics["frobenius_norm"] > 0 for r in res.layers if r.name in names - {"lm_head"})
    # ΔW of one layer against the two safetensors files read directly
    ft, b0 = (load_file(p / "model.safetensors") for p in (runs["full"][0], hf_base))
    k = "model.layers.1.mlp.down_proj"
    d = next(u for u in ds.load(runs["full"][0], base=hf_base) if u.name == k).load().materialize()
    torch.testing.assert_close(d, ft[k + ".weight"] - b0[k + ".weight"])
    ml, lora = ds.load(runs["multilora"][0]), ds.load(runs["lora"][0])
    assert [u.name for u in ml] == [u.name for u in lora] == ATTN_NAMES
    assert all(u.rank_bound == 8 and u.load().materialize().norm() > 0 for u in ml)


def write_jsonl(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "capital of Kalo:", "response": "Mitar"}\n{"text": "plain text line"}\n')
    return data


def test_cli_lora_on_jsonl_then_analyze_without_flags(hf_base, tmp_path):
    data = write_jsonl(tmp_path)
    outs = []
    for name in ("a", "b"):
        outs.append(tmp_path / name)
        r = CliRunner().invoke(cli, ["train", "--method", "lora", "--model", str(hf_base), "--out", str(outs[-1]),
                                     "--targets", "q_proj,v_proj,down_proj", "--steps", "2", "--batch-size", "2",
                                     "--rank", "4", "--data", str(data), "--max-len", "16", "--device", "cpu", "-q"])
        assert r.exit_code == 0, r.output
    a, b = (load_file(o / "adapter_model.safetensors") for o in outs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # seeded: the same adapters
    assert {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in a} == {"q_proj", "v_proj", "down_proj"}
    info = json.loads((outs[0] / "train_info.json").read_text())
    assert info["max_len"] == 16 and info["data"] == str(data) and info["per_task_accuracy"] == {}
    r = CliRunner().invoke(cli, ["analyze", str(outs[0]), "--format", "json"])
    assert r.exit_code == 0, r.output
    assert "model.layers.1.mlp.down_proj" in {layer["name"] for layer in json.loads(r.stdout)["layers"]}


def one_line_error(args, *expected):
    r = CliRunner().invoke(cli, ["train", "--steps", "1", "-q", *map(str, args)])
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    for e in expected:
        assert str(e) in lines[0], lines[0]
    return lines[0]


def test_cli_errors_are_one_line(hf_base, tmp_path):
    out = tmp_path / "o"
    one_line_error(["--method", "lora", "--model", hf_base, "--base", tmp_path, "--out", out], "--model", "--base")
    one_line_error(["--method", "pretrain", "--model", hf_base, "--out", out], "pretrain")
    one_line_error(["--method", "lora", "--model", tmp_path / "nowhere", "--out", out], tmp_path / "nowhere")
    no_tok = tmp_path / "no-tokenizer"
    no_tok.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(hf_base / f, no_tok / f)
    one_line_error(["--method", "lora", "--model", no_tok, "--out", out], no_tok, "tokenizer")
    not_lm = tmp_path / "vit"
    transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(not_lm)
    shutil.copy(hf_base / "tokenizer.json", not_lm)
    shutil.copy(hf_base / "tokenizer_config.json", not_lm)
    one_line_error(["--method", "full", "--model", not_lm, "--out", out], not_lm, "causal language model")
    msg = one_line_error(["--method", "multilora", "--model", hf_base, "--targets", "c_attn", "--out", out],
                         "c_attn", "model.layers.0.self_attn.q_proj")
    assert "lm_head" not in msg or "in all" in msg  # a few names, not all of them
    one_line_error(["--method", "full", "--model", hf_base, "--out", hf_base], "overwrite")
    one_line_error(["--method", "lora", "--max-len", "512", "--model", hf_base, "--out", out], "max_position_embeddings")
    assert not out.exists()


def test_missing_transformers_says_how_to_install(hf_base, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now raises ImportError
    with pytest.raises(DeltaspecError, match=r"pip install 'deltaspec\[hf\]'"):
        run(TrainConfig(method="lora", out=str(tmp_path / "o"), hf_model=str(hf_base), steps=1, progress=False),
            log=lambda s: None)


def test_tokenizer_without_bos_or_pad_falls_back_to_eos():
    tok = HFTokenizer(bpe_tokenizer(("<|endoftext|>",), eos_token="<|endoftext|>"), "gpt2-like")
    eos = tok.tok.convert_tokens_to_ids("<|endoftext|>")
    assert (tok.bos, tok.eos, tok.pad) == (eos, eos, eos)
    assert tok.decode(tok.encode("### reverse abc\n>cba")) == "### reverse abc\n>cba"
    ids, tgt = D.encode_pair(tok, "Q: 1+2=", "3", 32)
    assert ids[0] == eos and ids[-1] == eos and tgt[-2] == eos and tgt[-1] == -100
    with pytest.raises(DeltaspecError, match="no EOS"):
        HFTokenizer(bpe_tokenizer(("<unk>",), unk_token="<unk>"), "no-eos")


def test_sharded_base_hash_covers_every_shard_in_index_order(hf_base, tmp_path):
    sharded = tmp_path / "sharded"
    base_weights(hf_base).save_pretrained(sharded, max_shard_size="40KB")
    transformers.AutoTokenizer.from_pretrained(hf_base).save_pretrained(sharded)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())["weight_map"]
    shards = list(dict.fromkeys(index.values()))
    assert len(shards) > 1
    info = run(TrainConfig(method="lora", out=str(tmp_path / "o"), hf_model=str(sharded), steps=1, batch_size=2,
                           data=str(write_jsonl(tmp_path)), device="cpu", progress=False), log=lambda s: None)
    assert info["base_sha256"] == hashlib.sha256(b"".join((sharded / s).read_bytes() for s in shards)).hexdigest()
    assert [u.name for u in ds.load(tmp_path / "o")] == ATTN_NAMES
