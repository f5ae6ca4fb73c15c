"""deltaspec.track on live models: every layer kind against numpy's SVD of the real merged weights
(PEFT's own merge_and_unload for PEFT layers), the optimizer hook, full fine-tuning's budget, errors,
and DDP (gloo, two CPU processes): only rank 0 measures and writes."""
import copy
import math
import os

import numpy as np
import pytest
import torch
import torch.nn as nn

import deltaspec as ds
from deltaspec.errors import DeltaspecError
from deltaspec.integrations import record
from deltaspec.train.layers import wrap


def svd64(M):
    return np.linalg.svd(np.asarray(M, dtype=np.float64), compute_uv=False)


def assert_spectra(result, truth: dict):
    """Each layer's σ equals numpy's float64 SVD of the true ΔW (nonzero part), float32 tolerance."""
    assert sorted(r.name for r in result.layers) == sorted(truth)
    for r in result.layers:
        want = svd64(truth[r.name])
        n = len(r.singular_values)
        assert r.singular_values == pytest.approx(want[:n], rel=1e-4, abs=1e-5 * want[0])
        assert np.all(want[n:] <= 1e-5 * want[0])


def peft_truth(peft_model, base):
    """ΔW = (merged weight) − W0 by PEFT's own merge, per cleaned module name."""
    merged = copy.deepcopy(peft_model).merge_and_unload()
    base_w = {n: m.weight.detach() for n, m in base.named_modules() if hasattr(m, "weight")}
    return {n: (m.weight.detach() - base_w[n]).numpy() for n, m in merged.named_modules()
            if n in base_w and not torch.equal(m.weight.detach(), base_w[n])}


def perturbed(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora" in n:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def test_peft_dora_rslora_patterns_and_gpt2_conv1d():
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    base = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=50,
                                                                 n_positions=16))
    # GPT-2's Conv1D (fan_in_fan_out), rsLoRA, rank and alpha patterns, DoRA with a moved magnitude vector
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True, use_rslora=True,
                          rank_pattern={"h.1.attn.c_attn": 2}, alpha_pattern={"c_proj": 3}, use_dora=True)
    model = perturbed(peft.get_peft_model(copy.deepcopy(base), cfg))
    tracker = ds.track(model, every=1, metrics=None)
    assert {u.meta["variant"] for u in tracker.layers} == {"dora"}
    tracker.step()
    truth = {n: d.T for n, d in peft_truth(model, base).items()}  # Conv1D stores (in, out): the checkpoint orientation
    assert_spectra(tracker.last, {n: d.T for n, d in truth.items()})


def test_peft_lora_linear_and_embedding():
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    cfg = transformers.LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=2)
    torch.manual_seed(0)
    base = transformers.LlamaForCausalLM(cfg)
    model = perturbed(peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(
        r=3, lora_alpha=6, target_modules=["q_proj", "down_proj", "embed_tokens"])))
    tracker = ds.track(model, every=2)
    assert tracker.step() is None  # step 1 of every=2
    scalars = tracker.step()
    assert set(scalars) >= {"spectra/q_proj/normalized_entropy", "spectra/embed_tokens/top1_energy"}
    truth = peft_truth(model, base)
    truth["model.embed_tokens"] = truth["model.embed_tokens"]  # (vocab, dim), as the PEFT reader orients it
    assert_spectra(tracker.last, truth)
    q = tracker.last["model.layers.0.self_attn.q_proj"]
    assert scalars["spectra/q_proj/normalized_entropy"] == pytest.approx(
        ds.metrics.normalized_entropy(svd64(truth["model.layers.0.self_attn.q_proj"]), 16), rel=1e-5)
    assert q.n_ref == 16


