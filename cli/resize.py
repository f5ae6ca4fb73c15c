"""`deltaspec resize`: any update deltaspec reads → a LoRA of the chosen per-layer rank, written as a PEFT
adapter, a kohya file or a diffusers file (by default the input's own format)."""
from __future__ import annotations

import json
from pathlib import Path

import click

from deltaspec.formatting import wrap

from .common import UserPath, user_errors, paths_exist
from .lora_out import (TARGETS, TO_HELP, check_target, default_target, dynamic_policy, source_metadata, write,
                       write_options)
from .options import reader_options
from .output import table_width, warn
from .suggest_rank import POLICY_HELP, device_options

RESIZE_HELP = """Output (--to peft): OUT/adapter_config.json + OUT/adapter_model.safetensors (PEFT LoRA;
per-layer r and α in rank_pattern/alpha_pattern with exact keys, PEFT ≥ 0.15), and
OUT/resize_info.json (command, input, policy, per-layer ranks, kept energy, relative Frobenius
error). OUT must be new or empty; --force writes into a non-empty OUT, replacing only those
three files. OUT may never be, or lie in, an input. Layers: linear (also GPT-2 Conv1D via
fan_in_fan_out: from a PEFT adapter's config, or for full FT from the base's config.json
model_type), Conv2d LoRA (A stored as (r, in, kh, kw)), PEFT embedding LoRA (lora_embedding_A/B);
a full-FT embedding update is refused. LyCORIS LoHa / LoKr / full / Tucker become a plain LoRA
(LoHa / LoKr conv layers store the kernel flattened: with --base the LoRA is written conv-shaped).

kohya's resize_lora.py flags: --rank is --new_rank, --conv-rank --new_conv_rank (every conv
layer; default --rank), --dynamic-method / --dynamic-param as kohya's (the rank is kohya's
index + 1, capped by --rank when given), --verbose prints the Frobenius norm retained per layer.
α keeps each layer's α/r (kohya's new_alpha = α/r · new rank) unless --keep-scale alpha."""

@click.command(epilog=RESIZE_HELP + "\n\n" + TO_HELP + "\n\n" + POLICY_HELP)
@click.argument("ckpt", type=UserPath(), callback=paths_exist())
@click.option("-o", "--out", type=UserPath(), required=True,
              help="Output: a folder (peft) or a .safetensors file.")
@click.option("--to", type=click.Choice(TARGETS), default=None, help="Output format [the input's].")
@click.option("--rank", "fixed", type=click.IntRange(min=1), default=None, help="Same rank R for every layer.")
@click.option("--energy", type=float, default=None, help="Per layer: smallest rank keeping energy share E.")
@click.option("--fro-error", type=float, default=None, help="Per layer: smallest rank with relative error ≤ F.")
@click.option("--sv-ratio", type=float, default=None,
              help="Per layer: #{σ_i > σ_1 / X} (kohya's sv_ratio keeps one more).")
@click.option("--dynamic-method", default=None, help="kohya's rule: sv_ratio, sv_fro or sv_cumulative.")
@click.option("--dynamic-param", type=float, default=None, help="Its parameter (kohya's --dynamic_param).")
@click.option("--conv-rank", type=click.IntRange(min=1), default=None,
              help="Rank (or cap) of conv layers (kohya's --new_conv_rank).")
@click.option("--component", default=None,
              help="Pipeline component of module names (unet, …); with single SD files, the one to keep.")
@click.option("--knee", is_flag=True, help="Per layer: the knee of the spectrum.")
@click.option("--effective-rank", is_flag=True, help="Per layer: the rounded effective rank.")
@click.option("--max-rank", type=click.IntRange(min=1), default=None, help="Cap on every layer's rank.")
@click.option("--keep-scale", type=click.Choice(["ratio", "alpha"]), default="ratio", show_default=True,
              help="New α per layer: keep the source's α/r (ratio) or its α (alpha).")
