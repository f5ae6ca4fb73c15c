"""Every config value a reader uses is validated: a bad one is `error: <file>: <key>: <problem>`,
exit 2 — never a traceback and never a silently wrong scale."""
import json
import os
import sys

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from deltaspec.errors import CorruptFileError, FormatError  # noqa: E402
from deltaspec.io import load  # noqa: E402
from deltaspec_cli.main import cli  # noqa: E402
from io_fixtures import LLAMA_LIKE, random_state, snapshot, write_deltaspec, write_mtl  # noqa: E402

Q = "model.layers.0.self_attn.q_proj"


def adapter(d, cfg_text, dora=False):
    d.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    sd = {f"base_model.model.{Q}.lora_A.weight": torch.randn(4, 32, generator=g),
          f"base_model.model.{Q}.lora_B.weight": torch.randn(32, 4, generator=g)}
    if dora:
        sd[f"base_model.model.{Q}.lora_magnitude_vector"] = torch.rand(32, generator=g)
    save_file(sd, d / "adapter_model.safetensors")
    (d / "adapter_config.json").write_text(cfg_text)
    return d


def cfg(**kw):
    c = {"peft_type": "LORA", "r": 4, "lora_alpha": 8}
    c.update(kw)
    return json.dumps(c)


# (config text, key named in the message, problem named in the message)
BAD_PEFT = [
    (cfg(lora_alpha=None), "lora_alpha", "expected a number, got null"),
    (cfg(lora_alpha="16"), "lora_alpha", 'expected a number, got "16"'),
    (cfg(lora_alpha=True), "lora_alpha", "expected a number, got True"),
    (cfg().replace('"lora_alpha": 8', '"lora_alpha": NaN'), "lora_alpha", "expected a finite number, got nan"),
    (cfg().replace('"lora_alpha": 8', '"lora_alpha": -Infinity'), "lora_alpha", "expected a finite number, got -inf"),
    (cfg(lora_alpha=1e300), "lora_alpha", "gives scale α/r = 2.5e+299"),
    (cfg(lora_alpha=1e300, use_rslora=True), "lora_alpha", "gives scale α/√r = 5e+299"),
    (cfg().replace('"lora_alpha": 8', '"lora_alpha": ' + "9" * 400), "lora_alpha", "number too large"),
    (cfg(r="8"), "r", 'expected a number, got "8"'),
    (cfg(r=0), "r", "expected an integer ≥ 1, got 0"),
    (cfg(r=2.5), "r", "expected an integer ≥ 1, got 2.5"),
    (cfg(alpha_pattern={"q_proj(": 4}), "alpha_pattern", '"q_proj(" is not a valid regular expression'),
    (cfg(alpha_pattern={"q_proj": "x"}), 'alpha_pattern["q_proj"]', 'expected a number, got "x"'),
    (cfg(alpha_pattern=["q_proj"]), "alpha_pattern", "expected an object"),
    (cfg(rank_pattern={"[a-": 4}), "rank_pattern", '"[a-" is not a valid regular expression (unterminated'),
    (cfg(rank_pattern={"q_proj": 0}), 'rank_pattern["q_proj"]', "expected an integer ≥ 1, got 0"),
    (cfg(use_rslora="false"), "use_rslora", 'expected true or false, got "false"'),
    (cfg(fan_in_fan_out=1), "fan_in_fan_out", "expected true or false, got 1"),
    (cfg(peft_type=5), "peft_type", "expected a string, got 5"),
    (cfg(init_lora_weights=3), "init_lora_weights", "expected true, false or a method name"),
    (cfg(target_parameters=[1]), "target_parameters", "expected a list of strings"),
    (cfg(peft_type="ADALORA", init_r="abc"), "init_r", 'expected a number, got "abc"'),
    (cfg(peft_type="ADALORA", init_r=-3), "init_r", "expected an integer ≥ 1, got -3"),
    (cfg(peft_type="ADALORA", init_r=None), "init_r", "expected a number, got null"),
]


@pytest.mark.parametrize("text,key,problem", BAD_PEFT)
def test_bad_peft_config_values(tmp_path, text, key, problem):
    d = adapter(tmp_path / "a", text)
    with pytest.raises(FormatError) as e:
        load(d)
    assert str(e.value).startswith(f"{d / 'adapter_config.json'}: {key}: {problem}"), str(e.value)


def test_dora_with_nan_alpha_fails_before_reading_the_base(tmp_path):
    d = adapter(tmp_path / "a", cfg(use_dora=True).replace('"lora_alpha": 8', '"lora_alpha": NaN'), dora=True)
    base = tmp_path / "base"
    base.mkdir()
    save_file(random_state(LLAMA_LIKE, 0), base / "model.safetensors")
    with pytest.raises(FormatError, match="lora_alpha: expected a finite number, got nan"):
        load(d, base=base)