def test_optimizer_hook_writes_trajectory(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 4))
    wrap(model, ["0", "2"], "lora", rank=4, alpha=8.0)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    out = tmp_path / "spectra.jsonl"
    with ds.track(model, every=3, optimizer=opt, out=out, per_layer=True) as tracker:
        for _ in range(6):
            opt.zero_grad()
            model(torch.randn(8, 12)).pow(2).mean().backward()
            opt.step()
    truth = {n: m.delta_weight().detach().numpy() for n, m in (("0", model[0]), ("2", model[2]))}
    assert [s for s, _ in tracker.history] == [3, 6]
    assert "spectra/layer/net.0/normalized_entropy" not in tracker.history[0][1]
    assert "spectra/layer/0/normalized_entropy" in tracker.history[0][1]
    for _ in range(6):
        opt.step()  # the hook is gone after the with-block
    assert len(tracker.history) == 2
    header, points = record.read(out)
    assert [s for s, _ in points] == [3, 6]
    assert_spectra(points[-1][1], truth)


def test_full_finetuning_copy_and_budget():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 10))
    w0 = model[2].weight.detach().clone()
    tracker = ds.track(model, every=1, full=True, modules=["2"])
    assert tracker.snapshot.bytes == 30 * 10 * 4
    with torch.no_grad():
        model[2].weight.add_(torch.randn(10, 30) * 0.1)
    tracker.step()
    assert_spectra(tracker.last, {"2": (model[2].weight.detach() - w0).numpy()})
    with pytest.raises(DeltaspecError, match=r"need 2\.3 KiB, over max_copy_bytes=1\.0 KiB"):
        ds.track(model, full=True, modules=["0"], max_copy_bytes=1024)


def test_one_line_errors():
    plain = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(DeltaspecError, match="no adapter layers found in the model") as e:
        ds.track(plain)
    assert "\n" not in str(e.value)
    wrap(plain, ["0"], "lora", rank=2, alpha=2.0)
    with pytest.raises(DeltaspecError, match=r"modules=\['k_proj'\]: no such module type; available: 0") as e:
        ds.track(plain, modules=["k_proj"])
    with pytest.raises(DeltaspecError, match="metrics=\\['entropy'\\]: unknown; available: frobenius_norm"):
        ds.track(plain, metrics=["entropy"])
    with pytest.raises(DeltaspecError, match="every=0"):
        ds.track(plain, every=0)


def _ddp_worker(rank, world, port, folder):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))
    wrap(net, ["0", "2"], "multilora", rank=4, alpha=4.0, heads=2)
    model = nn.parallel.DistributedDataParallel(net)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    tracker = ds.track(model, every=2, optimizer=opt, out=os.path.join(folder, f"rank{rank}.jsonl"))
    g = torch.Generator().manual_seed(rank)
    for _ in range(4):
        opt.zero_grad()
        model(torch.randn(4, 8, generator=g)).pow(2).mean().backward()
        opt.step()
    truth = {n: net[int(n)].delta_weight().detach().numpy().tolist() for n in ("0", "2")}
    torch.save({"history": tracker.history, "truth": truth}, os.path.join(folder, f"out{rank}.pt"))
    dist.destroy_process_group()


def test_ddp_gloo_rank0_only(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"out{r}.pt", weights_only=False) for r in (0, 1))
    assert [s for s, _ in r0["history"]] == [2, 4] and r1["history"] == []
    assert (tmp_path / "rank0.jsonl").exists() and not (tmp_path / "rank1.jsonl").exists()
    _, points = record.read(tmp_path / "rank0.jsonl")
    assert_spectra(points[-1][1], {n: np.array(d) for n, d in r0["truth"].items()})
    assert r0["truth"] == r1["truth"]  # DDP kept the replicas equal: rank 0's view is everyone's


def test_trajectory_file_of_a_killed_run(tmp_path):
    model = nn.Sequential(nn.Linear(6, 6))
    wrap(model, ["0"], "lora", rank=2, alpha=2.0)
    with torch.no_grad():
        model[0].lora_B.normal_()
    out = tmp_path / "t.jsonl"
    tracker = ds.track(model, every=1, out=out)
    tracker.step(), tracker.step()
    text = out.read_text()
    out.write_text(text + '{"step": 3, "analy')  # killed while writing step 3
    assert [s for s, _ in record.read(out)[1]] == [1, 2]
    assert record.load_analysis(out).layers[0].metrics == tracker.last.layers[0].metrics
    lines = text.splitlines()
    out.write_text("\n".join([lines[0], "{bad", lines[2]]) + "\n")
    with pytest.raises(ds.DeltaspecError, match="line 2: not a tracked step"):
        record.read(out)
