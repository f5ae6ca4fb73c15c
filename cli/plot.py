"""`deltaspec plot …`: paper figures from checkpoints or saved analyses (thin: load → deltaspec.plots → save)."""
from __future__ import annotations

import click

from .common import UserPath, parse_list, user_errors, SuggestingGroup
from .compare import INPUTS_HELP, input_labels, input_options, is_saved_analysis, load_checkpoint, load_results, analyse_opened, open_common
from .heads import heads_reader_options, load_heads
from .options import compute_options, parse_ints, selection_options
from .output import check_output, warn, warn_results

FIG_HELP = """Output: -o FILE.pdf / .svg (vector, fonts embedded) or .png (--dpi); the shipped paper style
(8 pt sans-serif, Okabe-Ito colour-blind-safe colours); --size single (3.3 in) or double (6.9 in)
column width. Same input, same bytes."""


def figure_options(fn):
    for opt in reversed([
        click.option("-o", "--out", type=UserPath(dir_okay=False), required=True,
                     help="Figure file: .pdf, .svg or .png."),
        click.option("--size", type=click.Choice(["single", "double"]), default=None,
                     help="Column width: single 3.3 in, double 6.9 in [default: single; hist with 2+ panels: double]."),
        click.option("--height", type=click.FloatRange(min=0, min_open=True), default=None, help="Figure height in inches [default: from the width]."),
        click.option("--dpi", type=click.IntRange(min=1), default=300, show_default=True, help="Resolution of PNG output."),
        click.option("--title", default=None, help="Title [default: what was plotted; heatmaps: none, the colour bar names the metric]."),
    ]):
        fn = opt(fn)
    return fn


def _load(kw: dict, vectors: bool = False, metrics=()):
    """Shared: labels, results on the layers every input has (chosen from the headers, before any SVD);
    pops the input options out of `kw` and leaves the figure ones. `metrics` are checked before any SVD."""
    inputs = kw.pop("inputs")
    check_output(kw["out"], [*inputs, kw.get("base")])
    labels = input_labels(inputs, kw.pop("labels"))
    keys = ("base", "ckpt_type", "lora_alpha", "include_embeddings", "modules", "layers", "device", "dtype", "n_ref",
            "energy_k", "quiet")
    opts = {k: kw.pop(k) for k in keys if k in kw}  # --n-ref/--energy-k only where a metric is drawn
    opened, _ = open_common(inputs, labels, metrics, vectors=vectors, **opts)
    from deltaspec.plots.save import figure_format  # imports torch (deltaspec.plots): after the header checks

    figure_format(kw["out"])  # .pdf/.svg/.png, checked before any SVD
    results = analyse_opened(opened, labels, vectors=vectors, **opts)
    warn_results(zip(labels, results))
    return dict(zip(labels, results)), opts


def _default_kv(kw: dict) -> tuple:
    """k_proj,v_proj, or to_k,to_v when the first input names its layers the diffusers way (headers only)."""
    from deltaspec.integrations.record import load_analysis
    from deltaspec.plots.hist import default_modules

    first = kw["inputs"][0]
    if is_saved_analysis(first):
        names = [r.name for r in load_analysis(first).layers]
    else:
        names = [u.name for u in load_checkpoint(first, kw.get("base"), kw.get("ckpt_type", "auto"),
                                                  kw.get("lora_alpha"), kw.get("include_embeddings", False))]
    return default_modules(names)


def _save(ax, kw: dict) -> None:
    from deltaspec.plots import save

    save(ax, kw["out"], dpi=kw["dpi"])
    click.echo(f"wrote {kw['out']}", err=True)


@click.group(cls=SuggestingGroup, context_settings={"help_option_names": ["-h", "--help"]})
def plot():
    """Paper figures: Figure-2 histograms, spectra, energy curves, heatmaps, subspace similarity.

    \b
    deltaspec plot hist CKPT… --modules k_proj,v_proj -o fig2.pdf
        # MultiLoRA paper, Figure 2
    deltaspec plot spectrum CKPT… -o spectra.svg     # sorted σ_i (log)
    deltaspec plot energy CKPT… -o energy.png        # cumulative energy
    deltaspec plot heatmap CKPT… --metric normalized_entropy -o heat.pdf
        # several inputs share one colour scale
    deltaspec plot similarity CKPT_A CKPT_B --modules v_proj -o phi.pdf
    deltaspec plot ablation ablation.json -o abl.png  # `ablate -o` output
    deltaspec plot hist spectra.json …
        # saved `analyze -o` output: nothing recomputed
    """


@plot.command(epilog=INPUTS_HELP + "\n\n" + FIG_HELP)
@input_options(metrics=False, modules_help="Module types, one panel each [default: k_proj,v_proj, the paper's Figure 2; to_k,to_v for diffusers/kohya names].")
@figure_options
@click.option("--top", default="auto", show_default=True,
              help="σ per layer: 'auto' = top R, R the smallest rank among the inputs; N; or 'all'.")
