"""`deltaspec merge` and `deltaspec extract` on Stable Diffusion models: the output, fused by diffusers'
own load_lora_weights + fuse_lora into a tiny pipeline, equals the float64 numpy truncation of
Σ w_j ΔW_j (merge) or of W_tuned − W_base (extract), within 1e-5·σ₁."""
import numpy as np
import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("diffusers")
pytest.importorskip("peft")
from safetensors.torch import load_file, save_file  # noqa: E402

from deltaspec_cli.main import cli  # noqa: E402
from sd_fixtures import KOHYA_MODULES, kohya_delta, kohya_lora, tiny_pipeline, truncate  # noqa: E402
from test_sd_resize import TO_MODULE, assert_close, fused_deltas  # noqa: E402


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_merge_equals_truncated_weighted_sum(tmp_path):
    pipe = tiny_pipeline()
    a, b = kohya_lora(pipe, r=4, alpha=2.0, seed=0), kohya_lora(pipe, r=3, alpha=3.0, seed=10)
    save_file(a, tmp_path / "a.safetensors")
    save_file(b, tmp_path / "b.safetensors")
    out = tmp_path / "ab.safetensors"
    r = run("merge", tmp_path / "a.safetensors", tmp_path / "b.safetensors", "--weights", "0.7,-0.3", "--rank", "4",
            "-o", out, "-q")
    assert r.exit_code == 0, r.output
    assert set(load_file(out)) == set(a)  # kohya in, kohya out, same names
    fused = fused_deltas(out)
    for key, mod in TO_MODULE.items():
        want = truncate(0.7 * kohya_delta(a, key) - 0.3 * kohya_delta(b, key), 4)
        assert_close(fused[mod], want, key)


def test_merge_refuses_different_bases(tmp_path):
    pipe = tiny_pipeline()
    a = kohya_lora(pipe, r=2)
    key = next(iter(KOHYA_MODULES.values()))
    b = dict(a)
    b[f"{key}.lora_down.weight"] = torch.randn(2, 5)  # another base: another input width
    save_file(a, tmp_path / "a.safetensors")
    save_file(b, tmp_path / "b.safetensors")
    r = run("merge", tmp_path / "a.safetensors", tmp_path / "b.safetensors", "--rank", "2", "-o", tmp_path / "o.safetensors")
    assert r.exit_code == 2 and "different bases" in r.output and len(r.output.strip().splitlines()) == 1, r.output
    r = run("merge", tmp_path / "a.safetensors", tmp_path / "a.safetensors", "--weights", "1", "--rank", "2",
            "-o", tmp_path / "o.safetensors")
    assert r.exit_code == 2 and "one weight per adapter" in r.output


def test_extract_from_two_unet_folders(tmp_path):
    pipe = tiny_pipeline()
    pipe.unet.save_pretrained(tmp_path / "base")
    g = torch.Generator().manual_seed(5)
    changed = {}
    with torch.no_grad():
        mods = dict(pipe.unet.named_modules())
        for m in KOHYA_MODULES:
            w = mods[m].weight
            d = torch.randn(w.shape[0], 6, generator=g) @ torch.randn(6, w[0].numel(), generator=g) * 0.01
            d += 1e-4 * torch.randn(d.shape, generator=g)  # full rank, fast-decaying tail
            w.add_(d.reshape(w.shape))
            changed["unet." + m] = d.double().numpy()
    pipe.unet.save_pretrained(tmp_path / "tuned")
    # ΔW in float64 from the saved float32 weights: the reference the extraction must truncate
    b0, b1 = load_file(tmp_path / "base" / "diffusion_pytorch_model.safetensors"), load_file(
        tmp_path / "tuned" / "diffusion_pytorch_model.safetensors")
    out = tmp_path / "x.safetensors"
    r = run("extract", "--base", tmp_path / "base", "--tuned", tmp_path / "tuned", "--component", "unet", "--to", "kohya",
            "--rank", "3", "--conv-rank", "2", "--dtype", "float64", "-o", out, "-q")
    assert r.exit_code == 0, r.output
    fused = fused_deltas(out)
    assert set(fused) == set(changed)
    for mod in changed:
        key = mod.removeprefix("unet.") + ".weight"
        dW = (b1[key].double() - b0[key].double()).flatten(1).numpy()
        k = 2 if b0[key].dim() == 4 and b0[key].shape[-1] == 3 else 3  # 3x3 convs: --conv-rank, as kohya's --conv_dim
        assert_close(fused[mod], truncate(dW, k), mod)
    r = run("extract", "--base", tmp_path / "base", "--tuned", tmp_path / "tuned", "--to", "kohya", "--rank", "3",
            "-o", tmp_path / "y.safetensors")
    assert r.exit_code == 2 and "--component" in r.output and len(r.output.strip().splitlines()) == 1, r.output
