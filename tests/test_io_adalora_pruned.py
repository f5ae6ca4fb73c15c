"""AdaLoRA after rank pruning, as AdaLoRA users have it after training: rank_pattern holds per-module
boolean masks, the saved factors hold only the kept ranks, a module may keep none. ΔW must equal PEFT's own
merge, both of the trained (masked) model and of the adapter reloaded with PeftModel.from_pretrained."""
import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
peft = pytest.importorskip("peft")
from deltaspec.errors import FormatError, ShapeMismatchError  # noqa: E402
from deltaspec.io import load  # noqa: E402
from io_fixtures import close  # noqa: E402

MASKS = {"q.lora_E": [True, False, True, False], "v.lora_E": [False] * 4, "o.lora_E": [True] * 4}


class Three(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.q, self.v, self.o = torch.nn.Linear(16, 12), torch.nn.Linear(12, 16), torch.nn.Linear(16, 16)

    def forward(self, x):
        return self.o(self.v(self.q(x)))


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    d = tmp_path_factory.mktemp("ada")
    model = Three()
    W0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    cfg = peft.AdaLoraConfig(init_r=4, target_r=2, total_step=10, lora_alpha=8, target_modules=["q", "v", "o"])
    pm = peft.get_peft_model(model, cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    # what update_and_allocate does at the final step: record the masks, zero the pruned lora_E entries
    rank_pattern = {k.replace(".lora_E", ".lora_E.default"): v for k, v in MASKS.items()}
    pm.peft_config["default"].rank_pattern = rank_pattern
    pm.base_model.rankallocator.mask_using_rank_pattern(pm.base_model.model, rank_pattern)
    pm.save_pretrained(d / "a")
    merged = pm.merge_and_unload().state_dict()
    want = {m: merged[f"{m}.weight"].double() - W0[f"{m}.weight"].double() for m in "qvo"}
    reloaded = peft.PeftModel.from_pretrained(Three(), d / "a").merge_and_unload().state_dict()
    for m in "qvo":  # PEFT's reload agrees with its own trained model: the reference is consistent
        close(reloaded[f"{m}.weight"].double() - W0[f"{m}.weight"].double(), want[m])
    return d / "a", want


def test_pruned_adalora_matches_peft_merge(pruned):
    d, want = pruned
    assert json.loads((d / "adapter_config.json").read_text())["rank_pattern"] == MASKS
    u = load(d)
    assert {x.name for x in u} == set(want)
    for x in u:
        close(x.load().materialize(), want[x.name])
    by = {x.name: x for x in u}
    assert by["q"].meta["r"] == 2 and by["o"].meta["r"] == 4 and by["v"].meta.get("pruned")
    assert torch.count_nonzero(by["v"].load().materialize()) == 0 and torch.count_nonzero(want["v"]) == 0
    assert any("pruned by AdaLoRA to rank 0 (v): ΔW = 0" in w for w in u.warnings)


def test_masks_that_disagree_with_the_factors_are_refused(pruned, tmp_path):
    import shutil
    d = tmp_path / "a"
    shutil.copytree(pruned[0], d)
    cfg = json.loads((d / "adapter_config.json").read_text())
    cfg["rank_pattern"]["q.lora_E"] = [True] * 4
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ShapeMismatchError, match="'q' holds 2 ranks but .*rank_pattern keeps 4"):
        load(d)
    cfg["rank_pattern"]["q.lora_E"] = [1, 0, 1, 0]
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(FormatError, match="list of 4 booleans"):
        load(d)
