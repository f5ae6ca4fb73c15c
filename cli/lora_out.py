"""Where and how resize / merge / extract write their LoRA: PEFT folder, kohya or diffusers file.

Shared by the three commands so that `--to`, `-o` and `--force` mean the same everywhere."""
from __future__ import annotations

import json
from pathlib import Path

import click

from deltaspec.errors import DeltaspecError

TARGETS = ("peft", "kohya", "diffusers")

TO_HELP = """--to: peft writes a folder (adapter_config.json + adapter_model.safetensors); kohya and diffusers
write one .safetensors file (kohya: <name>.lora_down/.lora_up/.alpha, metadata ss_network_dim /
ss_network_alpha; diffusers: <component>.<module>.lora_A/B, α in lora_adapter_metadata). Default:
the input's own format (LyCORIS → kohya). kohya names (dots became underscores) become diffusers or
PEFT module names through the base's weight names: pass --base (the diffusers pipeline folder or the
component's folder); a name matching no weight, or several, is an error. A model's module names (PEFT,
full FT) need --component to become kohya or diffusers names. kohya text-encoder names keep
transformers 4's text_model_ level. diffusers files are written in diffusers' current (PEFT-key)
layout."""


def write_options(fn):
    """--save-dtype, --force, -v/--verbose, --format, -q: how resize, merge and extract write and report."""
    for opt in reversed([
        click.option("--save-dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32",
                     show_default=True, help="Storage dtype of the new factors."),
        click.option("--force", is_flag=True, help="Replace OUT's adapter files / the OUT file."),
        click.option("-v", "--verbose", is_flag=True, help="Per layer: Frobenius norm and Σσ retained (kohya's)."),
        click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
                     help="What to print on stdout: the per-layer table or the JSON record."),
        click.option("-q", "--quiet", is_flag=True, help="No progress bar."),
    ]):
        fn = opt(fn)
    return fn


def default_target(fmt: str) -> str:
    return {"kohya": "kohya", "lycoris": "kohya", "diffusers": "diffusers"}.get(fmt, "peft")


def dynamic_policy(method, param, rank):
    """kohya's --dynamic_method/--dynamic_param as a ranks.Policy; None when no method is given."""
    from deltaspec import ranks as R
    from deltaspec.kohya_ranks import METHODS

    if method is None:
        if param is not None:
            raise DeltaspecError("--dynamic-param needs --dynamic-method (sv_ratio, sv_fro or sv_cumulative)")
        return None
    if method not in METHODS:
        raise DeltaspecError(f"unknown --dynamic-method '{method}'; expected one of {', '.join(METHODS)}")
    if param is None:
        raise DeltaspecError(f"--dynamic-method {method} needs --dynamic-param")
    return R.policy("kohya_" + method, param)


def check_target(out: str, to: str, inputs, force: bool) -> None:
    """Before any work: a PEFT folder (write_peft.check_out_dir) or a new .safetensors file."""
    from deltaspec.io.write.peft import check_out_dir

    from .output import check_output

    if to == "peft":
        check_out_dir(out, inputs, force)
        return
    if not str(out).endswith(".safetensors"):
        raise DeltaspecError(f"{out}: --to {to} writes one file; give -o a name ending in .safetensors")
    check_output(out, inputs)
    if Path(out).exists() and not force:
        raise DeltaspecError(f"{out}: exists; choose a new name, or pass --force to replace it")


def write(out, to: str, factors, *, names: dict, src_meta=None, save_dtype="float32", comment="", peft_kw=None,
          info: dict) -> None:
    """Write `factors` (LoraFactors, named as read) under `names` in format `to`, plus the run's info:
    OUT/<command>_info.json for PEFT, a `deltaspec` metadata entry for files."""
    import torch

    from deltaspec.io.write import sd as write_sd
    from deltaspec.io.write.peft import write_lora_adapter

    dtype = getattr(torch, save_dtype)
    layers = write_sd.renamed(factors, lambda n: names[n])
    if to == "peft":
        write_lora_adapter(out, layers, dtype=dtype, **(peft_kw or {}))
        (Path(out) / f"{info['command_name']}_info.json").write_text(json.dumps(info, indent=1) + "\n")
    elif to == "kohya":
        meta = dict(src_meta or {})
        meta["deltaspec"] = json.dumps({k: info[k] for k in ("command", "input", "policy") if k in info})
        write_sd.write_kohya(out, layers, meta, dtype=dtype, comment=comment)
    else:
        write_sd.write_diffusers(out, layers, dtype=dtype)
    click.echo(f"wrote {out}", err=True)


def source_metadata(path) -> dict:
    """The safetensors metadata of a single-file input (kohya keeps it), else {}."""
    p = Path(path)
    if not (p.is_file() and p.suffix == ".safetensors"):
        return {}
    from deltaspec.io.files.st_header import read_header

    return dict(read_header(p)[1] or {})
