"""Full fine-tuning checkpoints: ΔW = W_ft − W0 from every layout, compared with float64 subtraction."""
import os
import sys

import pytest
import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from deltaspec.errors import MissingBaseError, ShapeMismatchError  # noqa: E402
from deltaspec.io import detect, load  # noqa: E402
from io_fixtures import LLAMA_LIKE, close, random_state, write_sharded  # noqa: E402

LAYERS = ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj", "model.layers.0.mlp.down_proj",
          "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.k_proj", "model.layers.1.mlp.down_proj"]


def pair(seed=0, dtype=torch.float32, step=0.05):
    base = random_state(LLAMA_LIKE, seed, dtype)
    noise = random_state(LLAMA_LIKE, seed + 100)
    ft = {k: (v.float() + step * noise[k]).to(dtype) for k, v in base.items()}
    return base, ft


def expected(base, ft, name):
    return ft[name + ".weight"].double() - base[name + ".weight"].double()


def save_dir(sd, d, bin_file=False):
    d.mkdir(parents=True, exist_ok=True)
    if bin_file:
        torch.save(sd, d / "pytorch_model.bin")
    else:
        save_file(sd, d / "model.safetensors")
    return d


def check(u, base, ft, names=LAYERS):
    assert [x.name for x in u] == names
    for x in u:
        assert x.kind == "dense" and x.rank_bound == min(x.shape)
        d = x.load().materialize()
        assert d.dtype == torch.float32 and tuple(d.shape) == x.shape
        close(d, expected(base, ft, x.name))


def test_single_file_and_embeddings(tmp_path):
    base, ft = pair()
    b, f = save_dir(base, tmp_path / "base"), save_dir(ft, tmp_path / "ft")
    assert detect(f) == "full"
    u = load(f, base=b)
    assert u.format == "full" and u.base == str(b) and u.path == str(f)
    check(u, base, ft)  # 1-D norms and embeddings are not layers by default
    with_emb = load(f / "model.safetensors", base=b / "model.safetensors", include_embeddings=True)
    check(with_emb, base, ft, ["model.embed_tokens"] + LAYERS + ["lm_head"])


def test_sharded_with_index(tmp_path):
    base, ft = pair(1)
    write_sharded(ft, tmp_path / "ft", n=3)
    write_sharded(base, tmp_path / "base", n=2)
    assert detect(tmp_path / "ft") == "full"
    u = load(tmp_path / "ft", base=tmp_path / "base")
    check(u, base, ft)
    assert len({x.source for x in u}) == 3  # layers come from their own shards


def test_pytorch_model_bin_single_and_sharded(tmp_path):
    base, ft = pair(2)
    save_dir(ft, tmp_path / "ft", bin_file=True)
    write_sharded(base, tmp_path / "base", n=2, stem="pytorch_model", bin_files=True)
    check(load(tmp_path / "ft", base=tmp_path / "base"), base, ft)
    check(load(tmp_path / "ft" / "pytorch_model.bin", base=save_dir(base, tmp_path / "b2")), base, ft)


def test_bf16_upcast_before_subtract(tmp_path):
    base, ft = pair(3, torch.bfloat16, step=0.5)
    b, f = save_dir(base, tmp_path / "base"), save_dir(ft, tmp_path / "ft")
    u = load(f, base=b)
    assert {x.dtype for x in u} == {"bfloat16"}
    differs = False
    for x in u:
        d = x.load().materialize()
        k = x.name + ".weight"
        assert d.dtype == torch.float32
        assert torch.equal(d, ft[k].float() - base[k].float())  # exact: upcast, then subtract
        differs |= not torch.equal(d, (ft[k] - base[k]).float())  # bf16 subtraction rounds
    assert differs


def test_stored_tensors_are_never_modified(tmp_path):
    """ΔW is built in place in a private copy: with W_ft already float32 (no upcast copy) and a file
    handle kept open between reads, loading a layer twice must give the same ΔW both times."""
    base, ft = pair(7, torch.float32)
    for bin_file in (False, True):
        sub = tmp_path / ("bin" if bin_file else "st")
        u = load(save_dir(ft, sub / "ft", bin_file), base=save_dir(base, sub / "base", bin_file))
        for x in u:
            first, second = x.load().materialize(), x.load().materialize()
            assert torch.equal(first, second)
            close(second, expected(base, ft, x.name))


