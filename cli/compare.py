"""`deltaspec compare`: metrics of several checkpoints (or saved analyses) side by side, with differences.

Also home of `load_results`, the input handling that `plot` and `subspace` share: every input is a
checkpoint (analysed now) or an `analyze -o X.json` file (read back, nothing recomputed).
"""
from __future__ import annotations

from pathlib import Path

import click

from .common import UserPath, cli_words, paths_exist, parse_layers, parse_list, user_errors
from .options import (compute_options, initials_for, initials_option, parse_ints, parse_n_ref, reader_options,
                      selection_options)
from .output import check_output, emit, output_format, table_width, warn_results

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


def load_checkpoint(path, base, ckpt_type, lora_alpha, include_embeddings, initial=None):
    """deltaspec.load with the shared --base: readers open it only where a layer needs W0 (full
    fine-tuning, DoRA, IA3/OFT, modules_to_save copies, trainable tokens), so plain adapters never touch it."""
    import deltaspec as ds
    from deltaspec.errors import MissingBaseError

    try:
        return ds.load(path, base=base or None, format=ckpt_type, lora_alpha=lora_alpha,
                       include_embeddings=include_embeddings, initial=initial)
    except MissingBaseError as e:
        raise MissingBaseError(str(e) if "base=" in str(e) else f"{e} (pass --base BASE)") from None


def open_inputs(inputs, *, base=None, ckpt_type="auto", lora_alpha=None, include_embeddings=False, modules=None,
                layers=None, vectors=False, initials=None, **_):
    """Every input opened without reading a tensor: the checkpoint's Updates (headers only) or the saved
    AnalysisResult, restricted to --modules/--layers. Selection mistakes surface here, before any work.
    initials: one --initial per input (None: none)."""
    from deltaspec.errors import DeltaspecError
    from deltaspec.integrations.record import load_analysis

    mods, lays = parse_list(modules), parse_layers(layers)
    out = []
    for path, initial in zip(inputs, initials or [None] * len(inputs)):
        if is_saved_analysis(path):
            if initial is not None:
                raise DeltaspecError(f"{path}: a saved analysis; --initial applies to checkpoints (analyze it with "
                                     "--initial instead)")
            if vectors:
                raise DeltaspecError(f"{path}: saved analyses keep no singular vectors; give the checkpoint instead")
            item = load_analysis(path).select(mods, lays)
        else:
            item = load_checkpoint(path, base, ckpt_type, lora_alpha, include_embeddings, initial)
            if mods or lays is not None:
                item = item.select(mods, lays)
        if not item.layers:
            raise DeltaspecError(f"{path}: no weight updates found (nothing to analyse)")
        out.append(item)
    return out


def analyse_opened(opened, labels=None, *, device="auto", dtype="float32", n_ref="shape", energy_k="1,4,16",
                   vectors=False, quiet=False, **_):
    """One AnalysisResult per opened input (saved analyses pass through); bars labelled with `labels`."""
    import deltaspec as ds

    out = []
    for k, item in enumerate(opened):
        if isinstance(item, ds.AnalysisResult):
            out.append(item)
            continue
        bar = False if quiet else (labels[k] if labels and len(opened) > 1 else None)
        out.append(ds.analyze(item, device=device, dtype=dtype, vectors=vectors, progress=bar,
                              energy_k=parse_ints(energy_k, "--energy-k"), n_ref=parse_n_ref(n_ref)))
    return out


def checked_compute(inputs, device="auto", dtype="float32", n_ref="shape", energy_k="1,4,16", **_) -> None:
    """Compute options checked before any SVD (a bad --energy-k, --n-ref, --device, --dtype); torch is imported
    only for the device check, last."""
    parse_ints(energy_k, "--energy-k")
    parse_n_ref(n_ref)
    if not all(is_saved_analysis(p) for p in inputs):
        from deltaspec.spectra import pick_device, pick_dtype  # imports torch: last

        pick_device(device)
        pick_dtype(dtype)


def cut_to_common(opened, labels) -> dict:
    """Cut every opened input to the layers they all have (headers only: nothing read, no SVD); returns
    {label: names left out} for `compare(left_out=)`. No shared layer, or a shared layer whose shape
    differs: a DeltaspecError."""
    from deltaspec.compare import common_layers

    names, left_out = common_layers([item.layers for item in opened], labels)
    keep = set(names)
    for item in opened:
        item.layers = [x for x in item.layers if x.name in keep]
    return {lab: d for lab, d in left_out.items() if d}


