"""`deltaspec suggest-rank`: per-layer LoRA ranks from the exact spectrum, by several policies side by side."""
from __future__ import annotations

import click

from .common import UserPath, parse_layers, parse_list, user_errors, paths_exist
from .options import reader_options, selection_options
from .output import check_output, emit, output_format, table_width, warn

POLICY_HELP = """Policies (deltaspec/ranks.py; E(k) = Σ_{i≤k} σ_i² / Σ σ_i², the energy a rank-k
truncation keeps, and sqrt(1 − E(k)) its relative Frobenius error, Eckart–Young):

\b
energy          smallest k with E(k) ≥ --energy (default 0.9)
fro-error       smallest k with sqrt(1 − E(k)) ≤ --fro-error (default 0.1)
sv-ratio        #{σ_i > σ_1 / --sv-ratio} (default 10; kohya's keeps one more)
knee            the values before the knee of σ_i/σ_1 (see ranks.py)
effective-rank  exp(spectral entropy), rounded

kohya-sv-ratio, kohya-sv-fro, kohya-sv-cumulative: kohya's resize_lora.py --dynamic_method,
with its parameter in --dynamic-param (kohya keeps index + 1: its sv_fro t is one more than
--energy t²). --keep-scale ratio (default) gives each layer α = (α/r of the
source) · new r, so every layer keeps its scale (α = r when the source has none, e.g. full FT);
--keep-scale alpha keeps the source's α (one α for all layers when it has none). The merged ΔW
is the same either way; it matters for further training."""

CHOICES = ["energy", "fro-error", "sv-ratio", "knee", "effective-rank", "kohya-sv-ratio", "kohya-sv-fro",
           "kohya-sv-cumulative"]


def policy_value_options(fn):
    """--energy, --fro-error, --sv-ratio, --max-rank, --keep-scale (shared with resize)."""
    for opt in reversed([
        click.option("--energy", type=float, default=None, help="Energy share E for the energy policy [0.9]."),
        click.option("--fro-error", type=float, default=None, help="Relative Frobenius error for fro-error [0.1]."),
        click.option("--sv-ratio", type=float, default=None, help="σ_1/σ_i ratio for sv-ratio [10]."),
        click.option("--dynamic-param", type=float, default=None,
                     help="Parameter of the kohya-* policies [10, 0.9, 0.9]."),
        click.option("--max-rank", type=click.IntRange(min=1), default=None, help="Cap on the chosen rank."),
        click.option("--keep-scale", type=click.Choice(["ratio", "alpha"]), default="ratio", show_default=True,
                     help="New α per layer: keep α/r (ratio) or keep α (alpha)."),
    ]):
        fn = opt(fn)
    return fn


def device_options(fn):
    fn = click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True,
                      help="Precision of the SVD (bf16/fp16 checkpoints are always upcast).")(fn)
    return click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda.")(fn)


def chosen_policy(name: str, energy, fro_error, sv_ratio, dynamic_param=None):
    from deltaspec import ranks as R

    key = name.replace("-", "_")
    return R.policy(key, dynamic_param if key.startswith("kohya_") else
                    {"energy": energy, "fro_error": fro_error, "sv_ratio": sv_ratio}.get(key))


def analysed(ckpt, *, base, ckpt_type, lora_alpha, include_embeddings, modules, layers, device, dtype, quiet):
    """(AnalysisResult, source scales) of a checkpoint, or of a saved `analyze -o X.json` (scales unknown)."""
    import deltaspec as ds
    from deltaspec.selection import select
    from deltaspec.suggest import source_scales

    from deltaspec.integrations.record import load_analysis

    from .compare import is_saved_analysis

    mods, lays = parse_list(modules), parse_layers(layers)
    if is_saved_analysis(ckpt):
        res = load_analysis(ckpt)
        res.layers = select(res.layers, mods, lays, where=str(ckpt)) if mods or lays is not None else res.layers
        scales = None
    else:
        updates = ds.load(ckpt, base=base, format=ckpt_type, lora_alpha=lora_alpha,
                          include_embeddings=include_embeddings)
        res = ds.analyze(updates, device=device, dtype=dtype, modules=mods, layers=lays,
                         progress=False if quiet else None)
        scales = source_scales(updates)
    if not res.layers:
        raise ds.DeltaspecError(f"{ckpt}: no layers match --modules {modules} --layers {layers}")
    return res, scales


@click.command(epilog=POLICY_HELP)
@click.argument("ckpt", type=UserPath(), callback=paths_exist())
@reader_options
@selection_options
@device_options
@click.option("--policy", type=click.Choice(CHOICES), default="energy", show_default=True, metavar="NAME",
              help="The policy whose ranks go into the PEFT rank_pattern (below).")
@policy_value_options
@click.option("--levels", default="0.5,0.8,0.9,0.99", show_default=True,
              help="Energy shares for the 'rank needed' table per module type.")
@click.option("--plot", "plot_out", type=UserPath(dir_okay=False), default=None,
              help="Also draw rank needed vs layer at --levels (.pdf, .svg or .png).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default=None,
              help="Output format [default: from -o's extension, else table].")
@click.option("-o", "--out", type=UserPath(dir_okay=False), default=None, help="Write the report to FILE.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@user_errors
def suggest_rank(ckpt, policy, energy, fro_error, sv_ratio, dynamic_param, max_rank, keep_scale, levels, plot_out, fmt, out, **kw):
    """Per-layer LoRA ranks from the exact spectrum of ΔW, and a PEFT config.

    \b
    deltaspec suggest-rank sample_checkpoints/lora
    deltaspec suggest-rank sample_checkpoints/full \\
        --base sample_checkpoints/base --policy fro-error

    CKPT is any checkpoint `analyze` reads (or its saved JSON). Prints, per layer, the rank every
    policy picks (the chosen one marked *) with the energy kept and relative Frobenius error of the
    chosen truncation; per module type the rank needed to keep each of --levels of ΔW's energy
    (for full fine-tuning: the rank a LoRA would need); and a LoraConfig with rank_pattern /
    alpha_pattern whose keys match exactly one module each (PEFT ≥ 0.15).
    """
    from deltaspec.errors import DeltaspecError

    fmt = output_format(fmt, out, allowed=("table", "json"))
    check_output(out, [ckpt, kw["base"]])
    check_output(plot_out, [ckpt, kw["base"]])
    try:
        lv = tuple(float(x) for x in levels.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated shares, got {levels!r}", param_hint="--levels") from None
    if not lv or not all(0 < x <= 1 for x in lv):
        raise DeltaspecError(f"--levels must be shares in (0, 1], got {levels!r}")
    chosen = chosen_policy(policy, energy, fro_error, sv_ratio, dynamic_param)
    res, scales = analysed(ckpt, **kw)
    from deltaspec.suggest import default_policies

    s = res.suggest_ranks(chosen, policies=default_policies(energy, fro_error, sv_ratio), max_rank=max_rank,
                          keep_scale=keep_scale, scales=scales, levels=lv,
                          exact_targets=bool(kw["modules"] or kw["layers"]))
    text = s.to_json() if fmt == "json" else s.format_table(width=table_width(out))
    if fmt == "table" and scales is None:
        text += "\nnote: a saved analysis does not record the source's α: new α assume scale 1 (α = r)"
    emit(text, out)
    if plot_out:
        import deltaspec.plots as dp

        dp.save(dp.rank_needed(res, energy=lv), plot_out)
        click.echo(f"wrote {plot_out}", err=True)
    warn(res.warnings)