@click.option("--raw", is_flag=True, help="Plot σ_i itself instead of σ_i / σ_1.")
@click.option("--bins", type=click.IntRange(min=1), default=20, show_default=True, help="Number of bins (shared by all inputs).")
@click.option("--log-counts", is_flag=True, help="Log-scaled counts.")
@click.option("--density", is_flag=True, help="Each histogram normalised to unit area, per decade with --log-x "
              "(use with --top all).")
@click.option("--log-x", is_flag=True, help="Log-spaced bins and axis.")
@user_errors
def hist(**kw):
    """Figure 2: histograms of the singular values of ΔW, one panel per module, inputs overlaid.

    Panels are --modules (default k_proj,v_proj, the paper's choice); all --layers of a module are
    pooled. By default each layer contributes σ_i / σ_1 for i = 2…R, R the smallest rank among the
    inputs (16 for a rank-16 LoRA): LoRA has only R nonzero σ while full FT has min(d_out, d_in), so
    comparing the top R of each is like with like, and dividing by σ_1 shows the shape (how dominated
    by the top directions), not the scale set by α/r or the learning rate; σ_1/σ_1 = 1 itself is left
    out (one meaningless bar per layer). Bins are shared by all inputs in a panel; inputs differ by
    colour and line style (readable in greyscale).
    """
    from deltaspec.plots import hist as draw

    modules = parse_list(kw["modules"]) or list(_default_kv(kw))
    kw["modules"] = ",".join(modules)
    data, _ = _load(kw)
    top = kw["top"] if kw["top"] in ("auto", "all") else parse_ints(kw["top"], "--top")[0]
    axes = draw(data, modules=modules, top=top, normalize=not kw["raw"], bins=kw["bins"], log_counts=kw["log_counts"],
                density=kw["density"], log_x=kw["log_x"], title=kw["title"], size=kw["size"], height=kw["height"])
    _save(axes, kw)


@plot.command(epilog=INPUTS_HELP + "\n\n" + FIG_HELP)
@input_options(metrics=False)
@figure_options
@click.option("--raw", is_flag=True, help="Plot σ_i itself instead of σ_i / σ_1.")
@click.option("--log-x", is_flag=True, help="Log-scaled index axis.")
@click.option("--no-band", is_flag=True, help="No interquartile band.")
@user_errors
def spectrum(**kw):
    """Sorted singular values σ_i vs i, one line per input (log y).

    The line is the median over the selected layers (--modules, --layers; default all) at each i,
    the band the interquartile range; σ_i / σ_1 per layer unless --raw. Factored updates end at
    their rank (dot): their other singular values are exactly zero.
    """
    data, opts = _load(kw)
    from deltaspec.plots import spectrum as draw

    ax = draw(data, modules=parse_list(opts["modules"]), normalize=not kw["raw"], iqr=not kw["no_band"],
              log_x=kw["log_x"], title=kw["title"], size=kw["size"], height=kw["height"])
    _save(ax, kw)


@plot.command(epilog=INPUTS_HELP + "\n\n" + FIG_HELP)
@input_options(metrics=False)
@figure_options
@click.option("--linear-x", is_flag=True, help="Linear k axis [default: log].")
@click.option("--mark", default=None, help="Draw guides at these k, e.g. '16' (the adapter rank).")
@click.option("--no-band", is_flag=True, help="No interquartile band.")
@user_errors
def energy(**kw):
    """Cumulative energy share Σ_{i≤k} σ_i² / Σ σ_i² vs k, one line per input.

    The curve behind the `top{k}_energy` metrics: median over the selected layers with an
    interquartile band. A rank-r update reaches 1 at k = r.
    """
    data, opts = _load(kw)
    from deltaspec.plots import energy as draw

    mark = parse_ints(kw["mark"], "--mark") if kw["mark"] else ()
    ax = draw(data, modules=parse_list(opts["modules"]), iqr=not kw["no_band"], log_x=not kw["linear_x"], mark=mark,
              title=kw["title"], size=kw["size"], height=kw["height"])
    _save(ax, kw)


