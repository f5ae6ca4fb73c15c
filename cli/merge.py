"""`deltaspec merge`: several LoRA-type adapters of one base → the best rank-r LoRA of Σ w_j ΔW_j."""
from __future__ import annotations

import click

from .common import UserPath, user_errors
from .lora_out import TARGETS, TO_HELP, write_options
from .options import reader_options
from .suggest_rank import device_options

MERGE_HELP = """Each adapter's ΔW_j is read as deltaspec reads it (kohya, LyCORIS LoRA/LoCon/LoHa, diffusers,
PEFT, MultiLoRA); the sum Σ w_j ΔW_j stays factored ([w_1 L_1 | …] @ [R_1; …], rank ≤ Σ r_j) and
is truncated by its exact SVD (Eckart–Young), as kohya's svd_merge_lora.py and PEFT's
add_weighted_adapter(combination_type="svd") do after forming ΔW. The table's kept column is
the energy kept (1 − kept: the energy lost). A layer in only some adapters is merged from those.
Adapters whose common layers differ in shape are of different bases: an error. New α = rank
(scale 1), as kohya's svd_merge_lora."""


@click.command(epilog=MERGE_HELP + "\n\n" + TO_HELP)
@click.argument("adapters", nargs=-1, required=True, type=UserPath(exists=True))
@click.option("-o", "--out", type=UserPath(), required=True, help="Output: a folder (peft) or a .safetensors file.")
@click.option("--weights", default=None, help="Comma-separated weights w_j [1 each].")
@click.option("--to", type=click.Choice(TARGETS), default=None, help="Output format [the first input's].")
@click.option("--rank", "fixed", type=click.IntRange(min=1), default=None, help="Rank of the merged LoRA.")
@click.option("--dynamic-method", default=None, help="kohya's rule: sv_ratio, sv_fro or sv_cumulative.")
@click.option("--dynamic-param", type=float, default=None, help="Its parameter.")
@click.option("--energy", type=float, default=None, help="Per layer: smallest rank keeping energy share E.")
@click.option("--conv-rank", type=click.IntRange(min=1), default=None, help="Rank (or cap) of conv layers.")
@click.option("--component", default=None, help="Pipeline component of module names (unet, …).")
@reader_options
@device_options
@write_options
@user_errors
def merge(adapters, out, weights, to, fixed, dynamic_method, dynamic_param, energy, conv_rank, component, base,
          ckpt_type, lora_alpha, include_embeddings, device, dtype, save_dtype, force, verbose, fmt, quiet):
    """Merge ADAPTERS into one LoRA: the best rank-r LoRA of Σ w_j ΔW_j.

    \b
    deltaspec merge a.safetensors b.safetensors --weights 0.7,0.3 \\
        --rank 16 -o ab.safetensors
    """
    import deltaspec as ds
    from deltaspec.errors import DeltaspecError
    from deltaspec.merge import merge_updates

    from .resize import choose_policy, resize_and_write

    if len(adapters) < 2:
        raise DeltaspecError("merge needs at least two adapters")
    try:
        w = [float(x) for x in weights.split(",")] if weights else [1.0] * len(adapters)
    except ValueError:
        raise DeltaspecError(f"--weights {weights!r}: expected comma-separated numbers") from None
    policy, max_rank = choose_policy(fixed, energy, None, None, False, False, dynamic_method, dynamic_param, None)
    loaded = [ds.load(a, base=base, format=ckpt_type, lora_alpha=lora_alpha, include_embeddings=include_embeddings)
              for a in adapters]
    merged = merge_updates(loaded, w)
    resize_and_write(merged, "merge", out=out, to=to, inputs=[*adapters, base], policy=policy, fixed=fixed,
                     max_rank=max_rank, conv_rank=conv_rank, component=component, keep_scale="ratio", device=device,
                     dtype=dtype, save_dtype=save_dtype, force=force, verbose=verbose, fmt=fmt, quiet=quiet,
                     extra_info={"adapters": list(map(str, adapters)), "weights": w})