@reader_options
@device_options
@write_options
@user_errors
def resize(ckpt, out, to, fixed, energy, fro_error, sv_ratio, dynamic_method, dynamic_param, conv_rank, component,
           knee, effective_rank, max_rank, keep_scale, base, ckpt_type, lora_alpha, include_embeddings, device, dtype,
           save_dtype, force, verbose, fmt, quiet):
    """Resize the update in CKPT to a LoRA in OUT by truncated SVD (Eckart–Young).

    \b
    deltaspec resize sample_checkpoints/lora --rank 8 -o lora_r8/
    deltaspec resize sample_checkpoints/multilora --rank 16 -o as_lora/  # exact
    deltaspec resize sample_checkpoints/full --base sample_checkpoints/base \\
        --energy 0.9 -o ft_lora/
    deltaspec resize my_kohya.safetensors --rank 32 \\
        --dynamic-method sv_fro --dynamic-param 0.9 -o small.safetensors

    Choose one of --rank, --energy, --fro-error, --sv-ratio, --knee, --effective-rank,
    --dynamic-method (with it, --rank is the cap, as kohya's --new_rank).
    Adapters (LoRA, MultiLoRA, AdaLoRA) are truncated from their exact factored SVD without forming
    ΔW; dense updates (full FT with --base, DoRA) from the SVD of ΔW. A rank at least the update's
    rank reproduces ΔW (a MultiLoRA at its total rank becomes an equivalent PEFT LoRA).
    """
    import deltaspec as ds
    from deltaspec.io.write.peft import conv1d_base

    policy, max_rank = choose_policy(fixed, energy, fro_error, sv_ratio, knee, effective_rank, dynamic_method,
                                     dynamic_param, max_rank)
    updates = ds.load(ckpt, base=base, format=ckpt_type, lora_alpha=lora_alpha, include_embeddings=include_embeddings)
    src_cfg = _source_config(ckpt)
    resize_and_write(updates, "resize", out=out, to=to, inputs=[ckpt, base], policy=policy, fixed=fixed,
                     max_rank=max_rank, conv_rank=conv_rank, component=component, keep_scale=keep_scale, device=device,
                     dtype=dtype, save_dtype=save_dtype, force=force, verbose=verbose, fmt=fmt, quiet=quiet,
                     src_meta=source_metadata(ckpt) if updates.format in ("kohya", "lycoris") else None,
                     peft_kw={"base_model": src_cfg.get("base_model_name_or_path") or base,
                              "task_type": src_cfg.get("task_type")},
                     conv1d=lambda: conv1d_base(base, ckpt, [u.name for u in updates if u.kind == "dense"]))


def choose_policy(fixed, energy, fro_error, sv_ratio, knee, effective_rank, dynamic_method, dynamic_param, max_rank):
    """(ranks.Policy, max_rank) from the policy flags; with --dynamic-method, --rank is the cap (kohya)."""
    from deltaspec import ranks as R
    from deltaspec.errors import DeltaspecError

    dynamic = dynamic_policy(dynamic_method, dynamic_param, fixed)
    given = {"rank": None if dynamic else fixed, "energy": energy, "fro_error": fro_error, "sv_ratio": sv_ratio,
             "knee": knee or None, "effective_rank": effective_rank or None}
    chosen = [k for k, v in given.items() if v is not None] + (["dynamic_method"] if dynamic else [])
    if len(chosen) != 1:
        raise DeltaspecError("choose exactly one of --rank, --energy, --fro-error, --sv-ratio, --knee, --effective-rank, "
                             "--dynamic-method"
                             + (f" (got {', '.join('--' + c.replace('_', '-') for c in chosen)})" if chosen else ""))
    if dynamic:
        caps = [x for x in (fixed, max_rank) if x is not None]
        return dynamic, (min(caps) if caps else None)
    name = chosen[0]
    return R.policy(name, given[name] if name not in ("knee", "effective_rank") else None), max_rank


