"""A tensor deltaspec does not understand, sitting in a module whose factors it reads, stops the file with a
one-line error naming it (it may change that module's ΔW); a tensor of another module stays a warning.
PEFT LoRA variants that save extra per-module tensors are read exactly (KaSA) or, when PEFT's merge ignores
the tensor (VeLoRA, MonteCLoRA), as PEFT merges them: checked against PEFT's merge_and_unload."""
import json
import os
import sys

import pytest
import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from deltaspec.errors import FormatError, MissingBaseError  # noqa: E402
from deltaspec.io import load  # noqa: E402
from io_fixtures import MODULES, close, write_deltaspec, write_mtl  # noqa: E402


def r(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed + sum(shape)))


def peft_dir(d, tensors, **cfg):
    d.mkdir(parents=True)
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4,
                                                       "target_modules": ["q"], **cfg}))
    save_file(tensors, d / "adapter_model.safetensors")
    return d


LORA = {"base_model.model.q.lora_A.weight": r(2, 6), "base_model.model.q.lora_B.weight": r(5, 2)}
LOHA = {f"base_model.model.q.hada_w{i}_{ab}": r(*s) for i in (1, 2) for ab, s in (("a", (5, 2)), ("b", (2, 6)))}
SD = {"lora_unet_x.lora_down.weight": r(2, 6), "lora_unet_x.lora_up.weight": r(5, 2), "lora_unet_x.alpha": torch.tensor(2.)}


def _peft(tmp_path, extra):
    return peft_dir(tmp_path / "a", {**LORA, **extra}), "auto"


def _loha(tmp_path, extra):
    return peft_dir(tmp_path / "a", {**LOHA, **extra}, peft_type="LOHA", alpha=4), "auto"


def _sd(fmt):
    def make(tmp_path, extra):
        save_file({**SD, **{k.replace("base_model.model.q", "lora_unet_x").replace("base_model.model.z", "lora_unet_z"):
                            v for k, v in extra.items()}}, tmp_path / "x.safetensors")
        return tmp_path / "x.safetensors", fmt
    return make


def _diffusers(old):
    def make(tmp_path, extra):
        stem = "unet.down.processor.to_q_lora" if old else "unet.q"
        base = {f"{stem}.down.weight": r(2, 6), f"{stem}.up.weight": r(5, 2)} if old else \
            {f"{stem}.lora_A.weight": r(2, 6), f"{stem}.lora_B.weight": r(5, 2)}
        save_file({**base, **{k.replace("base_model.model.q", stem).replace("base_model.model.z", "unet.z"): v
                              for k, v in extra.items()}}, tmp_path / "pytorch_lora_weights.safetensors")
        return tmp_path / "pytorch_lora_weights.safetensors", "diffusers"
    return make


def _multilora(tmp_path, extra):
    d = tmp_path / "m"
    write_deltaspec(d, vector=False)
    m = next(iter(MODULES))
    from safetensors.torch import load_file
    sd = load_file(d / "adapter_model.safetensors")
    sd.update({k.replace("q", m, 1): v for k, v in extra.items()})
    save_file(sd, d / "adapter_model.safetensors")
    return d, "auto"


def _mtl(tmp_path, extra):
    p = tmp_path / "final_checkpoint.pt"
    write_mtl(p)
    sd = torch.load(p)
    m = next(iter(MODULES))
    sd.update({k.replace("base_model.model.q", "module." + m).replace("base_model.model.z", "module.z"): v
               for k, v in extra.items()})
    torch.save(sd, p)
    return p, "mtl-multilora"


READERS = {"peft": _peft, "peft-loha": _loha, "kohya": _sd("kohya"), "lycoris": _sd("lycoris"),
           "diffusers": _diffusers(False), "diffusers-old": _diffusers(True), "multilora": _multilora, "mtl": _mtl}


@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize("part", ["lora_gate", "lora_gate.weight", "extra.scale"])
def test_unknown_tensor_in_a_read_module_is_an_error(tmp_path, reader, part):
    path, fmt = READERS[reader](tmp_path, {f"base_model.model.q.{part}": r(2)})
    with pytest.raises(FormatError) as e:
        load(path, format=fmt, lora_alpha=8)
    msg = str(e.value)
    assert "\n" not in msg and part.split(".")[0] in msg and "not understood" in msg


@pytest.mark.parametrize("reader", sorted(READERS))
def test_unknown_tensor_of_another_module_is_a_warning(tmp_path, reader):
    path, fmt = READERS[reader](tmp_path, {"base_model.model.z.gate": r(2)})
    u = load(path, format=fmt, lora_alpha=8)
    assert len(u) >= 1 and any("gate" in w for w in u.warnings)


@pytest.mark.parametrize("part", ["lora_scaling", "lora_diag"])
def test_a_known_part_in_the_wrong_place_is_an_error(tmp_path, part):
    """lora_scaling is MultiLoRA's, not PEFT LoRA's; lora_diag (KaSA) on an embedding is not read."""
    d = peft_dir(tmp_path / "a", {**LORA, f"base_model.model.q.{part}": r(2)})
    if part == "lora_diag":
        d = peft_dir(tmp_path / "b", {"base_model.model.q.lora_embedding_A": r(2, 6),
                                      "base_model.model.q.lora_embedding_B": r(5, 2), "base_model.model.q.lora_diag": r(2)})
    with pytest.raises(FormatError, match=part):
        load(d, include_embeddings=True)


@pytest.mark.parametrize("flag", ["use_qalora", "use_bdlora", "arrow_config"])
def test_variants_whose_factors_are_not_delta_w_are_refused(tmp_path, flag):
    d = peft_dir(tmp_path / "a", LORA, **{flag: {"nblocks": 2} if flag != "use_qalora" else True})
    with pytest.raises(FormatError, match=flag):
        load(d)


class Two(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.q, self.v = torch.nn.Linear(16, 12), torch.nn.Linear(12, 16)

    def forward(self, x):
        return self.v(self.q(x))


def _variant(tmp_path, **kw):
    """A PEFT LoRA variant on Two, randomised, saved; returns (adapter dir, base file, PEFT's ΔW per module)."""
    peft = pytest.importorskip("peft")
    model = Two()
    W0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    save_file(W0, tmp_path / "base.safetensors")
    pm = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q", "v"], **kw))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    pm.save_pretrained(tmp_path / "a")
    merged = pm.merge_and_unload().state_dict()
    return tmp_path / "a", tmp_path / "base.safetensors", {m: merged[f"{m}.weight"].double() - W0[f"{m}.weight"].double()
                                                           for m in ("q", "v")}


def test_kasa_matches_peft_merge(tmp_path):
    from peft.tuners.lora.config import KasaConfig
    d, base, want = _variant(tmp_path, kasa_config=KasaConfig())
    u = load(d, base=base)
    assert {x.name for x in u} == set(want) and all(x.meta["variant"] == "kasa" for x in u)
    for x in u:
        close(x.load().materialize(), want[x.name])
    with pytest.raises(MissingBaseError, match="KaSA"):
        load(d)


@pytest.mark.parametrize("variant", ["velora_config", "monteclora_config"])
def test_variants_peft_merges_as_lora(tmp_path, variant):
    from peft.tuners.lora import config as C
    cfg = {"velora_config": C.VeloraConfig, "monteclora_config": C.MontecloraConfig}[variant]()
    d, _, want = _variant(tmp_path, **{variant: cfg})
    u = load(d)
    assert {x.name for x in u} == set(want) and not u.warnings
    for x in u:
        close(x.load().materialize(), want[x.name])
