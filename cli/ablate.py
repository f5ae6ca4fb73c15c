"""`deltaspec ablate`: how much a trained run depends on the top singular directions of its ΔW."""
from __future__ import annotations

import json

import click

from .common import UserPath, parse_list, paths_exist, user_errors
from .output import check_output, emit, output_format, table_width

ABLATE_HELP = """Modes, per selected layer, with ΔW = U Σ Vᵀ its exact SVD (factored for adapters, dense
for full FT) and m its rank: trunc keeps the top k directions (rank-k truncation); remove drops
them (ΔW minus the truncation); random is the control: it removes c·ΔW Q Qᵀ, Q k random orthonormal
directions in ΔW's row space (--random-seed), c chosen so the removed energy ‖ΔW − ΔW'‖²_F equals the top-k
energy σ_1² + … + σ_k². k = full: each layer's rank m (trunc: the run itself; remove, random: ΔW = 0).
Score: exact-match accuracy per task on the held-out split of the built-in task mixture (the run's
seed, as `deltaspec train` scores it) and the held-out loss (cross-entropy on the answers). Base: the
model in train_info.json (its SHA-256 must match; --base to give another path to it). Output: a
table (mean over the runs sharing a label), -o x.json (every run, every cell, seconds per evaluation),
--plot fig.png (accuracy and loss against k; also `deltaspec plot ablation x.json -o fig.png`)."""


def parse_k(value: str) -> list:
    from deltaspec.errors import DeltaspecError

    out = []
    for v in parse_list(value) or []:
        if v == "full":
            out.append(v)
        elif v.isdigit() and int(v) >= 1:
            out.append(int(v))
        else:
            raise DeltaspecError(f"--k {value}: each k is a positive integer or 'full', got {v!r}")
    if not out:
        raise DeltaspecError("--k is empty; give e.g. 1,2,4,8,16,full")
    return list(dict.fromkeys(out))


def format_table(data: dict, width=None) -> str:
    """Per label (mean over its runs) and k: loss and mean accuracy of each mode; base row first."""
    from deltaspec.formatting import text_grid, wrap
    from deltaspec.train.ablate import summary

    modes, mean = data["modes"], lambda v: sum(v) / len(v)
    head = ["run", "k"] + [f"{m}_{q}" for m in modes for q in ("loss", "acc")]
    body = []
    for lab, d in summary(data["runs"]).items():
        name = f"{lab} ({d['n']})" if d["n"] > 1 else lab
        body.append([name, "base"] + [f"{mean(d['base'][q]):.3f}" for _ in modes for q in ("loss", "acc")])
        for k in data["k"]:
            body.append(["", str(k)] + [f"{mean(d[(m, k)][q]):.3f}" for m in modes for q in ("loss", "acc")])
    lines = text_grid(head, body, width)
    cost = ", ".join(f"k={k} {s:.2f}" for k, s in data["cost_per_k"].items())
    svd = sum(r["svd_seconds"] for r in data["runs"]) / len(data["runs"])
    notes = [f"acc: mean exact match over the task families ({data['per_task']} held-out examples each); "
             "(n): mean over n runs; base: the base model.",
             f"cost, seconds per evaluation: {cost}; rebuild + SVD {svd:.2f} per run."]
    return "\n".join(lines + [x for n in notes for x in wrap(n, width)])


@click.command(epilog=ABLATE_HELP)
@click.argument("runs", nargs=-1, required=True, type=UserPath(file_okay=False), callback=paths_exist())
@click.option("--labels", default=None, help="One name per run; runs sharing a name are averaged (seeds).")
@click.option("--k", "ks", default="1,2,4,8,16,full", show_default=True, help="Directions per layer.")
@click.option("--modes", default="trunc,remove,random", show_default=True, help="Ablations (see below).")
@click.option("--modules", default=None,
              help="Layers to ablate: module names, or 'all' [default: the run's target modules; full FT of "
                   "every parameter: q_proj,k_proj,v_proj,o_proj].")
