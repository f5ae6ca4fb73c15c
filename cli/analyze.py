"""`deltaspec analyze`: singular values and balance metrics of every layer's update."""
from __future__ import annotations

import click

from .common import UserPath, cli_words, parse_layers, parse_list, paths_exist, user_errors
from .options import (compute_options, initial_for, initial_option, parse_ints, parse_n_ref, reader_options,
                      selection_options)
from .output import check_output, emit, output_format, table_width, warn_results


@click.command()
@click.argument("ckpt", type=UserPath(), callback=paths_exist(hub=True))
@reader_options
@initial_option
@selection_options
@compute_options
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default=None,
              help="Output format [default: from -o's extension, else table].")
@click.option("-o", "--out", type=UserPath(dir_okay=False), default=None, help="Write the report to FILE.")
@click.option("--svd-top-k", "svd_top_k", type=click.IntRange(min=1), default=None,
              help="Truncated mode for full fine-tuning deltas: only the top K singular values, by randomized "
                   "SVD, each with a certified upper bound; metrics needing the whole spectrum are left empty.")
@click.option("--top-k", "old_top_k", type=click.IntRange(min=1), default=None, hidden=True,
              help="Old name of --svd-top-k.")
@click.option("--metrics", default=None,
              help="Metrics to show, e.g. 'top1_energy,effective_rank', or 'all' [default: the table's six columns]. "
                   "Table and CSV only: JSON keeps every metric (it is the saved analysis).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@user_errors
def analyze(ckpt, fmt, out, metrics, old_top_k, **opts):
    """Spectra and balance metrics of the weight update in CKPT.

    CKPT is a PEFT adapter dir, a deltaspec MultiLoRA adapter dir, a MultiLoRA .pt file, a kohya
    LoRA file, or a fine-tuned model (then pass --base). Under torchrun the layers are shared across
    ranks and rank 0 writes the report.
    """
    fmt = output_format(fmt, out)
    check_output(out, [ckpt, opts["base"], opts["initial"]])
    opts["svd_top_k"] = opts["svd_top_k"] or old_top_k
    if parse_list(metrics) and parse_list(metrics) != ["all"]:  # a mistyped name fails before any SVD
        from deltaspec.metrics import check_metric_names, metric_names

        check_metric_names(parse_list(metrics), metric_names(parse_ints(opts["energy_k"], "--energy-k")))
    from deltaspec import distributed  # imports torch: after the checks above

    opts["device"] = distributed.init_from_env(opts["device"])
    try:
        result = _analyze(ckpt, **opts)
        if distributed.is_main():
            chosen = result.check_metrics(parse_list(metrics))
            result.warnings = [cli_words(w) for w in result.warnings]  # every output in the CLI's words
            result.notes = [cli_words(n) for n in result.notes]
            text = (result.to_json() if fmt == "json" else result.to_csv(chosen) if fmt == "csv"
                    else result.format_table(chosen, width=table_width(out)))
            emit(text, out)
            if fmt != "table" or out:  # the table already lists them
                warn_results([(None, result)])
    finally:
        distributed.finish()


def _analyze(ckpt, base, ckpt_type, lora_alpha, include_embeddings, modules, layers, device, dtype, n_ref, energy_k,
             svd_top_k, quiet, initial=None):
    import deltaspec as ds
    from deltaspec.spectra import pick_device

    pick_device(device)  # a bad --device fails before any reading
    updates = ds.load(ckpt, base=base, format=ckpt_type, lora_alpha=lora_alpha, include_embeddings=include_embeddings,
                      initial=initial_for(ckpt, initial))
    result = ds.analyze(updates, device=device, dtype=dtype, energy_k=parse_ints(energy_k, "--energy-k"),
                        n_ref=parse_n_ref(n_ref), modules=parse_list(modules), layers=parse_layers(layers),
                        progress=False if quiet else None, svd_top_k=svd_top_k)
    if not result.layers:
        raise ds.DeltaspecError(f"{ckpt}: no weight updates found (nothing to analyse)")
    return result
