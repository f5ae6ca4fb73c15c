"""The LoRA files `deltaspec resize` / `merge` write, loaded by the libraries that consume them: LyCORIS's kohya
network (`lycoris.kohya.create_network_from_weights` + `merge_to`), diffusers (`load_lora_weights` + `fuse_lora`)
and PEFT (`PeftModel.from_pretrained` + `merge_and_unload`), into a tiny SD UNet and CLIP text encoder built from
configs. Each consumer's ΔW (merged weight − base weight) must equal the float64 numpy truncation of the input's
ΔW within 1e-5·σ₁; for LyCORIS LoHa / LoKr inputs the reference ΔW is LyCORIS's own merge of the input.

Two facts about the consumers, found while writing these tests (lycoris_lora 4.1.3, diffusers 0.42,
transformers 5):
- LyCORIS has two loaders. `lycoris.create_lycoris_from_weights(mult, file, module)` names modules
  `lycoris_<path>`: it loads 0 modules from any kohya file (`lora_unet_…` / `lora_te_…`). The kohya one,
  `lycoris.kohya.create_network_from_weights(mult, file, vae, text_encoder, unet)`, names them
  `lora_unet_<path>` / `lora_te_<path>` (dots → underscores) from the live modules and takes any Linear /
  Conv whose name is in the file. Two things stop it on a diffusers SD pipeline, neither about the file:
  (1) it first builds its default network, and on a diffusers UNet2DConditionModel its preset lists both the
  class `TimestepEmbedding` and the name `time_embedding.linear_1`, so it asserts "duplicated lora name:
  lora_unet_time_embedding_linear_1" before reading a key; the tests empty `UNET_TARGET_REPLACE_NAME`
  (that list only shapes the default network, which the loader then discards). (2) transformers ≥ 5's
  CLIPTextModel has no `text_model.` level, so LyCORIS names its layers `lora_te_encoder_layers_…` and loads
  none of the `lora_te_text_model_encoder_layers_…` layers every kohya-trained file has; the tests hand
  LyCORIS the text encoder inside a module whose `text_model` attribute it is (transformers 4's layout).
- diffusers' kohya converter does place `lora_te_text_model_…` layers in a transformers-5 CLIPTextModel, as
  long as the file's text-encoder self-attention layers include out_proj (sd_fixtures.TE_MODULES).
"""
import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("diffusers")
pytest.importorskip("peft")
pytest.importorskip("lycoris")
from safetensors.torch import load_file, save_file  # noqa: E402

from deltaspec_cli.main import cli  # noqa: E402
from sd_fixtures import (KOHYA_MODULES, TE_MODULES, TO_MODULE, kohya_delta, kohya_lora, module_weights,  # noqa: E402
                         tiny_pipeline, truncate)

UNET_KEYS = list(KOHYA_MODULES.values())


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def ok(*args):
    r = run(*args, "-q")
    assert r.exit_code == 0, r.output
    return r


def one_line_error(r, msg):
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert r.exit_code == 2 and msg in r.output and len(lines) == 1, r.output


def assert_close(got: np.ndarray, want: np.ndarray, what) -> float:
    """max |got − want| ≤ 1e-5·σ₁(want); returns that error in units of σ₁."""
    err = float(np.abs(got - want).max() / np.linalg.norm(want, 2))
    assert err <= 1e-5, (what, err)
    return err


def diffs(pipe, before) -> dict:
    after = module_weights(pipe)
    return {n: (after[n] - before[n]).flatten(1).numpy() for n in before if not torch.equal(after[n], before[n])}


class _TextModel(torch.nn.Module):
    """transformers 4's CLIPTextModel layout (`text_model.encoder…`) around a transformers-5 one, for LyCORIS."""

    def __init__(self, te):
        super().__init__()
        self.text_model = te