@plot.command(epilog=INPUTS_HELP + "\n\n" + FIG_HELP)
@input_options
@figure_options
@click.option("--metric", default="normalized_entropy", show_default=True, help="Metric name, as in `analyze`.")
@click.option("--cmap", default="viridis", show_default=True, help="Matplotlib colormap (viridis, cividis: colour-blind safe).")
@click.option("--annotate/--no-annotate", default=None, help="Values in the cells [default: when ≤ 120 cells].")
@click.option("--vmin", type=float, default=None, help="Lowest value of the colour scale [default: smallest value shown].")
@click.option("--vmax", type=float, default=None, help="Highest value of the colour scale [default: largest value shown].")
@user_errors
def heatmap(**kw):
    """Layer × module heatmap of one metric; several inputs side by side on one colour scale.

    \b
    deltaspec plot heatmap sample_checkpoints/lora --metric top1_energy \\
        -o heat.pdf
    deltaspec plot heatmap A B C --labels LoRA,MultiLoRA,FT --vmin 0 \\
        --vmax 1 -o heat.pdf
    """
    data, opts = _load(kw, metrics=[kw["metric"]])
    from deltaspec.plots import heatmap as draw

    ax = draw(data, kw["metric"], modules=parse_list(opts["modules"]), annotate=kw["annotate"], cmap=kw["cmap"],
              vmin=kw["vmin"], vmax=kw["vmax"], title=kw["title"], size=kw["size"], height=kw["height"])
    _save(ax, kw)


@plot.command(epilog=INPUTS_HELP + " Saved analyses carry no singular vectors: give checkpoints.\n\n" + FIG_HELP)
@input_options(metrics=False)
@figure_options
@click.option("--grid", "k", type=click.IntRange(min=1), default=16, show_default=True,
              help="Grid size: φ(i, j) for the top-i, top-j singular vectors, i, j up to this.")
@click.option("-k", "--top-k", "old_k", type=click.IntRange(min=1), default=None, hidden=True, help="Old name of --grid.")
@click.option("--side", type=click.Choice(["left", "right"]), default="left", show_default=True,
              help="Left (output space, U) or right (input space, V) singular vectors.")
@user_errors
def similarity(**kw):
    """Subspace similarity φ(i, j) = ‖U_A[:, :i]ᵀ U_B[:, :j]‖²_F / min(i, j) of two inputs.

    LoRA paper §7.2 (Figure 3 there): 1 = the top-i directions of A contain (or lie in) the top-j of
    B, 0 = orthogonal. Averaged over the selected layers (--modules, --layers; pick one layer to see
    a single one).
    """
    from deltaspec.errors import DeltaspecError
    from deltaspec.plots import mean_similarity, similarity as draw

    if len(kw["inputs"]) != 2:
        raise DeltaspecError(f"similarity compares two inputs, got {len(kw['inputs'])}")
    data, opts = _load(kw, vectors=True)
    grid = mean_similarity(data, modules=parse_list(opts["modules"]), k=kw["old_k"] or kw["k"], side=kw["side"])
    ax = draw(grid, labels=list(data), title=kw["title"], size=kw["size"], height=kw["height"])
    _save(ax, kw)


def _selected(result, opts):
    """A point a tracked run recorded (already analysed), restricted to --modules / --layers."""
    from .common import parse_layers, parse_list

    return result.select(parse_list(opts["modules"]), parse_layers(opts["layers"]))


TRAJECTORY_INPUTS = """Each INPUT is a training run folder holding checkpoint-<step>/ folders (`deltaspec train
--save-every N`, or a HF Trainer / PEFT output_dir): one line, labelled with the folder's name, with
the run folder itself as the last step when its train_info.json says which. Single checkpoint-<step>
folders and saved analyses of them (`analyze run/checkpoint-300 -o any.json`) are points of the run
they belong to (for an analysis: the checkpoint path it records). The step comes from the name, else
trainer_state.json's global_step, else train_info.json's step. --base is used for full fine-tuning checkpoints.
A run tracked during training (train --track-every, the Trainer callbacks) is its
spectra_trajectory.jsonl, or the folder holding it: every tracked step, already analysed."""


@plot.command(epilog=TRAJECTORY_INPUTS + "\n\n" + FIG_HELP)
@input_options
@figure_options
@click.option("--metrics", "traj_metrics", default="top1_energy,normalized_entropy,effective_rank,frobenius_norm",
              help="Metrics to draw, one panel each (names as in `analyze`) [default: top1_energy, "
                   "normalized_entropy, effective_rank, frobenius_norm].")
