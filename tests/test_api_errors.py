"""Python errors name Python arguments and list the valid values; the CLI says the same with its flags."""
from pathlib import Path

import pytest
from click.testing import CliRunner

import deltaspec as ds
from deltaspec.errors import DeltaspecError
from deltaspec_cli.main import cli

S = Path(__file__).resolve().parent.parent / "sample_checkpoints"
LORA = str(S / "lora")


@pytest.fixture(scope="module")
def updates():
    return ds.load(LORA)


@pytest.mark.parametrize("kw,words", [
    (dict(n_ref="foo"), ["n_ref='foo'", "'shape'", "'rank'", "integer >= 2"]),
    (dict(n_ref=1), ["n_ref=1"]),
    (dict(n_ref=2.5), ["n_ref=2.5"]),
    (dict(modules=["kproj"]), ["modules=['kproj']", "no such module type", "available: q_proj, k_proj, v_proj, o_proj"]),
    (dict(modules=["k_proj", "kproj"]), ["modules=['kproj']"]),
    (dict(layers=[2, 9]), ["layers=[9]", "no such layer index", "available: 0-3"]),
    (dict(energy_k=[0, 4]), ["energy_k=[0, 4]", "positive integers"]),
    (dict(top_k="x"), ["energy_k='x'"]),
    (dict(svd_top_k=0), ["svd_top_k=0"]),
    (dict(device="gpu"), ["device='gpu'", "'auto', 'cpu', 'cuda' or 'cuda:N'"]),
    (dict(dtype="float16"), ["dtype='float16'", "'float32' or 'float64'"]),
], ids=lambda x: str(x) if isinstance(x, dict) else "")
def test_bad_arguments_are_named_with_valid_values(updates, kw, words):
    with pytest.raises(DeltaspecError) as e:
        ds.analyze(updates, **kw)
    msg = str(e.value)
    for w in words:
        assert w in msg, (w, msg)
    assert "--" not in msg  # Python names, not CLI flags


def test_valid_spellings_still_work(updates):
    assert ds.analyze(updates, n_ref="64", modules=["k_proj"], layers=[1]).layers[0].n_ref == 64
    assert len(ds.analyze(updates, modules="v_proj", energy_k=2)) == 4


def test_base_with_loaded_updates_and_missing_base_name_the_argument(updates):
    with pytest.raises(DeltaspecError, match="base= is for a checkpoint path"):
        ds.analyze(updates, base=str(S / "base"))
    with pytest.raises(DeltaspecError, match=r"pass base=PATH$"):
        ds.load(str(S / "full"))


def test_compare_and_saved_results_list_valid_names(tmp_path):
    res = ds.analyze(updates=ds.load(LORA), modules=["q_proj"])
    with pytest.raises(DeltaspecError, match="unknown or not shared metric.*available: frobenius_norm"):
        ds.compare([res, res], ["a", "b"], metrics=["frob"])
    with pytest.raises(DeltaspecError, match=r"modules=\['k_proj'\]: no such module type; available: q_proj"):
        res.select(["k_proj"])
    with pytest.raises(DeltaspecError, match="unknown metric 'x'; available"):
        res.format_table(["x"])


def cli_error(*args):
    r = CliRunner().invoke(cli, [str(a) for a in args] + ["-q"])
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error: ") and r.output.count("\n") == 1 and "Traceback" not in r.output
    return r.output


def test_cli_says_the_same_with_its_flags(tmp_path):
    out = cli_error("analyze", LORA, "--modules", "kproj")
    assert "--modules kproj: no such module type; available: q_proj, k_proj, v_proj, o_proj" in out
    assert "--layers 7: no such layer index" in cli_error("analyze", LORA, "--layers", "0,7")
    assert "pass --base PATH" in cli_error("analyze", S / "full")
    assert "--device gpu: unknown device" in cli_error("analyze", LORA, "--device", "gpu")
    saved = tmp_path / "lora.json"
    assert CliRunner().invoke(cli, ["analyze", LORA, "-q", "-o", str(saved)]).exit_code == 0
    assert "--modules kproj" in cli_error("compare", saved, saved, "--labels", "a,b", "--modules", "kproj")
    assert "unknown or not shared metric" in cli_error("compare", saved, saved, "--labels", "a,b", "--metrics", "x")


def test_module_types_and_selection_of_diffusers_and_kohya_names():
    """Module types group what is the same projection: diffusers' `to_out.0` is not `0`, and a kohya name
    (dots turned into underscores) is typed by what follows its last index; --modules also selects by a
    trailing part of the name, so `to_q` works on kohya files."""
    from types import SimpleNamespace

    from deltaspec.selection import select
    from deltaspec.updates import layer_index, module_type

    names = {"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0": ("to_out.0", 0),
             "unet.mid_block.attentions.0.transformer_blocks.0.ff.net.2": ("net.2", 0),
             "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_q": ("attn2_to_q", 1),
             "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": ("attn1_to_q", 0),
             "lora_te1_text_model_encoder_layers_11_self_attn_q_proj": ("self_attn_q_proj", 11),
             "model.layers.3.self_attn.q_proj": ("q_proj", 3), "lm_head": ("lm_head", None)}
    for n, (typ, idx) in names.items():
        assert (module_type(n), layer_index(n)) == (typ, idx), n
    items = [SimpleNamespace(name=n, module=module_type(n), layer=layer_index(n)) for n in names]
    pick = lambda mods: sorted(x.name for x in select(items, mods))  # noqa: E731
    assert pick(["to_q"]) == sorted(n for n in names if n.endswith("to_q"))
    assert pick(["attn1.to_q"]) == ["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"]
    assert pick(["q_proj"]) == ["lora_te1_text_model_encoder_layers_11_self_attn_q_proj", "model.layers.3.self_attn.q_proj"]
    assert pick(["to_out.0", "ff.net.2"]) == sorted(n for n in names if n.startswith("unet."))
    with pytest.raises(DeltaspecError, match="no such module type; available: to_out.0, net.2, attn2_to_q"):
        select(items, ["to_z"])


def test_figure2_default_panels_follow_the_naming():
    from deltaspec.plots.hist import default_modules

    llm = ["model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj", "model.layers.0.self_attn.q_proj"]
    sd = ["text_encoder.text_model.encoder.layers.0.self_attn.k_proj",
          "unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_k",
          "unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_v"]
    kohya = ["lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k",
             "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_v"]
    assert default_modules(llm) == ("k_proj", "v_proj")
    assert default_modules(sd) == default_modules(kohya) == ("to_k", "to_v")


def test_embeddings_are_told_by_the_last_name_part():
    """Linear layers inside an embedding block (SD's time_embedding.linear_1, Flux's x_embedder) are
    weights analysed by default; token/position embeddings and heads, dotted or kohya-named, are not."""
    from deltaspec.io.model.names import is_embedding

    emb = ["model.embed_tokens", "lm_head", "transformer.wte", "bert.embeddings.word_embeddings", "gpt_neox.embed_in",
           "lora_te1_text_model_embeddings_token_embedding", "lora_te_text_model_embeddings_position_embedding"]
    weights = ["unet.time_embedding.linear_1", "transformer.x_embedder", "transformer.context_embedder",
               "lora_unet_time_embedding_linear_1", "model.layers.0.self_attn.q_proj", "lora_unet_add_embedding_linear_2"]
    assert [n for n in emb if not is_embedding(n)] == [] and [n for n in weights if is_embedding(n)] == []