def test_mixed_precision_promotes_to_float64(tmp_path):
    """A float64 base against a bf16 fine-tune: ΔW in float64 (both upcast, then subtracted)."""
    base, ft = pair(8, torch.float64)
    ft = {k: v.to(torch.bfloat16) for k, v in ft.items()}
    u = load(save_dir(ft, tmp_path / "ft"), base=save_dir(base, tmp_path / "base"))
    for x in u:
        d = x.load().materialize()
        assert d.dtype == torch.float64
        assert torch.equal(d, ft[x.name + ".weight"].double() - base[x.name + ".weight"])


def test_transformers_models_roundtrip(tmp_path):
    pytest.importorskip("transformers")
    from io_fixtures import tiny_model

    for kind in ("llama", "gpt2"):
        m0 = tiny_model(kind, 0)
        m0.save_pretrained(tmp_path / f"{kind}-base")
        base = {k: v.clone() for k, v in m0.state_dict().items()}
        with torch.no_grad():
            for p in m0.parameters():
                p.add_(0.01 * torch.randn_like(p))
        m0.save_pretrained(tmp_path / f"{kind}-ft")
        ft = m0.state_dict()
        u = load(tmp_path / f"{kind}-ft", base=tmp_path / f"{kind}-base")
        names = [x.name for x in u]
        assert len(names) == (14 if kind == "llama" else 8)
        # nothing is skipped silently: the 1-D tensors and the embeddings are named, as notes (expected
        # omissions, one quiet line in the CLI), not as warnings
        assert not u.warnings and len(u.notes) == 2 and "1-D (norm scales, biases)" in u.notes[0]
        assert "embedding update(s) skipped" in u.notes[1] and "include_embeddings=True" in u.notes[1]
        if kind == "gpt2":
            assert names[:2] == ["transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj"]
            assert u[0].shape == (32, 96)  # Conv1D's stored (in, out) orientation
        for x in u:
            close(x.load().materialize(), expected(base, ft, x.name))


def test_extra_missing_and_mismatch(tmp_path):
    base, ft = pair(4)
    ft["model.layers.1.self_attn.v_proj.weight"] = torch.randn(16, 32)
    del ft["model.norm.weight"]
    u = load(save_dir(ft, tmp_path / "ft"), base=save_dir(base, tmp_path / "base"))
    assert "model.layers.1.self_attn.v_proj" not in [x.name for x in u]
    assert any("v_proj" in w and "not in the base" in w for w in u.warnings)
    assert any("model.norm.weight" in w for w in u.warnings)
    ft["model.layers.0.self_attn.k_proj.weight"] = torch.randn(32, 32)
    save_dir(ft, tmp_path / "ft2")
    with pytest.raises(ShapeMismatchError) as e:
        load(tmp_path / "ft2", base=tmp_path / "base")
    msg = str(e.value)
    assert "model.layers.0.self_attn.k_proj.weight" in msg and str(tmp_path / "ft2") in msg
    assert str(tmp_path / "base") in msg
    with pytest.raises(MissingBaseError, match="base="):
        load(tmp_path / "ft")


def test_identical_checkpoints_give_zero_layers(tmp_path):
    base, _ = pair(5)
    b = save_dir(base, tmp_path / "base")
    u = load(b, base=b)
    assert len(u) == len(LAYERS) and all(float(x.load().materialize().abs().max()) == 0 for x in u)


def test_prefix_mismatch_head_model_vs_backbone(tmp_path):
    """A head model's keys (`model.layers.0…`) against a bare backbone's (`layers.0…`)."""
    base, ft = pair(6)
    bare = {k.replace("model.", "", 1): v for k, v in base.items() if k.startswith("model.")}
    u = load(save_dir(ft, tmp_path / "ft"), base=save_dir(bare, tmp_path / "base"))
    check(u, base, ft)
    assert any("lm_head.weight" in w for w in u.warnings)


def _unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8,
                                attention_head_dim=2, norm_num_groups=4)


