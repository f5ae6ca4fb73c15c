"""`deltaspec report`: one self-contained HTML file with provenance, tables, figures and rank suggestions."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from .common import UserPath, user_errors
from .compare import INPUTS_HELP, input_labels, input_options, is_saved_analysis
from .options import initials_for, initials_option
from .output import check_output
from .suggest_rank import chosen_policy, policy_value_options


def command_line() -> str:
    """The command as typed (`deltaspec …`), for provenance (recorded by the `deltaspec` group)."""
    ctx = click.get_current_context(silent=True)
    argv = ctx.meta.get("deltaspec.argv") if ctx is not None else None
    return shlex.join(["deltaspec", *(argv if argv is not None else sys.argv[1:])])


@click.command(epilog=INPUTS_HELP)
@input_options
@click.option("-o", "--out", type=UserPath(dir_okay=False), required=True, help="The HTML file to write.")
@click.option("--title", default=None, help="Report title [default: the labels].")
@click.option("--policy", type=click.Choice(["energy", "fro-error", "sv-ratio", "knee", "effective-rank"]),
              default="energy", show_default=True, help="Rank policy whose LoraConfig is shown.")
@policy_value_options
@initials_option
@click.option("--no-hash", is_flag=True, help="Do not compute SHA-256 of the input files (large models).")
@user_errors
def report(inputs, base, ckpt_type, lora_alpha, include_embeddings, modules, layers, device, dtype, n_ref, energy_k,
           quiet, labels, out, title, policy, energy, fro_error, sv_ratio, dynamic_param, max_rank, keep_scale, no_hash,
           initial):
    """Write one self-contained HTML report of the INPUTS.

    \b
    deltaspec report sample_checkpoints/lora sample_checkpoints/multilora \\
        sample_checkpoints/full --base sample_checkpoints/base \\
        --labels LoRA,MultiLoRA,FT -o report.html

    Contents, findings first: a summary in words per input and the method differences beyond
    their spread, the comparison table (mean ± std, differences), the Figure-2 histogram,
    spectra, energy curves, heatmaps (one colour scale), rank needed vs layer, per-module
    summary, rank suggestions with a PEFT LoraConfig, per-layer metrics, warnings, and provenance
    last (version, command, input paths, file sizes and SHA-256, formats, settings). No scripts
    and no external references: it opens offline in any browser and can be mailed as one file.
    """
    from deltaspec import report as R
    from deltaspec.suggest import default_policies, source_scales

    from .common import cli_words
    from .compare import analyse_opened, checked_compute, open_inputs

    initials = initials_for(inputs, initial)
    check_output(out, [*inputs, base, *initials])
    names = input_labels(inputs, labels)
    chosen = chosen_policy(policy, energy, fro_error, sv_ratio, dynamic_param)
    opts = dict(base=base, ckpt_type=ckpt_type, lora_alpha=lora_alpha, include_embeddings=include_embeddings,
                modules=modules, layers=layers, device=device, dtype=dtype, n_ref=n_ref, energy_k=energy_k, quiet=quiet,
                initials=initials)
    # Every input is opened (headers) before any SVD, so a missing --base or a selection mistake in the
    # last input fails at once. Each input is analysed in full: the per-input sections (summary, ranks,
    # per-layer metrics) use every layer, only the comparison keeps the common ones.
    opened = open_inputs(inputs, **opts)
    checked_compute(inputs, **opts)  # imports torch: after the header checks
    analysed = analyse_opened(opened, names, **opts)
    results, suggestions, prov = {}, {}, []
    for lab, path, item, res in zip(names, inputs, opened, analysed):
        if is_saved_analysis(path):
            scales, used_base = None, res.source.get("base")
        else:
            scales, used_base = source_scales(item), item.base
        res.warnings = [cli_words(w) for w in res.warnings]  # the report is made on the command line: its words
        res.notes = [cli_words(n) for n in res.notes]
        results[lab] = res
        if all(r.upper is None for r in res.layers):
            suggestions[lab] = res.suggest_ranks(chosen, policies=default_policies(energy, fro_error, sv_ratio),
                                                 max_rank=max_rank, keep_scale=keep_scale, scales=scales)
        prov.append(R.describe(lab, path, res.source.get("format"), used_base, hash_files=not no_hash))
    settings = {"device": device, "dtype": dtype, "n_ref": n_ref, "energy_k": energy_k,
                "modules": modules or "all", "layers": layers or "all", "rank policy": chosen.label,
                "max rank": max_rank or "none", "keep scale": keep_scale}
    html = R.build(results, suggestions=suggestions, inputs=prov, command=command_line(), settings=settings,
                   title=title)
    Path(out).resolve().parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(html, encoding="utf-8")
    click.echo(f"wrote {out} ({len(html.encode()) / 1e3:,.0f} kB)", err=True)
