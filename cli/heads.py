"""`deltaspec heads`: which heads of a MultiLoRA checkpoint carry the update (per-head anatomy)."""
from __future__ import annotations

import click

from .common import UserPath, cli_words, parse_layers, parse_list, user_errors
from .options import FORMATS, compute_options, selection_options
from .output import check_output, emit, output_format, table_width, warn


def heads_reader_options(fn):
    """--type, --lora-alpha: as `analyze` (MultiLoRA needs no --base)."""
    fn = click.option("--lora-alpha", type=float, default=None,
                      help="LoRA alpha of an MTL-LoRA MultiLoRA .pt file (it does not store it).")(fn)
    return click.option("--type", "ckpt_type", type=click.Choice(FORMATS), default="auto", show_default=True,
                        help="Checkpoint format; 'auto' detects it from the files.")(fn)


def load_heads(ckpt, ckpt_type, lora_alpha, modules, layers, device, dtype, zero_tol=None, progress=None):
    """The HeadsResult of CKPT for the shared options (also used by `plot heads`)."""
    import deltaspec as ds
    from deltaspec.head_anatomy import ZERO_TOL

    return ds.heads(ckpt, format=ckpt_type, lora_alpha=lora_alpha, modules=parse_list(modules),
                    layers=parse_layers(layers), device=device, dtype=dtype,
                    zero_tol=ZERO_TOL if zero_tol is None else zero_tol, progress=progress)


@click.command()
@click.argument("ckpt", type=UserPath())
@heads_reader_options
@selection_options
@compute_options(metrics=False)
@click.option("--zero-tol", type=click.FloatRange(0, 1, max_open=True), default=0.01, show_default=True,
              help="A scaling counts as near 0 (frac_s_small) when |s| <= this x the layer's largest |s|.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default=None,
              help="Output format [default: from -o's extension, else table]. JSON: every value, per head "
                   "and per pair of heads; CSV: one row per head.")
@click.option("-o", "--out", type=UserPath(dir_okay=False), default=None, help="Write the report to FILE.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@user_errors
def heads(ckpt, ckpt_type, lora_alpha, modules, layers, device, dtype, zero_tol, fmt, out, quiet):
    """Which heads of a MultiLoRA checkpoint carry the update.

    Per layer of CKPT (a deltaspec MultiLoRA adapter dir, or an MTL-LoRA
    final_checkpoint.pt / run dir with --lora-alpha): each head's share of
    the energy ‖ΔW_i‖²/Σ‖ΔW_j‖² and its spectrum, the effective number of
    heads, the interference (‖ΔW‖² − Σ‖ΔW_i‖²)/‖ΔW‖², the overlap of the
    heads' column and row spaces, and the scalings' mean |s| and fraction
    near 0. Exact and factored (nothing d_out × d_in is formed). A LoRA or
    full fine-tuning checkpoint is refused: it has one head, or none.
    Definitions: docs/METRICS.md, "Heads". Figure: deltaspec plot heads.
    """
    fmt = output_format(fmt, out)
    check_output(out, [ckpt])
    result = load_heads(ckpt, ckpt_type, lora_alpha, modules, layers, device, dtype, zero_tol,
                        progress=False if quiet else None)
    if fmt == "table":
        result.warnings = [cli_words(w) for w in result.warnings]
    text = (result.to_json() if fmt == "json" else result.to_csv() if fmt == "csv"
            else result.format_table(width=table_width(out)))
    emit(text, out)
    if fmt != "table" or out:
        warn(result.warnings)
