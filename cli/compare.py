"""`deltaspec compare`: metrics of several checkpoints (or saved analyses) side by side, with differences.

Also home of `load_results`, the input handling that `plot` and `subspace` share: every input is a
checkpoint (analysed now) or an `analyze -o X.json` file (read back, nothing recomputed).
"""
from __future__ import annotations

from pathlib import Path

import click

from .common import cli_words, parse_layers, parse_list, user_errors
from .options import compute_options, parse_ints, parse_n_ref, reader_options, selection_options
from .output import check_output, emit, output_format, table_width, warn

INPUTS_HELP = """Each INPUT is a checkpoint (analysed now with the reading and compute options) or a
JSON file written by `deltaspec analyze -o X.json` (read back, nothing recomputed). --base is used for
the checkpoints that need it (full fine-tuning, DoRA) and ignored by the others."""


def is_saved_analysis(path: str) -> bool:
    """An `analyze -o x.json` file, or a tracking trajectory (`.jsonl`: read as its last step)."""
    return Path(path).is_file() and Path(path).suffix.lower() in (".json", ".jsonl")


def input_labels(inputs, labels: str | None) -> list[str]:
    """--labels a,b,c, else the input names (`sample_checkpoints/lora` → lora), made unique."""
    from deltaspec.compare import default_label
    from deltaspec.errors import DeltaspecError

    if labels:
        out = parse_list(labels) or []
        if len(out) != len(inputs):
            raise DeltaspecError(f"--labels has {len(out)} names for {len(inputs)} inputs; give one per input")
    else:
        out = [default_label(p) for p in inputs]
        if len(set(out)) < len(out):
            out = [str(Path(p)) for p in inputs]
    twice = sorted({x for x in out if out.count(x) > 1})
    if twice:
        raise DeltaspecError(f"--labels: {', '.join(twice)} named twice (the same input given twice?); every "
                             "input needs its own label")
    return out


def load_checkpoint(path, base, ckpt_type, lora_alpha, include_embeddings):
    """deltaspec.load with the shared --base: readers open it only where a layer needs W0 (full
    fine-tuning, DoRA, IA3/OFT, modules_to_save copies, trainable tokens), so plain adapters never touch it."""
    import deltaspec as ds
    from deltaspec.errors import MissingBaseError

    try:
        return ds.load(path, base=base or None, format=ckpt_type, lora_alpha=lora_alpha,
                       include_embeddings=include_embeddings)
    except MissingBaseError as e:
        raise MissingBaseError(str(e) if "base=" in str(e) else f"{e} (pass --base BASE)") from None


def load_results(inputs, *, base=None, ckpt_type="auto", lora_alpha=None, include_embeddings=False, modules=None,
                 layers=None, device="auto", dtype="float32", n_ref="shape", energy_k="1,4,16", vectors=False,
                 quiet=False):
    """One AnalysisResult per input, restricted to --modules/--layers."""
    import deltaspec as ds
    from deltaspec.errors import DeltaspecError
    from deltaspec.spectra import pick_device

    mods, lays = parse_list(modules), parse_layers(layers)
    if not all(is_saved_analysis(p) for p in inputs):
        pick_device(device)  # a bad --device fails before any reading
    out = []
    for path in inputs:
        if is_saved_analysis(path):
            if vectors:
                raise DeltaspecError(f"{path}: saved analyses keep no singular vectors; give the checkpoint instead")
            res = ds.AnalysisResult.from_json(path).select(mods, lays)
        else:
            updates = load_checkpoint(path, base, ckpt_type, lora_alpha, include_embeddings)
            res = ds.analyze(updates, device=device, dtype=dtype, vectors=vectors, energy_k=parse_ints(energy_k, "--energy-k"),
                             n_ref=parse_n_ref(n_ref), modules=mods, layers=lays, progress=False if quiet else None)
        if not res.layers:
            raise DeltaspecError(f"{path}: no weight updates found (nothing to analyse)")
        out.append(res)
    return out