@click.option("--log-x", is_flag=True, help="Log-scaled step axis.")
@user_errors
def trajectory(**kw):
    """Spectra over training: metrics of ΔW against the training step, methods overlaid.

    \b
    deltaspec train --method lora --save-every 150 -o runs/lora
        # (and multilora, full)
    deltaspec plot trajectory runs/lora runs/multilora runs/full --base BASE \\
        --modules k_proj,v_proj -o trajectory.pdf

    Each point is the mean over the selected layers (--modules, --layers) of one checkpoint.
    """
    from deltaspec.errors import DeltaspecError
    from deltaspec.plots.trajectory import collect, trajectory as draw

    inputs = kw.pop("inputs")
    check_output(kw["out"], [*inputs, kw.get("base")])
    series = collect(inputs)
    labels = parse_list(kw.pop("labels"))
    if labels and len(labels) != len(series):
        raise DeltaspecError(f"--labels has {len(labels)} names for {len(series)} runs ({', '.join(series)}); "
                             "give one per run")
    keys = ("base", "ckpt_type", "lora_alpha", "include_embeddings", "modules", "layers", "device", "dtype", "n_ref",
            "energy_k", "quiet")
    opts = {k: kw.pop(k) for k in keys}
    from deltaspec.metrics import check_metric_names, metric_names

    if not any(not isinstance(p, str) or is_saved_analysis(p) for pts in series.values() for _, p in pts):  # pre-SVD
        check_metric_names(parse_list(kw["traj_metrics"]) or [], metric_names(parse_ints(opts["energy_k"], "--energy-k")))
    data = {}
    for label, (name, points) in zip(labels or list(series), series.items()):
        loaded = iter(load_results([p for _, p in points if isinstance(p, str)], **opts))
        data[label] = [(step, next(loaded) if isinstance(p, str) else _selected(p, opts)) for step, p in points]
        kind = "checkpoints" if all(isinstance(p, str) for _, p in points) else "points"
        click.echo(f"{label}: {len(points)} {kind}, steps {points[0][0]}–{points[-1][0]} ({name})", err=True)
    axes = draw(data, metrics=parse_list(kw["traj_metrics"]), log_x=kw["log_x"], title=kw["title"], size=kw["size"],
                height=kw["height"])
    _save(axes, kw)


@plot.command(epilog=FIG_HELP)
@click.argument("ckpt", type=UserPath())
@heads_reader_options
@selection_options(modules_help="Module types, one panel each [default: all].")
@compute_options(metrics=False)
@figure_options
@click.option("--metric", default="share", show_default=True,
              help="Per-head quantity: share, frobenius_norm, sigma_1, rank, mean_abs_s, frac_s_small, "
                   "overlap_col, overlap_row.")
@click.option("--cmap", default="viridis", show_default=True, help="Matplotlib colormap.")
@click.option("--annotate/--no-annotate", default=None, help="Values in the cells [default: when ≤ 120 cells].")
@click.option("--vmin", type=float, default=None, help="Lowest value of the colour scale [default: smallest shown].")
@click.option("--vmax", type=float, default=None, help="Highest value of the colour scale [default: largest shown].")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@user_errors
def heads(**kw):
    """Heads × layers heatmap of a MultiLoRA checkpoint, one panel per module.

    \b
    deltaspec plot heads sample_checkpoints/multilora -o heads.png
    deltaspec plot heads CKPT --metric mean_abs_s --modules k_proj,v_proj \\
        -o scalings.pdf

    Colour: each head's share of the layer's energy ‖ΔW_i‖²/Σ‖ΔW_j‖² by
    default (1/n for balanced heads); numbers: `deltaspec heads`.
    """
    from deltaspec.plots import heads as draw
    from deltaspec.plots.save import figure_format

    figure_format(kw["out"])
    check_output(kw["out"], [kw["ckpt"]])
    result = load_heads(kw["ckpt"], kw["ckpt_type"], kw["lora_alpha"], kw["modules"], kw["layers"], kw["device"],
                        kw["dtype"], progress=False if kw["quiet"] else None)
    warn(result.warnings)
    ax = draw(result, kw["metric"], modules=parse_list(kw["modules"]), annotate=kw["annotate"], cmap=kw["cmap"],
              vmin=kw["vmin"], vmax=kw["vmax"], title=kw["title"], size=kw["size"], height=kw["height"])
    _save(ax, kw)


@plot.command(epilog=FIG_HELP)
@click.argument("data", type=UserPath(exists=True, dir_okay=False))
@figure_options
@user_errors
def ablation(data, **kw):
    """Accuracy and loss against k from `deltaspec ablate -o x.json`: one column per mode (keep top k,
    remove top k, remove k random), one line per label (mean over its runs, band from lowest to
    highest), the base model dotted.

    \b
    deltaspec plot ablation ablation.json -o ablation.png
    """
    import json

    from deltaspec.errors import DeltaspecError
    from deltaspec.plots.ablation import ablation as draw
    from deltaspec.plots.save import figure_format

    figure_format(kw["out"])
    check_output(kw["out"], [data])
    try:
        content = json.loads(open(data).read())
    except (ValueError, UnicodeDecodeError):
        raise DeltaspecError(f"{data}: not JSON; expected what `deltaspec ablate -o x.json` writes") from None
    if not isinstance(content, dict):
        raise DeltaspecError(f"{data}: not ablation data; expected what `deltaspec ablate -o x.json` writes")
    axes = draw(content, title=kw["title"], size=kw["size"] or "double", height=kw["height"])
    _save(axes, kw)