def open_common(inputs, labels, metrics=(), problem="unknown metric", **opts):
    """(opened, left_out): every input opened (headers only, see `open_inputs`) and cut to the layers
    they all have, before any tensor is read or any SVD runs (a LoRA on q/v against a full fine-tune
    then costs what its 16 shared layers cost), and {label: names left out} for `compare(left_out=)`.
    Then `metrics` (names the command will show) and the compute options are checked; all of it before
    torch is imported (pick_device imports it last). Pass `opened` to `analyse_opened`."""
    from deltaspec.metrics import check_metric_names

    opened = open_inputs(inputs, **opts)
    left_out = cut_to_common(opened, labels)
    if metrics:
        check_metric_names(metrics, shared_metrics(opened, opts.get("energy_k", "1,4,16")), problem)
    checked_compute(inputs, **opts)
    return opened, left_out


def shared_metrics(opened, energy_k="1,4,16") -> list[str]:
    """The metric names every opened input will have (checkpoints: what analyze computes), before any SVD."""
    import deltaspec as ds
    from deltaspec.metrics import metric_names

    fresh = metric_names(parse_ints(energy_k, "--energy-k"))
    have = [item.metric_names if isinstance(item, ds.AnalysisResult) else fresh for item in opened]
    return [m for m in have[0] if all(m in h for h in have)]


def load_results(inputs, *, base=None, ckpt_type="auto", lora_alpha=None, include_embeddings=False, modules=None,
                 layers=None, device="auto", dtype="float32", n_ref="shape", energy_k="1,4,16", vectors=False,
                 quiet=False, labels=None, initials=None):
    """One AnalysisResult per input, restricted to --modules/--layers (every layer of each input).
    initials: one --initial per input."""
    opts = dict(base=base, ckpt_type=ckpt_type, lora_alpha=lora_alpha, include_embeddings=include_embeddings,
                modules=modules, layers=layers, device=device, dtype=dtype, n_ref=n_ref, energy_k=energy_k,
                vectors=vectors, quiet=quiet, initials=initials)
    checked_compute(inputs, **opts)
    return analyse_opened(open_inputs(inputs, **opts), labels, **opts)


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
        return click.argument("inputs", nargs=-1, required=True, type=UserPath(),
                              callback=paths_exist())(fn)

    return deco(fn) if fn is not None else deco


@click.command(epilog=INPUTS_HELP)
@input_options
@initials_option
@click.option("--per-layer", is_flag=True, help="One block per layer instead of means per module type.")
@click.option("--metrics", default=None, help="Metrics to show, e.g. 'top1_energy,effective_rank' "
              "[default: the analyze table's columns; JSON/CSV: all].")
@click.option("--strict-n-ref", is_flag=True, help="Refuse inputs whose normalized_entropy uses different n_ref "
              "instead of recomputing it with n_ref = min(d_out, d_in).")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv", "latex", "markdown"]), default=None,
              help="Output format; latex (booktabs) and markdown are paper tables of mean ± std [default: from -o's "
                   "extension (.json .csv .tex .md), else table].")
@click.option("-o", "--out", type=UserPath(dir_okay=False), default=None, help="Write the report to FILE.")
@user_errors
def compare(inputs, base, ckpt_type, lora_alpha, include_embeddings, modules, layers, device, dtype, n_ref, energy_k,
            quiet, labels, per_layer, metrics, strict_n_ref, fmt, out, initial):
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
    from deltaspec.tables import default_metrics

    fmt = output_format(fmt, out, allowed=("table", "json", "csv", "latex", "markdown"))
    initials = initials_for(inputs, initial)
    check_output(out, [*inputs, base, *initials])
    names = input_labels(inputs, labels)
    opts = dict(base=base, ckpt_type=ckpt_type, lora_alpha=lora_alpha, include_embeddings=include_embeddings,
                modules=modules, layers=layers, device=device, dtype=dtype, n_ref=n_ref, energy_k=energy_k, quiet=quiet,
                initials=initials)
    chosen = parse_list(metrics)  # checked with the inputs, before any SVD
    opened, left_out = open_common(inputs, names, chosen, "unknown or not shared metric", **opts)
    results = analyse_opened(opened, names, **opts)
    for res in results:  # every output in the CLI's words
        res.warnings, res.notes = [cli_words(w) for w in res.warnings], [cli_words(n) for n in res.notes]
    cmp = run_compare(results, names, per_layer=per_layer, metrics=chosen,
                      on_n_ref_mismatch="error" if strict_n_ref else "recompute", left_out=left_out)
    shown = chosen or [m for m in default_metrics(cmp.metrics) if m in cmp.metrics]
    text = {"table": lambda: cmp.format_table(shown, width=table_width(out)), "json": cmp.to_json,
            "csv": lambda: cmp.to_csv().rstrip("\n"), "latex": lambda: cmp.to_latex(shown),
            "markdown": lambda: cmp.to_markdown(shown)}[fmt]()
    emit(text, out)
    if fmt != "table" or out:  # the table already lists them
        warn_results(zip(cmp.labels, cmp.aligned.results))
