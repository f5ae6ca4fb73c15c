"""`deltaspec train`: pretrain the built-in base, or fine-tune it (or a local transformers model) with
full FT, LoRA or MultiLoRA."""
from __future__ import annotations

import click

from .common import UserPath, parse_list, user_errors

DEFAULT_SCALING_LR_MULT = 30.0  # = deltaspec.train.trainer.DEFAULT_SCALING_LR_MULT (not imported: torch-free --help)
TARGETS = "q_proj,k_proj,v_proj,o_proj"


@click.command()
@click.option("--method", type=click.Choice(["full", "lora", "multilora", "pretrain"]), required=True,
              help="Fine-tuning method; 'pretrain' trains the built-in base model from scratch.")
@click.option("-o", "--out", type=UserPath(file_okay=False), required=True,
              help="Output directory: new or empty (else --force); never inside --base/--model/--data.")
@click.option("--base", type=UserPath(), default=None,
              help="Built-in GPT base dir [default: the bundled sample_checkpoints/base]. Not with --model.")
@click.option("--model", "hf_model", type=UserPath(), default=None,
              help="Local HuggingFace transformers causal LM dir (config, weights, tokenizer) to fine-tune "
                   "instead of the built-in GPT; needs pip install 'deltaspec[hf]'. Nothing is downloaded.")
@click.option("--max-len", type=int, default=None,
              help="--model only: tokens per sequence [default: min(128, the model's max_position_embeddings)].")
@click.option("-r", "--rank", type=int, default=16, show_default=True,
              help="TOTAL adapter rank (MultiLoRA: heads × per-head rank, the paper's equal-rank comparison).")
@click.option("--heads", type=int, default=4, show_default=True, help="MultiLoRA: number of parallel LoRA heads.")
@click.option("--lora-alpha", type=float, default=None,
              help="LoRA alpha: ΔW carries alpha/r, r the per-head rank [default: 2·r].")
@click.option("--alpha", "old_alpha", type=float, default=None, hidden=True)  # old spelling of --lora-alpha
@click.option("--target-modules", default=None,
              help="Module name patterns to adapt (nn.Linear only), e.g. q_proj,v_proj,gate_proj "
                   f"[default: {TARGETS}]. --method full: given, only these modules are trained "
                   "(the projections an adapter gets); not given, every parameter.")
@click.option("--targets", "old_targets", default=None, hidden=True)  # old spelling of --target-modules
@click.option("--lora-dropout", type=float, default=0.0, show_default=True,
              help="Dropout on the adapters' input (LoRA/MultiLoRA), as PEFT's lora_dropout.")
@click.option("--scaling-lr-mult", type=float, default=DEFAULT_SCALING_LR_MULT, show_default=True,
              help="MultiLoRA: learning rate of the zero-initialised scalings, as a multiple of --lr "
                   "(docs/TRAINING.md says why it is not 1).")
@click.option("--steps", type=int, default=400, show_default=True, help="Optimizer steps (one batch each).")
@click.option("--save-every", type=int, default=0, show_default=True,
              help="Also keep OUT/checkpoint-<step>/ every N steps (each readable by analyze; for "
                   "`deltaspec plot trajectory`); 0: only the final checkpoint.")
@click.option("--track-every", type=int, default=0, show_default=True,
              help="Analyse ΔW every N steps while training, into OUT/spectra_trajectory.jsonl "
                   "(for `plot trajectory`; no step checkpoints written); 0: off.")
@click.option("--lr", type=float, default=None, help="Peak learning rate [default: full 3e-4, lora/multilora 2e-3, pretrain 3e-3].")
@click.option("--batch-size", type=int, default=32, show_default=True, help="Sequences per step.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds the adapter init and the data stream (the same for every method).")
@click.option("--data", type=UserPath(dir_okay=False), default=None,
              help="JSONL with {\"prompt\",\"response\"} or {\"text\"} lines [default: the built-in task mixture].")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda.")
@click.option("--preset", type=click.Choice(["sample", "tiny"]), default="sample", show_default=True,
              help="Size of a pretrained base: 'sample' (4 layers, d=128) or 'tiny' (for tests); pretrain only.")
@click.option("--force", is_flag=True,
              help="Write into a non-empty --out: the checkpoint files of an earlier run there are replaced.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@user_errors
def train(method, out, base, hf_model, max_len, rank, heads, lora_alpha, old_alpha, target_modules, old_targets,
          lora_dropout, scaling_lr_mult, steps, save_every, track_every, lr, batch_size, seed, data, device, preset, force, quiet):
    """Train and save a checkpoint that `deltaspec analyze` reads without extra flags.

    Same base, data stream, steps and seed for every method, so LoRA, MultiLoRA and full
    fine-tuning differ only in the method. Writes train_info.json with per-task accuracy.
    With --model, a local transformers model gets the same adapters on its own projections.
    LoRA and MultiLoRA runs also keep OUT/checkpoint-0/, the adapter before the first step
    (`deltaspec analyze OUT --initial auto`: how much of ΔW is the initial factors).
    """
    from deltaspec.errors import DeltaspecError
    from deltaspec.train import GPTConfig, TrainConfig, default_base, run

    lora_alpha = _one_of(lora_alpha, old_alpha, "--lora-alpha", "--alpha")
    target_modules = _one_of(target_modules, old_targets, "--target-modules", "--targets")
    full_targets = method == "full" and target_modules is not None
    target_modules = target_modules or TARGETS
    if method != "pretrain" and base is None and hf_model is None:
        base = default_base()
        if base is None:
            raise DeltaspecError("no base model: pass --base DIR, or first run "
                                 "`deltaspec train --method pretrain --out DIR`")
    model = GPTConfig() if preset == "sample" else GPTConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64, max_len=48)
    cfg = TrainConfig(method=method, out=out, base=base, hf_model=hf_model, max_len=max_len, rank=rank, heads=heads,
                      lora_alpha=lora_alpha, target_modules=tuple(parse_list(target_modules) or ()),
                      full_targets=full_targets, dropout=lora_dropout, scaling_lr_mult=scaling_lr_mult, steps=steps,
                      save_every=save_every, track_every=track_every, lr=lr, batch_size=batch_size, seed=seed, device=device, data=data,
                      model=model, progress=False if quiet else None, force=force)
    try:
        run(cfg)
    except (ValueError, FileNotFoundError) as e:
        raise DeltaspecError(str(e)) from None


def _one_of(new, old, new_name: str, old_name: str):
    """An option and its old spelling (a hidden alias): either one, not both with different values."""
    from deltaspec.errors import DeltaspecError

    if new is not None and old is not None and new != old:
        raise DeltaspecError(f"{old_name} is the old name of {new_name}; pass one of them")
    return new if new is not None else old
