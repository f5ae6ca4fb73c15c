"""`deltaspec subspace`: subspace similarity, amplification factor and intruder dimensions per layer."""
from __future__ import annotations

import csv
import io
import json
import math

import click

from .common import UserPath, cli_words, user_errors
from .compare import INPUTS_HELP, input_labels, input_options, load_results, analyse_opened, open_common
from .options import parse_ints
from .output import check_output, emit, output_format, table_width, warn, warn_results


def base_lookup(base, results, inputs):
    """W0 per layer name, found the way the first input's reader named its layers (kohya, diffusers, …);
    a layer whose W0 cannot be matched (a resized embedding, trainable tokens) gets no W0 metrics, and
    a warning says which; if no layer matches, the first error is raised (the wrong --base)."""
    from deltaspec.errors import FormatError, ShapeMismatchError
    from deltaspec.io.model.basemap import base_weights

    get = base_weights(base, results[0].source["format"], str(inputs[0]))
    failed: list[tuple[str, Exception]] = []

    def lookup(name, shape):
        try:
            return get(name, shape)
        except (FormatError, ShapeMismatchError) as e:
            failed.append((name, e))
            return None

    return lookup, failed


def _rows(reports, labels, ks):
    rows = []
    for rep in reports:
        for n, lab in enumerate(labels):
            row = {"layer": rep.name, "input": lab}
            g = rep.similarity.get(lab)
            for k in ks:  # "-" where an input has fewer than k singular vectors
                row[f"phi@{k}"] = float(g[k - 1, k - 1]) if g is not None and k <= min(g.shape) else None
            a, t = rep.amplification[n], rep.intruders[n]
            if a is not None:
                row.update(amp_r=a.r, amplification=a.factor, proj_norm=a.projected_norm, delta_norm=a.delta_norm,
                           w0_norm=a.base_norm)
            if t is not None:
                row.update(intruders=t.count, intruder_idx=",".join(str(i) for i in t.indices))
            rows.append(row)
    return rows


def _fmt(v) -> str:
    from deltaspec.formatting import fmt_num as fmt

    return "-" if v is None else (v if isinstance(v, str) else fmt(v))


@click.command(epilog=INPUTS_HELP + " Saved analyses carry no singular vectors: give checkpoints.")
@input_options(metrics=False)
@click.option("--phi-k", "ks", default="1,4,16", show_default=True,
              help="φ(k, k) columns: similarity of the top-k left singular vectors with the first input's.")
@click.option("-k", "--top-k", "old_ks", default=None, hidden=True, help="Old name of --phi-k.")
@click.option("--amp-r", type=int, default=None,
              help="r of the amplification factor [default: the smallest rank among the inputs].")
@click.option("--intruder-k", type=int, default=10, show_default=True, help="Top singular vectors of W0+ΔW examined.")
@click.option("--eps", type=float, default=0.5, show_default=True, help="Intruder threshold on max |cos| with W0's vectors.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default=None,
              help="Output format [default: from -o's extension, else table].")