def test_deeply_nested_json(tmp_path):
    d = adapter(tmp_path / "a", "[" * 200000 + "]" * 200000)
    with pytest.raises(FormatError, match="nested too deeply"):
        load(d)
    m = tmp_path / "m"
    m.mkdir()
    save_file(random_state(LLAMA_LIKE, 0), m / "model-00001-of-00001.safetensors")
    (m / "model.safetensors.index.json").write_text('{"weight_map": ' + "[" * 200000 + "]" * 200000 + "}")
    with pytest.raises(CorruptFileError, match="model.safetensors.index.json"):
        load(m, base=m)
    header = b'{"a": ' + b"[" * 200000 + b"]" * 200000 + b"}"
    (tmp_path / "k.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    with pytest.raises(CorruptFileError, match="nested"):
        load(tmp_path / "k.safetensors", base=m)


def kohya_file(path, alpha):
    g = torch.Generator().manual_seed(0)
    n = "lora_unet_down_blocks_0_attentions_0_proj_in"
    save_file({f"{n}.lora_down.weight": torch.randn(4, 32, generator=g),
               f"{n}.lora_up.weight": torch.randn(32, 4, generator=g), f"{n}.alpha": alpha}, path)
    return n


@pytest.mark.parametrize("alpha,problem", [(torch.tensor(3e38), "gives scale α/r = 7.5e+37"),
                                           (torch.tensor(float("nan")), "alpha is nan, not a finite number"),
                                           (torch.tensor(float("inf"), dtype=torch.bfloat16), "alpha is inf")])
def test_kohya_alpha(tmp_path, alpha, problem):
    n = kohya_file(tmp_path / "k.safetensors", alpha)
    with pytest.raises(FormatError) as e:
        load(tmp_path / "k.safetensors")
    assert str(e.value).startswith(f"{tmp_path / 'k.safetensors'}: {n}.alpha: {problem}"), str(e.value)


def test_kohya_alpha_read_without_torch_matches_torch(tmp_path):
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        kohya_file(tmp_path / "k.safetensors", torch.tensor(3.0, dtype=dtype))
        assert load(tmp_path / "k.safetensors")[0].meta["scale"] == pytest.approx(0.75)


def test_multilora_and_mtl_alpha(tmp_path):
    write_deltaspec(tmp_path / "ml", vector=False)
    p = tmp_path / "ml" / "adapter_config.json"
    c = json.loads(p.read_text())
    for bad, problem in (("x", 'expected a number, got "x"'), (None, "expected a number, got null")):
        c["lora_alpha"] = bad
        p.write_text(json.dumps(c))
        with pytest.raises(FormatError, match=f"lora_alpha: {problem}"):
            load(tmp_path / "ml")
    del c["lora_alpha"]
    p.write_text(json.dumps(c))
    with pytest.raises(FormatError, match="lora_alpha: missing"):
        load(tmp_path / "ml")
    write_mtl(tmp_path / "mtl" / "final_checkpoint.pt")
    for bad in (float("nan"), float("inf")):
        with pytest.raises(FormatError, match="lora_alpha: expected a finite number"):
            load(tmp_path / "mtl", lora_alpha=bad)
    with pytest.raises(FormatError, match="lora_alpha: gives scale"):
        load(tmp_path / "mtl", lora_alpha=1e30)


def test_cli_one_line_exit_2_inputs_untouched(tmp_path):
    d = adapter(tmp_path / "a", cfg(lora_alpha="16"))
    before = snapshot(tmp_path)
    for cmd in ("analyze", "info"):
        r = CliRunner().invoke(cli, [cmd, str(d)])
        assert r.exit_code == 2 and "Traceback" not in r.output
        want = f'error: {d / "adapter_config.json"}: lora_alpha: expected a number, got "16"'
        assert r.output.strip().splitlines()[-1] == want
    assert snapshot(tmp_path) == before


def test_configs_that_do_not_say_the_scale(tmp_path):
    """No peft_type and no lora_alpha: not a PEFT config (the analysis JSON written over one, say): an error,
    not a silent α = 8. A missing lora_alpha alone: PEFT's default, said in a warning. Factors whose rank
    is not the config's r: a warning (PEFT itself would refuse the adapter)."""
    d = adapter(tmp_path / "a", json.dumps({"format": "deltaspec", "layers": []}))
    with pytest.raises(FormatError, match="neither peft_type nor lora_alpha"):
        load(d)
    u = load(adapter(tmp_path / "b", json.dumps({"peft_type": "LORA", "r": 4})))
    assert u[0].meta["scale"] == 2.0 and any("no lora_alpha: PEFT's default 8" in w for w in u.warnings)
    u = load(adapter(tmp_path / "c", cfg(r=2)))
    assert u[0].meta["scale"] == 2.0  # α / the factors' rank 4
    assert any("1 module(s) whose factors' rank is not the config's r" in w and "(4 vs 2)" in w for w in u.warnings)
    assert not load(adapter(tmp_path / "d", cfg())).warnings
