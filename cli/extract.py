"""`deltaspec extract`: a LoRA from two full checkpoints (base and fine-tuned), as kohya's
extract_lora_from_models.py, written as a kohya, diffusers or PEFT file."""
from __future__ import annotations

import click

from .common import UserPath, paths_exist, user_errors
from .lora_out import TARGETS, TO_HELP, write_options
from .suggest_rank import device_options

EXTRACT_HELP = """BASE and TUNED: two diffusers component folders (unet/, text_encoder/; or two pipeline
folders with --component), two single-file SD 1.x / SDXL / Flux checkpoints (.safetensors as
downloaded: LDM/SGM or BFL names), or two HF model folders; tensors are matched by name and shape
(a mismatch, or a single file against a folder, is an error). Single files need no --component
(it keeps one: unet, text_encoder, text_encoder_2, transformer) and get kohya sd-scripts' names:
SDXL lora_unet_input_blocks_… (SGM) and lora_te1_/lora_te2_, SD 1.x lora_unet_down_blocks_…
(diffusers) and lora_te_, Flux lora_unet_double_blocks_… (qkv one layer); SDXL's OpenCLIP
in_proj becomes q/k/v_proj; the VAE is left out. --to diffusers / peft (one component) take
diffusers module names (Flux: qkv's rows split into to_q/to_k/to_v, sharing lora_A).

Per layer ΔW = W_tuned − W_base (float32, or float64 with --dtype float64) is formed one layer at
a time (at most one dense ΔW resident), and truncated by its SVD (Eckart–Young). As kohya's extract: linear and 1×1 conv layers get --rank,
3×3 conv layers --conv-rank and are left out without it; α = rank (scale 1). Unlike kohya, no
quantile clamping of the factors: the output is the exact truncation."""


@click.command(epilog=EXTRACT_HELP + "\n\n" + TO_HELP)
@click.option("--base", required=True, type=UserPath(), callback=paths_exist(), help="The base model.")
@click.option("--tuned", required=True, type=UserPath(), callback=paths_exist(), help="The fine-tuned model.")
@click.option("-o", "--out", type=UserPath(), required=True, help="Output: a folder (peft) or a .safetensors file.")
@click.option("--to", type=click.Choice(TARGETS), default="peft", show_default=True, help="Output format.")
@click.option("--component", default=None,
              help="Pipeline component the models are (unet, …); with single files, the one to keep.")
@click.option("--rank", "fixed", type=click.IntRange(min=1), default=None, help="Rank (kohya's --dim).")
@click.option("--conv-rank", type=click.IntRange(min=1), default=None, help="Rank of 3×3 convs (--conv_dim).")
@click.option("--dynamic-method", default=None, help="kohya's rule: sv_ratio, sv_fro or sv_cumulative.")
@click.option("--dynamic-param", type=float, default=None, help="Its parameter.")
@click.option("--energy", type=float, default=None, help="Per layer: smallest rank keeping energy share E.")
@device_options
@write_options
@user_errors
def extract(base, tuned, out, to, component, fixed, conv_rank, dynamic_method, dynamic_param, energy, device, dtype,
            save_dtype, force, verbose, fmt, quiet):
    """Extract a LoRA of ΔW = TUNED − BASE.

    \b
    deltaspec extract --base sd/unet --tuned ft/unet --component unet \\
        --rank 32 --conv-rank 16 --to kohya -o ft_lora.safetensors
    """
    import deltaspec as ds
    from deltaspec.errors import DeltaspecError
    from deltaspec.io.write.peft import conv1d_base

    from .resize import choose_policy, resize_and_write

    policy, max_rank = choose_policy(fixed, energy, None, None, False, False, dynamic_method, dynamic_param, None)
    updates = ds.load(tuned, base=base)
    if updates.format != "full":
        raise DeltaspecError(f"{tuned}: a {updates.format} adapter, not a full model; use resize")
    warnings = list(updates.warnings)
    if conv_rank is None:
        convs = [u.name for u in updates if u.meta.get("conv_kernel") not in (None, "1x1")]
        if convs:
            updates.layers = [u for u in updates if u.name not in set(convs)]
            warnings.append(f"{len(convs)} 3×3 conv layer(s) left out (as kohya without --conv_dim): pass --conv-rank")
        if not updates.layers:
            raise DeltaspecError(f"{tuned}: only conv layers differ; pass --conv-rank")
    updates.warnings = warnings
    resize_and_write(updates, "extract", out=out, to=to, inputs=[base, tuned], policy=policy, fixed=fixed,
                     max_rank=max_rank, conv_rank=conv_rank, component=component, keep_scale="ratio", device=device,
                     dtype=dtype, save_dtype=save_dtype, force=force, verbose=verbose, fmt=fmt, quiet=quiet,
                     conv1d=lambda: conv1d_base(base, tuned, [u.name for u in updates]), conv_1x1=False,
                     peft_kw={"base_model": str(base)})