def lycoris_deltas(path, monkeypatch, n_expected=None, how="merge") -> dict:
    """LyCORIS's own ΔW of a kohya-named file, per module: its kohya network's merge_to() weights − base weights
    (how="merge"), or its forward difference (how="forward": apply_to(), then each wrapped layer's output
    minus the original layer's on one-hot inputs, which reads off ΔW column by column)."""
    from lycoris.kohya import LycorisNetworkKohya, create_network_from_weights

    monkeypatch.setattr(LycorisNetworkKohya, "UNET_TARGET_REPLACE_NAME", [])  # see the module docstring, (1)
    pipe = tiny_pipeline()
    before = module_weights(pipe)
    te = _TextModel(pipe.text_encoder)
    net, sd = create_network_from_weights(1.0, str(path), None, te, pipe.unet, for_inference=True)
    loras = net.unet_loras + net.text_encoder_loras
    if n_expected is not None:
        assert len(loras) == n_expected
    if how == "merge":
        net.merge_to(te, pipe.unet, sd, torch.float32, "cpu")
        return diffs(pipe, before)
    net.apply_to(te, pipe.unet, apply_text_encoder=True, apply_unet=True)
    where = {id(m): f"{c}.{n}" for c in ("unet", "text_encoder") for n, m in getattr(pipe, c).named_modules()}
    out = {}
    with torch.no_grad():
        for lora in loras:
            mod = lora.org_module[0]
            w = mod.weight
            n_in = w[0].numel()
            x = torch.eye(n_in).reshape(n_in, *w.shape[1:])  # one-hot inputs; a 3×3 conv (padding 1) reads its
            y = mod(x) - lora.org_forward(x)                 # whole kernel at the centre pixel
            y = y[:, :, w.shape[2] // 2, w.shape[3] // 2] if w.dim() == 4 else y
            out[where[id(mod)]] = y.T.double().numpy()
    return out


def diffusers_deltas(path) -> dict:
    pipe = tiny_pipeline()
    before = module_weights(pipe)
    pipe.load_lora_weights(str(path))
    pipe.fuse_lora()
    return diffs(pipe, before)


@pytest.fixture(scope="module")
def sd_files(tmp_path_factory):
    """A kohya LoRA over UNet and text-encoder layers, and the base as a pipeline folder, twice: base/ (unet/,
    text_encoder/ saved by diffusers and transformers ≥ 5: the text encoder's weight names have no `text_model.`)
    and hub/ (`text_model.encoder…`, as SD checkpoints on the Hub)."""
    d = tmp_path_factory.mktemp("sd")
    pipe = tiny_pipeline()
    sd = kohya_lora(pipe, te=True)
    save_file(sd, d / "in.safetensors", metadata={"ss_network_dim": "6", "ss_network_alpha": "3.0"})
    pipe.unet.save_pretrained(d / "base" / "unet")
    pipe.text_encoder.save_pretrained(d / "base" / "text_encoder")
    # hub/: the same pipeline with the text encoder's weights named as on the Hub and by transformers 4
    shutil.copytree(d / "base" / "unet", d / "hub" / "unet")
    (d / "hub" / "text_encoder").mkdir()
    (d / "hub" / "text_encoder" / "config.json").write_text((d / "base" / "text_encoder" / "config.json").read_text())
    save_file({"text_model." + k: v for k, v in load_file(d / "base" / "text_encoder" / "model.safetensors").items()},
              d / "hub" / "text_encoder" / "model.safetensors")
    for b in ("base", "hub"):
        (d / b / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return d, sd


def test_lycoris_loads_resized_kohya(sd_files, tmp_path, monkeypatch):
    d, sd = sd_files
    out = tmp_path / "r3.safetensors"
    ok("resize", d / "in.safetensors", "--rank", "3", "-o", out)
    got = lycoris_deltas(out, monkeypatch, n_expected=len(TO_MODULE))
    assert set(got) == set(TO_MODULE.values())
    for key, mod in TO_MODULE.items():
        assert_close(got[mod], truncate(kohya_delta(sd, key), 3), key)


def _loha_lokr(pipe) -> dict:
    """LoHa on a linear and a 3×3 conv, LoKr on two linears (kohya names, as LyCORIS saves them)."""
    u = dict(pipe.unet.named_modules())
    g = torch.Generator().manual_seed(7)
    rnd = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    sd = {}
    for m in ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", "down_blocks.0.resnets.0.conv1"):
        w = u[m].weight
        k, o, i = KOHYA_MODULES[m], w.shape[0], w[0].numel()
        sd |= {f"{k}.hada_w1_a": rnd(o, 3), f"{k}.hada_w1_b": rnd(3, i), f"{k}.hada_w2_a": rnd(o, 3),
               f"{k}.hada_w2_b": rnd(3, i), f"{k}.alpha": torch.tensor(1.5)}
    for m, (a, c) in (("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k", (4, 4)),
                      ("down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj", (8, 4))):
        w = u[m].weight
        k, o, i = KOHYA_MODULES[m], w.shape[0], w.shape[1]
        sd |= {f"{k}.lokr_w1": rnd(a, c), f"{k}.lokr_w2_a": rnd(o // a, 2), f"{k}.lokr_w2_b": rnd(2, i // c),
               f"{k}.alpha": torch.tensor(1.0)}
    return sd


def test_lycoris_loads_loha_lokr_converted_to_lora(sd_files, tmp_path, monkeypatch):
    """LoHa / LoKr → plain kohya LoRA: LyCORIS's merge (and forward) of the output equal the truncation of LyCORIS's
    ΔW of the input; at the update's full rank (LoHa 3·3 = 9, LoKr rank(w1)·2 = 8) the two are equal.

    The input's reference is LyCORIS's forward difference, not its merge: in lycoris_lora 4.1.3 the LoHa and
    LoKr modules' get_diff_weight (used by merge_to) multiplies by α/r a second time on top of get_weight's
    (their forward applies it once, as kohya, diffusers and deltaspec do), so their merge is (α/r)² — here
    half of the forward's ΔW, α/r = 0.5. LyCORIS's LoRA module applies it once in both paths.

    A LoHa (or factored LoKr) conv layer stores its kernel flattened (hada_w1_b (r, in·kh·kw)), so without
    --base the LoRA is written (r, in·kh·kw) / (out, r): diffusers fuses that, but LyCORIS (and kohya's own
    loader) build a Conv2d lora_down from the module and cannot load it ("output with shape [out, r, 1, 1]
    doesn't match the broadcast shape"). With --base the kernel is read from the base weight."""
    d, _ = sd_files
    conv = KOHYA_MODULES["down_blocks.0.resnets.0.conv1"]
    save_file(_loha_lokr(tiny_pipeline()), tmp_path / "lyco.safetensors")
    ref = lycoris_deltas(tmp_path / "lyco.safetensors", monkeypatch, n_expected=4, how="forward")
    assert len(ref) == 4
    ok("resize", tmp_path / "lyco.safetensors", "--rank", 9, "-o", tmp_path / "flat.safetensors")
    assert load_file(tmp_path / "flat.safetensors")[f"{conv}.lora_down.weight"].dim() == 2
    for k in (9, 3):
        out = tmp_path / f"l{k}.safetensors"
        ok("resize", tmp_path / "lyco.safetensors", "--rank", k, "--base", d / "base", "-o", out)
        keys = load_file(out)
        assert all(x.endswith((".lora_down.weight", ".lora_up.weight", ".alpha")) for x in keys)
        assert keys[f"{conv}.lora_down.weight"].shape == (k, 16, 3, 3) and keys[f"{conv}.lora_up.weight"].dim() == 4
        for how in ("merge", "forward") if k == 9 else ("merge",):
            got = lycoris_deltas(out, monkeypatch, n_expected=4, how=how)
            assert set(got) == set(ref)
            for mod, dW in ref.items():
                assert_close(got[mod], truncate(dW, k), (k, how, mod))


def test_diffusers_fuses_text_encoder_layers(sd_files, tmp_path):
    """kohya → kohya (diffusers' kohya converter), kohya → diffusers with --base (text_encoder.* keys), and that
    diffusers file back to kohya gives the input's names (`lora_te_text_model_…` from transformers-5 names).
    The diffusers file names CLIP modules as transformers ≥ 5 builds them (`text_encoder.encoder.layers…`, as
    diffusers' own save_lora_weights writes), also from the hub/ base: diffusers strips a `text_model.` from
    the tensor names but not from the LoraConfig in the metadata, so such a file fails to load
    ("Target modules {'text_model.encoder…'} not found")."""
    d, sd = sd_files
    k_out, d_out, back = tmp_path / "k.safetensors", tmp_path / "d.safetensors", tmp_path / "back.safetensors"
    h_out = tmp_path / "h.safetensors"
    ok("resize", d / "in.safetensors", "--rank", "3", "-o", k_out)
    ok("resize", d / "in.safetensors", "--rank", "3", "--to", "diffusers", "--base", d / "base", "-o", d_out)
    ok("resize", d / "in.safetensors", "--rank", "3", "--to", "diffusers", "--base", d / "hub", "-o", h_out)
    keys = list(load_file(d_out))
    assert {k.partition(".")[0] for k in keys} == {"unet", "text_encoder"}
    assert set(load_file(h_out)) == set(keys)  # module names as built: transformers 5's CLIPTextModel, either base
    for out in (k_out, d_out, h_out):
        got = diffusers_deltas(out)
        assert set(got) == set(TO_MODULE.values()), out
        for key, mod in TO_MODULE.items():
            assert_close(got[mod], truncate(kohya_delta(sd, key), 3), (out.name, key))
    ok("resize", d_out, "--rank", "3", "--to", "kohya", "-o", back)
    assert set(load_file(back)) == set(sd)


def _peft_delta(model, adapter) -> dict:
    from peft import PeftModel

    before = {n: m.weight.detach().double().clone() for n, m in model.named_modules() if hasattr(m, "weight")
              and isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    merged = dict(PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().named_modules())
    return {n: (merged[n].weight.detach().double() - w).flatten(1).numpy() for n, w in before.items()
            if not torch.equal(merged[n].weight.detach().double(), w)}


@pytest.mark.parametrize("part", ["unet", "text_encoder", "text_encoder_hub"])
def test_kohya_to_peft_with_base(sd_files, tmp_path, part):
    """kohya → PEFT through the base's module names (pipeline folder for the text encoder, the component's own
    folder for the UNet); PEFT's own merge into that component gives the truncated ΔW. text_encoder_hub: the
    base's CLIP weights named as on the Hub and by transformers 4 (`text_model.encoder…`); the adapter still
    targets the modules transformers ≥ 5 builds (`encoder.layers…`), or PEFT finds none of them."""
    d, sd = sd_files
    keys = list(TE_MODULES.values()) if part.startswith("text_encoder") else UNET_KEYS
    one = {k: v for k, v in sd.items() if k.split(".")[0] in keys}
    save_file(one, tmp_path / "one.safetensors")
    base = d / "base" / "unet" if part == "unet" else d / "base"
    if part == "text_encoder_hub":
        base = d / "hub"
    ok("resize", tmp_path / "one.safetensors", "--rank", "2", "--to", "peft", "--base", base, "-o", tmp_path / "p")
    got = _peft_delta(getattr(tiny_pipeline(), part.removesuffix("_hub")), tmp_path / "p")
    assert set(got) == {TO_MODULE[k].partition(".")[2] for k in keys}
    for key in keys:
        assert_close(got[TO_MODULE[key].partition(".")[2]], truncate(kohya_delta(sd, key), 2), key)


def test_merge_kohya_to_diffusers_with_base(sd_files, tmp_path):
    d, sd = sd_files
    b = kohya_lora(tiny_pipeline(), r=3, alpha=3.0, seed=10, te=True)
    save_file(b, tmp_path / "b.safetensors")
    out = tmp_path / "ab.safetensors"
    ok("merge", d / "in.safetensors", tmp_path / "b.safetensors", "--weights", "0.7,-0.3", "--rank", "4",
       "--to", "diffusers", "--base", d / "base", "-o", out)
    got = diffusers_deltas(out)
    assert set(got) == set(TO_MODULE.values())
    for key, mod in TO_MODULE.items():
        assert_close(got[mod], truncate(0.7 * kohya_delta(sd, key) - 0.3 * kohya_delta(b, key), 4), key)


def test_kohya_names_that_cannot_be_mapped(sd_files, tmp_path):
    d, sd = sd_files
    src = d / "in.safetensors"
    one_line_error(run("resize", src, "--rank", "2", "--to", "diffusers", "-o", tmp_path / "x.safetensors"),
                   "pass --base")
    one_line_error(run("resize", src, "--rank", "2", "--to", "peft", "--base", d / "base", "-o", tmp_path / "p"),
                   "a PEFT adapter holds one model")
    one_line_error(run("resize", src, "--rank", "2", "--to", "peft", "--base", d / "base" / "unet", "-o", tmp_path / "q"),
                   "no weight in --base")
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "p").exists()


def test_merge_kohya_to_peft_with_base(sd_files, tmp_path):
    d, sd = sd_files
    a = {k: v for k, v in sd.items() if k.split(".")[0] in UNET_KEYS}
    b = kohya_lora(tiny_pipeline(), r=3, alpha=3.0, seed=10)
    save_file(a, tmp_path / "a.safetensors")
    save_file(b, tmp_path / "b.safetensors")
    ok("merge", tmp_path / "a.safetensors", tmp_path / "b.safetensors", "--weights", "0.5,0.5", "--rank", "4",
       "--to", "peft", "--base", d / "base", "-o", tmp_path / "p")
    got = _peft_delta(tiny_pipeline().unet, tmp_path / "p")
    assert set(got) == set(KOHYA_MODULES)
    for mod, key in KOHYA_MODULES.items():
        assert_close(got[mod], truncate(0.5 * kohya_delta(a, key) + 0.5 * kohya_delta(b, key), 4), key)
