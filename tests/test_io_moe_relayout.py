"""The same MoE model in two layouts pairs: a base saved per expert (transformers 4 style, which
transformers 5 still writes for Qwen3-MoE: `…experts.3.gate_proj.weight`) against a fine-tune with fused
3-D experts (`…experts.gate_up_proj`, the in-memory layout of transformers 5), and the reverse. ΔW per
expert and projection equals the one from two files in the same layout and a float64 reference."""
import json
import os
import shutil
import sys

import pytest
import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
pytest.importorskip("transformers")
from deltaspec.io import load  # noqa: E402
from io_fixtures import close  # noqa: E402
from test_io_moe import E, tiny_moe  # noqa: E402


def save_fused(model, d):
    """The model's own (transformers 5, in-memory) state dict as one file, experts as 3-D stacks."""
    d.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, d / "model.safetensors")
    model.config.to_json_file(d / "config.json")


@pytest.fixture(scope="module", params=["qwen3_moe", "mixtral"])
def moe(tmp_path_factory, request):
    root = tmp_path_factory.mktemp("moe")
    model = tiny_moe(request.param)
    model.save_pretrained(root / "base_per_expert")
    save_fused(model, root / "base_fused")
    sd0 = {k: v.detach().double().clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model.save_pretrained(root / "ft_per_expert")
    save_fused(model, root / "ft_fused")
    sd1 = {k: v.detach().double() for k, v in model.state_dict().items()}
    return root, sd0, sd1


def reference(sd0, sd1, mixtral) -> dict:
    """{`….experts.e.proj`: float64 ΔW (out, in)} from the in-memory stacks (E, 2I, H) / (E, H, I), named as
    save_pretrained names them on disk (Mixtral: `block_sparse_moe.experts.e.w1/w3/w2`)."""
    out = {}
    for k in sd0:
        if k.endswith("experts.gate_up_proj") or k.endswith("experts.down_proj"):
            mod, _, param = k.rpartition(".")
            g, u, dn = ("w1", "w3", "w2") if mixtral else ("gate_proj", "up_proj", "down_proj")
            mod = mod.replace(".mlp.", ".block_sparse_moe.") if mixtral else mod
            d = sd1[k] - sd0[k]
            for e in range(d.shape[0]):
                if param == "gate_up_proj":
                    out[f"{mod}.{e}.{g}"], out[f"{mod}.{e}.{u}"] = d[e].chunk(2, dim=0)
                else:
                    out[f"{mod}.{e}.{dn}"] = d[e]
    return out


@pytest.mark.parametrize("ft,base", [("ft_fused", "base_per_expert"), ("ft_per_expert", "base_fused")])
def test_mixed_layouts_pair_like_the_same_layout(moe, ft, base):
    root, sd0, sd1 = moe
    keys = json.loads((root / "base_per_expert" / "model.safetensors.index.json").read_text())["weight_map"] \
        if (root / "base_per_expert" / "model.safetensors.index.json").exists() else None
    from safetensors import safe_open
    with safe_open(str(root / "base_per_expert" / "model.safetensors"), "pt") as f:
        keys = list(f.keys()) if keys is None else keys
    assert any(".experts.0.gate_proj.weight" in k or ".experts.0.w1.weight" in k for k in keys)  # layouts differ
    same = {x.name: x for x in load(root / "ft_per_expert", base=root / "base_per_expert")}
    mixed = load(root / ft, base=root / base)
    assert not [w for w in mixed.warnings if "not in the" in w], mixed.warnings
    got = {x.name: x for x in mixed}
    assert set(got) == set(same)
    want = reference(sd0, sd1, any(".w1." in k for k in keys))
    assert len(want) == 3 * E and set(want) <= set(got)
    for name, x in got.items():
        assert tuple(x.shape) == tuple(same[name].shape)
        d = x.load().materialize()
        close(d, same[name].load().materialize())
        if name in want:
            close(d, want[name])


def test_unknown_architecture_does_not_pair(moe, tmp_path):
    """Without config.json the orientation of a stack is unknown: nothing is guessed, the warnings stay."""
    root = moe[0]
    shutil.copytree(root / "ft_fused", tmp_path / "ft")
    shutil.copytree(root / "base_per_expert", tmp_path / "base")
    (tmp_path / "ft" / "config.json").unlink()
    (tmp_path / "base" / "config.json").unlink()
    u = load(tmp_path / "ft", base=tmp_path / "base")
    assert not any(".experts." in x.name for x in u)
    assert any("not in the base" in w and "experts.gate_up_proj" in w for w in u.warnings), u.warnings
