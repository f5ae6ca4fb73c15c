"""`deltaspec train`: pretrain the built-in base, or fine-tune it (or a local transformers model) with
full FT, LoRA or MultiLoRA."""
from __future__ import annotations

import click

from .common import parse_list, user_errors


@click.command()
@click.option("--method", type=click.Choice(["full", "lora", "multilora", "pretrain"]), required=True,
              help="Fine-tuning method; 'pretrain' trains the built-in base model from scratch.")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Output directory.")
@click.option("--base", type=click.Path(), default=None,
              help="Built-in GPT base dir [default: the bundled sample_checkpoints/base]. Not with --model.")
@click.option("--model", "hf_model", type=click.Path(), default=None,
              help="Local HuggingFace transformers causal LM dir (config, weights, tokenizer) to fine-tune "
                   "instead of the built-in GPT; needs pip install 'deltaspec[hf]'. Nothing is downloaded.")
@click.option("--max-len", type=int, default=None,
              help="--model only: tokens per sequence [default: min(128, the model's max_position_embeddings)].")
@click.option("--rank", type=int, default=16, show_default=True, help="TOTAL adapter rank (MultiLoRA: heads × per-head rank).")
@click.option("--heads", type=int, default=4, show_default=True, help="MultiLoRA: number of parallel LoRA heads.")
@click.option("--alpha", type=float, default=None, help="LoRA alpha (ΔW carries alpha/r, r per head) [default: 2·r].")
@click.option("--targets", default="q_proj,k_proj,v_proj,o_proj", show_default=True,
              help="Module name patterns to adapt (nn.Linear only), e.g. q_proj,v_proj,gate_proj.")
@click.option("--steps", type=int, default=400, show_default=True, help="Optimizer steps.")
@click.option("--lr", type=float, default=None, help="Peak learning rate [default: full 3e-4, lora/multilora 2e-3, pretrain 3e-3].")
@click.option("--batch-size", type=int, default=32, show_default=True, help="Sequences per step.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of initialisation and data order.")
@click.option("--data", type=click.Path(dir_okay=False), default=None,
              help="JSONL with {\"prompt\",\"response\"} or {\"text\"} lines [default: the built-in task mixture].")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda.")
@click.option("--preset", type=click.Choice(["sample", "tiny"]), default="sample", show_default=True,
              help="Size of a pretrained base: 'sample' (4 layers, d=128) or 'tiny' (for tests); pretrain only.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@user_errors
def train(method, out, base, hf_model, max_len, rank, heads, alpha, targets, steps, lr, batch_size, seed, data, device,
          preset, quiet):
    """Train and save a checkpoint that `deltaspec analyze` reads without extra flags.

    Same base, data stream, steps and seed for every method, so LoRA, MultiLoRA and full
    fine-tuning differ only in the method. Writes train_info.json with per-task accuracy.
    With --model, a local transformers model gets the same adapters on its own projections.
    """
    from deltaspec.errors import DeltaspecError
    from deltaspec.train import GPTConfig, TrainConfig, default_base, run

    if method != "pretrain" and base is None and hf_model is None:
        base = default_base()
        if base is None:
            raise DeltaspecError("no base model: pass --base DIR, or first run "
                                 "`deltaspec train --method pretrain --out DIR`")
    model = GPTConfig() if preset == "sample" else GPTConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64, max_len=48)
    cfg = TrainConfig(method=method, out=out, base=base, hf_model=hf_model, max_len=max_len, rank=rank, heads=heads,
                      alpha=alpha, targets=tuple(parse_list(targets) or ()), steps=steps, lr=lr, batch_size=batch_size,
                      seed=seed, device=device, data=data, model=model, progress=False if quiet else None)
    try:
        run(cfg)
    except (ValueError, FileNotFoundError) as e:
        raise DeltaspecError(str(e)) from None