@click.option("-o", "--out", type=UserPath(dir_okay=False), default=None, help="Write the report to FILE.")
@user_errors
def subspace(inputs, base, ckpt_type, lora_alpha, include_embeddings, modules, layers, device, dtype, quiet, labels, ks,
             old_ks, amp_r, intruder_k, eps, fmt, out):
    """Subspace metrics per layer: φ similarity, amplification factor, intruder dimensions.

    \b
    deltaspec subspace sample_checkpoints/lora sample_checkpoints/multilora \\
        sample_checkpoints/full --base sample_checkpoints/base \\
        --modules k_proj --layers 0

    \b
    phi@k          φ(k, k) = ‖U_first[:, :k]ᵀ U[:, :k]‖²_F / k against the
                   FIRST input (LoRA paper §7.2): 1 = same top-k output
                   directions, 0 = orthogonal; "-" when an input has fewer
                   than k singular vectors (a rank-r adapter has r).
    amplification  ‖ΔW‖_F / ‖U_rᵀ W0 V_r‖_F, U_r, V_r the top-r singular
                   vectors of ΔW (LoRA paper §7.3); proj_norm = ‖U_rᵀ W0 V_r‖_F,
                   w0_norm = ‖W0‖_F. Needs --base.
    intruders      how many of the top --intruder-k left singular vectors of
                   W0 + ΔW have max |cos| < --eps with every left singular
                   vector of W0 (Shuttleworth et al. 2024), and their
                   positions (0 = largest). Needs --base.

    Singular vectors of every selected layer are kept in memory: select with --modules/--layers
    on large models.
    """
    from deltaspec.errors import DeltaspecError
    from deltaspec.compare import align
    from deltaspec.subspace import layer_subspace

    fmt = output_format(fmt, out)
    check_output(out, [*inputs, base])
    names = input_labels(inputs, labels)
    if len(inputs) < 2 and not base:
        raise DeltaspecError("give two or more inputs (φ similarity) and/or --base (amplification, intruders)")
    kk = parse_ints(old_ks or ks, "--phi-k")
    opts = dict(base=base, ckpt_type=ckpt_type, lora_alpha=lora_alpha, vectors=True,
                include_embeddings=include_embeddings, modules=modules, layers=layers, device=device, dtype=dtype,
                quiet=quiet)
    opened, left_out = open_common(inputs, names, **opts)  # only the shared layers are read and solved
    al = align(analyse_opened(opened, names, **opts), names, left_out=left_out)
    warn_results(zip(al.labels, al.results))
    lookup, failed = base_lookup(base, al.results, inputs) if base else (None, [])
    reports = []
    for k, name in enumerate(al.names):
        col = [res.layers[k] for res in al.results]
        W0 = lookup(name, col[0].shape) if lookup else None
        reports.append(layer_subspace(name, al.labels, col, W0, grid=max(kk), amp_r=amp_r, intruder_k=intruder_k, eps=eps))
    if failed and len(failed) == len(al.names):
        raise failed[0][1]
    if failed:
        from deltaspec.layernames import summarize

        names = summarize([n for n, _ in failed], 3)
        warn([f"no matching base weight for {len(failed)} layer(s) ({names}): amplification and intruders "
              f"left out for them; the first reason: {failed[0][1]}"])
    rows = _rows(reports, al.labels, kk)
    notes = [cli_words(n) for n in al.notes] + [f"phi@k against {al.labels[0]}" if len(al.labels) > 1 else "one input: no phi"]
    if fmt == "json":
        emit(json.dumps({"labels": al.labels, "reference": al.labels[0], "inputs": list(inputs), "base": base,
                         "settings": {"phi_k": list(kk), "amp_r": amp_r, "intruder_k": intruder_k, "eps": eps},
                         "notes": notes, "rows": [{k: _json(v) for k, v in r.items()} for r in rows],
                         "phi_grids": {rep.name: {lab: g.tolist() for lab, g in rep.similarity.items()}
                                       for rep in reports}}, indent=1), out)
        return
    head = list(dict.fromkeys(k for r in rows for k in r))
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=head, lineterminator="\n")
        w.writeheader()
        w.writerows({h: "" if r.get(h) is None else r[h] for h in head} for r in rows)
        emit(buf.getvalue().rstrip("\n"), out)
        return
    emit(_table(rows, head, notes, table_width(out)), out)


def _table(rows, head, notes, width) -> str:
    """One heading line per layer (short name), one row per input; constant amp_r said once above."""
    from deltaspec.formatting import hoist_constant, name_legend, short_names, text_grid, wrap

    cols = [h for h in head if h != "layer"]
    cols = [h for h in cols if h not in ("proj_norm", "delta_norm", "w0_norm", "amp_r")] + \
        [h for h in ("proj_norm", "delta_norm", "w0_norm", "amp_r") if h in cols]  # most telling first
    short = short_names([r["layer"] for r in rows])
    body, last = [], None
    for r in rows:
        if r["layer"] != last:
            body.append(short[r["layer"]])
            last = r["layer"]
        body.append([_fmt(r.get(h)) if h != "intruder_idx" else (r.get(h) or "-") for h in cols])
    cols, body, same = hoist_constant(cols, body, ["amp_r"])
    lines = (wrap(f"every row: {same}", width) if same else []) + text_grid(cols, body, width)
    lines += name_legend(short, width)
    lines += wrap(_legend(cols), width) if _legend(cols) else []
    for n in notes:
        lines += wrap(f"note: {n}", width)
    return "\n".join(lines)


def _legend(cols) -> str:
    """One line saying what the columns shown mean (definitions: deltaspec/subspace.py, docs/METRICS.md)."""
    parts = []
    if any(c.startswith("phi@") for c in cols):
        parts.append("phi@k = overlap of the top-k singular directions with the first input's "
                     "(0 orthogonal, 1 same)")
    if "amplification" in cols:
        parts.append("amplification = |ΔW|_F / |U_r' W0 V_r|_F (how much ΔW amplifies directions W0 has)")
    if "intruders" in cols:
        parts.append("intruders = top singular directions of W0+ΔW nearly orthogonal to all of W0's")
    return "legend: " + "; ".join(parts) if parts else ""


def _json(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v