def resize_and_write(updates, command: str, *, out, to, inputs, policy, fixed, max_rank, conv_rank, component,
                     keep_scale, device, dtype, save_dtype, force, verbose, fmt, quiet, src_meta=None, peft_kw=None,
                     conv1d=None, conv_1x1=True, extra_info=None):
    """Truncate `updates` by `policy` and write the LoRA in format `to` (shared by resize, merge, extract)."""
    import deltaspec as ds
    from deltaspec.errors import DeltaspecError
    from deltaspec.io.write.sd import target_names
    from deltaspec.progress import Progress
    from deltaspec.resize import resize as run_resize
    from deltaspec.spectra import pick_device

    pick_device(device)
    to = to or default_target(updates.format)
    known = {u.name: {**u.meta["sd_names"], "shape": u.shape} for u in updates if "sd_names" in u.meta}
    known = known if len(known) == len(updates) else None  # layers of single SD files know their names
    if component and known:  # single SD files: keep that component's layers
        kept = [u for u in updates if u.name.startswith(component + ".")]
        if not kept:
            comps = sorted({u.name.partition(".")[0] for u in updates})
            raise DeltaspecError(f"{updates.path}: --component {component}: no such component in it (it has "
                                 f"{', '.join(comps)})")
        updates.layers = kept
    names = target_names([u.name for u in updates], updates.format, to, str(updates.path), component,
                         updates.base, known)
    check_target(out, to, inputs, force)
    top = max(u.rank_bound for u in updates)
    if policy.name == "rank" and to != "peft" and fixed > top:
        raise DeltaspecError(f"{updates.path}: --rank {fixed} is above the input's largest rank {top}; resizing cannot "
                             "add rank")
    bar = Progress(len(updates), "layers", enabled=False if quiet else None)
    try:
        res = run_resize(updates, policy, max_rank=max_rank, keep_scale=keep_scale, device=device, dtype=dtype,
                         conv1d_dense=bool(to == "peft" and conv1d and any(u.kind == "dense" for u in updates)
                                           and conv1d()),
                         progress=lambda n: bar.update(1, n), conv_rank=conv_rank, conv_1x1=conv_1x1)
    finally:
        bar.close()
    if not res.factors():
        raise DeltaspecError(f"{updates.path}: every update is zero; nothing to write")
    from .report import command_line

    info = {"deltaspec_version": ds.__version__, "command_name": command, "command": command_line(),
            "input": {"path": str(updates.path), "format": updates.format, "base": updates.base, "to": to,
                      **(extra_info or {})},
            "settings": {"max_rank": max_rank, "conv_rank": conv_rank, "device": device, "dtype": dtype,
                         "save_dtype": save_dtype},
            **res.to_dict()}
    write(out, to, res.factors(), names=names, src_meta=src_meta, save_dtype=save_dtype, info=info,
          comment=f"{command} by deltaspec ({policy.label})",
          peft_kw={**(peft_kw or {}), "fan_in_fan_out": res.fan_in_fan_out})
    if fmt == "json":
        click.echo(json.dumps(info, indent=1))
    else:
        total = sum(x.rank for x in res.layers)
        head = (f"{updates.path} [{updates.format}] → {out}: {len(res.factors())} LoRA layers, {policy.label}"
                + (f", at most {max_rank}" if max_rank else "") + f", total rank {total}")
        click.echo("\n".join(wrap(head, table_width(None))))
        click.echo(res.format_table(width=table_width(None), verbose=verbose))
    warn(res.warnings)
    return res


def _source_config(ckpt) -> dict:
    """task_type and base_model_name_or_path of an adapter input (its adapter_config.json), else {}."""
    p = Path(ckpt)
    cfg = (p if p.is_dir() else p.parent) / "adapter_config.json"
    try:
        return json.loads(cfg.read_text()) if cfg.is_file() else {}
    except (OSError, ValueError):
        return {}