def _pipeline(d, unet, shard=None):
    """A diffusers pipeline folder: model_index.json and unet/ with the full weights next to an fp16 variant."""
    (d / "unet").mkdir(parents=True)
    (d / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    unet.save_pretrained(d / "unet", **({"max_shard_size": shard} if shard else {}))
    sd = {k: v.detach().half().contiguous() for k, v in unet.state_dict().items()}
    save_file(sd, d / "unet" / "diffusion_pytorch_model.fp16.safetensors")
    return {k: v.detach().clone() for k, v in unet.state_dict().items()}


def test_diffusers_component_folders(tmp_path):
    """A fine-tuned UNet (diffusers save_pretrained, single and sharded) against its base: the full-precision
    file is used, never the fp16 variant beside it; a pipeline folder as base= resolves to the component;
    the pipeline folder itself is a one-line error naming the component to pass."""
    pytest.importorskip("diffusers")
    from deltaspec.errors import FormatError

    unet = _unet()
    b = _pipeline(tmp_path / "base", unet)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.01 * torch.randn_like(p))
    ft = _pipeline(tmp_path / "ft", unet)
    _pipeline(tmp_path / "ftshard", unet, shard="20KB")
    assert len(list((tmp_path / "ftshard" / "unet").glob("diffusion_pytorch_model-*"))) > 2
    for path, base in [("ft/unet", "base/unet"), ("ft/unet", "base"), ("ftshard/unet", "base")]:
        u = load(tmp_path / path, base=tmp_path / base)
        assert u.base == str(tmp_path / "base" / "unet")
        assert len(u) == sum(1 for k, v in ft.items() if k.endswith(".weight") and v.dim() > 1)
        assert "time_embedding.linear_1" in {x.name for x in u}  # a Linear inside an embedding block
        for x in u:
            k = x.name + ".weight"
            close(x.load().materialize(), (ft[k].double() - b[k].double()).flatten(1), rtol=1e-5, atol_rel=1e-6)
    with pytest.raises(FormatError) as e:
        load(tmp_path / "ft", base=tmp_path / "base")
    assert "diffusers pipeline folder" in str(e.value) and str(tmp_path / "ft" / "unet") in str(e.value)
    # only variants: used when they are all there is; two kinds of variant are ambiguous
    (tmp_path / "ft" / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    assert load(tmp_path / "ft" / "unet", base=tmp_path / "base")[0].dtype == "float16"
    save_file({"x.weight": torch.zeros(2, 2, dtype=torch.bfloat16)},
              tmp_path / "ft" / "unet" / "diffusion_pytorch_model.bf16.safetensors")
    with pytest.raises(FormatError, match="only in variants bf16, fp16"):
        load(tmp_path / "ft" / "unet", base=tmp_path / "base")


def test_a_tensor_in_two_files_is_an_error(tmp_path):
    from deltaspec.errors import FormatError

    base, ft = pair()
    save_dir(base, tmp_path / "b")
    (tmp_path / "f").mkdir()
    save_file(ft, tmp_path / "f" / "a.safetensors")
    save_file({k: v for k, v in base.items() if "q_proj" in k}, tmp_path / "f" / "b.safetensors")
    with pytest.raises(FormatError, match="is in both .*a.safetensors and .*b.safetensors"):
        load(tmp_path / "f", base=tmp_path / "b")


def test_float64_analysis_forms_the_difference_exactly(tmp_path):
    """dtype="float64" on float32 checkpoints: W_ft − W0 is formed in float64 (exact for float32 inputs),
    so σ agrees with numpy's float64 SVD of the exact difference to ~1e-15, not float32's rounding (~1e-9)."""
    import numpy as np

    import deltaspec as ds

    base, ft = pair(step=1e-3)  # a small update: float32 subtraction would round away its last digits
    save_dir(base, tmp_path / "b")
    save_dir(ft, tmp_path / "f")
    res = ds.analyze(tmp_path / "f", base=tmp_path / "b", dtype="float64", progress=False)
    for r in res.layers:
        k = r.name + ".weight"
        want = np.linalg.svd(ft[k].double().numpy() - base[k].double().numpy(), compute_uv=False)
        assert np.max(np.abs(r.singular_values - want)) <= 1e-13 * want[0]