@click.option("--base", default=None, type=UserPath(file_okay=False), callback=paths_exist(),
              help="The base model [default: train_info.json's base].")
@click.option("--per-task", type=click.IntRange(min=1), default=40, show_default=True,
              help="Held-out examples per task family.")
@click.option("--random-seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the random control's directions (layer i: seed + i).")
@click.option("-o", "--out", default=None, type=UserPath(dir_okay=False), help="Write the table or JSON (.json).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default=None,
              help="Output format [default: from -o's extension, else table].")
@click.option("--plot", "plot_out", default=None, type=UserPath(dir_okay=False),
              help="Also draw accuracy and loss against k (.png, .pdf, .svg).")
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
@user_errors
def ablate(runs, labels, ks, modes, modules, base, per_task, random_seed, out, fmt, plot_out, quiet):
    """Evaluate trained runs with each selected layer's ΔW truncated to its top k directions,
    stripped of them, or of k random directions of the same energy.

    \b
    deltaspec ablate sample_checkpoints/lora sample_checkpoints/multilora \\
        sample_checkpoints/full --labels LoRA,MultiLoRA,FT -o ablation.json
    deltaspec ablate runs/s0/lora runs/s1/lora --labels LoRA,LoRA --k 1,full

    RUN: a `deltaspec train` output (LoRA or MultiLoRA adapter, or full fine-tune) of the built-in
    GPT or of a local transformers model (e.g. SmolLM2 converted from GGUF). A k above a selected
    layer's rank is an error.
    """
    import time

    from deltaspec import ablation as A
    from deltaspec.errors import DeltaspecError
    from deltaspec.train import ablate as AB

    fmt = output_format(fmt, out, ("table", "json"))
    names = parse_list(labels) or [_default_label(r) for r in runs]
    if len(names) != len(runs):
        raise DeltaspecError(f"--labels has {len(names)} names for {len(runs)} runs; give one per run")
    k_list = parse_k(ks)
    mode_list = [A.check_mode(m) for m in parse_list(modes) or []]
    if not mode_list:
        raise DeltaspecError(f"--modes is empty; choose from {', '.join(A.MODES)}")
    check_output(out, runs)
    check_output(plot_out, runs)
    if plot_out:
        from deltaspec.plots.save import figure_format

        figure_format(plot_out)
    mods = parse_list(modules)
    log = (lambda s: None) if quiet else (lambda s: click.echo(s, err=True))
    opened = []
    for path, lab in zip(runs, names):  # every run rebuilt and every k checked before any evaluation
        r = AB.open_run(path, lab, base=base, modules=mods)
        for k in k_list:
            AB.resolve_k(r, k)
        opened.append(r)
        log(f"{lab}: {r.method}, {len(r.layers)} layers, ranks {sorted({x.rank for x in r.layers})} ({path})")
    results, t0 = [], time.perf_counter()
    for r in opened:
        results.append(AB.ablate_run(r, k_list, mode_list, per_task, random_seed=random_seed, step=lambda s: log(
            f"[{time.perf_counter() - t0:6.0f} s] {s}")))
    data = {"k": k_list, "modes": mode_list, "per_task": per_task, "random_seed": random_seed,
            "random_definition": "remove c*dW*Q*Q^T, Q: k Haar-random orthonormal directions in dW's row space, "
                                 "c such that ||removed||_F^2 = sigma_1^2 + ... + sigma_k^2",
            "cost_per_k": AB.cost_per_k(results), "runs": results}
    text = json.dumps(data, indent=1) if fmt == "json" else format_table(data, table_width(out))
    emit(text, out)
    if plot_out:
        draw(data, plot_out)


def _default_label(path: str) -> str:
    from pathlib import Path

    return Path(path).resolve().name


def draw(data: dict, out: str, dpi: int = 300) -> None:
    from deltaspec.plots import save
    from deltaspec.plots.ablation import ablation

    save(ablation(data), out, dpi=dpi)
    click.echo(f"wrote {out}", err=True)