def input_options(fn=None, *, metrics: bool = True, **selection):
    """INPUTS…, reading/selection/compute options and --labels, shared by compare, plot and subspace.

    metrics=False leaves out --n-ref/--energy-k (for commands that use no metric); `selection`
    goes to selection_options (e.g. modules_help for a command with another default)."""
    def deco(fn):
        fn = click.option("-q", "--quiet", is_flag=True, help="No progress bar.")(fn)
        fn = click.option("--labels", default=None, help="Comma-separated names, one per input [default: input names].")(fn)
        fn = compute_options(fn, metrics=metrics)
        fn = selection_options(fn, **selection)
        fn = reader_options(fn)
        return click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True))(fn)

    return deco(fn) if fn is not None else deco


@click.command(epilog=INPUTS_HELP)
@input_options
@click.option("--per-layer", is_flag=True, help="One block per layer instead of means per module type.")
@click.option("--metrics", default=None, help="Metrics to show, e.g. 'top1_energy,effective_rank' "
              "[default: the analyze table's columns; JSON/CSV: all].")
@click.option("--strict-n-ref", is_flag=True, help="Refuse inputs whose normalized_entropy uses different n_ref "
              "instead of recomputing it with n_ref = min(d_out, d_in).")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv", "latex", "markdown"]), default=None,
              help="Output format; latex (booktabs) and markdown are paper tables of mean ± std [default: from -o's "
                   "extension (.json .csv .tex .md), else table].")
@click.option("-o", "--out", type=click.Path(dir_okay=False), default=None, help="Write the report to FILE.")
@user_errors
def compare(inputs, base, ckpt_type, lora_alpha, include_embeddings, modules, layers, device, dtype, n_ref, energy_k,
            quiet, labels, per_layer, metrics, strict_n_ref, fmt, out):
    """Metrics of several checkpoints side by side, with differences to the first.

    \b
    deltaspec compare sample_checkpoints/lora sample_checkpoints/multilora \\
        sample_checkpoints/full --base sample_checkpoints/base \\
        --labels LoRA,MultiLoRA,FT

    Per module type (or per layer with --per-layer): the mean of every metric (names as in
    `analyze`) for each input, then `label-first` differences. Fair by construction: only layers
    present in every input are compared (the rest are listed as dropped), and normalized_entropy
    uses one n_ref per layer for every method (recomputed from the singular values with
    n_ref = min(d_out, d_in) when the inputs disagree). The report says so.
    """
    from deltaspec.compare import compare as run_compare
    from deltaspec.results import TABLE_METRICS

    fmt = output_format(fmt, out, allowed=("table", "json", "csv", "latex", "markdown"))
    check_output(out, [*inputs, base])
    names = input_labels(inputs, labels)
    results = load_results(inputs, base=base, ckpt_type=ckpt_type, lora_alpha=lora_alpha,
                           include_embeddings=include_embeddings, modules=modules, layers=layers, device=device,
                           dtype=dtype, n_ref=n_ref, energy_k=energy_k, quiet=quiet)
    if fmt == "table":  # the table lists the warnings: in the CLI's words (JSON keeps the library's)
        for res in results:
            res.warnings = [cli_words(w) for w in res.warnings]
    chosen = parse_list(metrics)
    cmp = run_compare(results, names, per_layer=per_layer, metrics=chosen,
                      on_n_ref_mismatch="error" if strict_n_ref else "recompute")
    shown = chosen or [m for m in TABLE_METRICS if m in cmp.metrics]
    text = {"table": lambda: cmp.format_table(shown, width=table_width(out)), "json": cmp.to_json,
            "csv": lambda: cmp.to_csv().rstrip("\n"), "latex": lambda: cmp.to_latex(shown),
            "markdown": lambda: cmp.to_markdown(shown)}[fmt]()
    emit(text, out)
    if fmt != "table" or out:  # the table already lists them
        warn(f"{lab}: {w}" for lab, res in zip(cmp.labels, cmp.aligned.results) for w in res.warnings)
