"""Options shared by the commands that read checkpoints (analyze, info, compare, plot, subspace)."""
from __future__ import annotations

import click

from .common import UserPath, paths_exist

FORMATS = ("auto", "full", "peft", "multilora", "mtl-multilora", "kohya", "lycoris", "diffusers")


def reader_options(fn):
    """--base, --type, --lora-alpha, --include-embeddings: how to read a checkpoint."""
    for opt in reversed([
        click.option("--base", type=UserPath(), default=None, callback=paths_exist(True, " (--base, the base model)"),
                     help="Base model (dir or file). Needed for full fine-tuning, DoRA, IA3, OFT/BOFT and VeRA."),
        click.option("--type", "ckpt_type", type=click.Choice(FORMATS), default="auto", show_default=True,
                     help="Checkpoint format; 'auto' detects it from the files."),
        click.option("--lora-alpha", type=float, default=None,
                     help="LoRA alpha for formats that do not store it (MTL-LoRA MultiLoRA .pt files). Formats "
                          "that store α keep theirs (PEFT's merge is the reference) and say so in a warning."),
        click.option("--include-embeddings", is_flag=True, help="Also analyse embedding / lm_head updates."),
    ]):
        fn = opt(fn)
    return fn


INITIAL_HELP = ("The adapter saved before training (DIR; `deltaspec train` writes RUN/checkpoint-0; 'auto': "
                "CKPT/checkpoint-0). LoRA/MultiLoRA: adds init_share, learned_* and moveA/moveB. PiSSA/OLoRA "
                "saved unconverted: the exact ΔW = s(BA − B0A0) relative to the original base.")


def initial_option(fn):
    """--initial DIR|auto: the adapter saved before training (LoRA/MultiLoRA init share; PiSSA/OLoRA exact ΔW)."""
    return click.option("--initial", type=UserPath(), default=None, callback=paths_exist(True, keep=("auto",)),
                        help=INITIAL_HELP)(fn)


def initials_option(fn):
    """--initial DIR,DIR,… for commands with several inputs: one per input, '-' for none, or 'auto'."""
    return click.option("--initial", "initial", default=None,
                        help="Adapters saved before training, one per input, comma-separated ('-': none), or "
                             "'auto': each input's checkpoint-0/ where it has one. Adds init_share, learned_* "
                             "and moveA/moveB (see analyze --initial).")(fn)


def initial_for(ckpt, initial):
    """--initial of one checkpoint: 'auto' → CKPT/checkpoint-0 (an error when there is none)."""
    from pathlib import Path

    from deltaspec.errors import DeltaspecError

    if initial != "auto":
        return initial
    d = Path(ckpt) / "checkpoint-0"
    if not d.is_dir():
        raise DeltaspecError(f"{ckpt}: --initial auto needs {d}/ (written by `deltaspec train`); pass --initial DIR")
    return str(d)


def initials_for(inputs, value) -> list:
    """One --initial per input (None: none) from 'auto', '-' or a comma-separated list."""
    from pathlib import Path

    from deltaspec.errors import DeltaspecError

    if value is None:
        return [None] * len(inputs)
    if value == "auto":
        return [str(Path(p) / "checkpoint-0") if (Path(p) / "checkpoint-0").is_dir() else None for p in inputs]
    items = [v.strip() for v in value.split(",")]
    if len(items) != len(inputs):
        raise DeltaspecError(f"--initial has {len(items)} entries for {len(inputs)} inputs; give one per input "
                             "('-' for none) or 'auto'")
    return [None if v in ("-", "") else v for v in items]


MODULES_HELP = ("Module types, e.g. 'k_proj,v_proj', or trailing parts of layer names ('attn1.to_q'; 'to_q' "
                "also selects kohya's '…_attn1_to_q') [default: all].")


def selection_options(fn=None, *, modules_help=MODULES_HELP):
    """--modules, --layers: which layers to keep."""
    def deco(fn):
        fn = click.option("--layers", default=None, help="Layer indices, e.g. '0-3,8' [default: all].")(fn)
        return click.option("--modules", default=None, help=modules_help)(fn)

    return deco(fn) if fn is not None else deco


def compute_options(fn=None, *, metrics: bool = True):
    """--device, --dtype (how spectra are computed) and, with metrics=True, --n-ref, --energy-k (the
    metrics that depend on them); commands that draw or compare only singular values/vectors leave
    the last two out."""
    opts = [
        click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda, cuda:N."),
        click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True,
                     help="Precision of the SVD (bf16/fp16 checkpoints are always upcast)."),
    ]
    if metrics:
        opts += [
            click.option("--n-ref", default="shape", show_default=True,
                         help="Reference size n of normalized_entropy = H/ln(n): 'shape' = min(d_out, d_in), 'rank', "
                              "or an integer."),
            click.option("--energy-k", default="1,4,16", show_default=True, help="k values of the top{k}_energy metrics."),
        ]

    def deco(fn):
        for opt in reversed(opts):
            fn = opt(fn)
        return fn

    return deco(fn) if fn is not None else deco


def parse_n_ref(value: str):
    if value in ("shape", "rank"):
        return value
    try:
        n = int(value)
    except ValueError:
        raise click.BadParameter("expected 'shape', 'rank' or an integer", param_hint="--n-ref") from None
    if n < 2:
        raise click.BadParameter("must be at least 2", param_hint="--n-ref")
    return n


def parse_ints(value: str, hint: str) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}", param_hint=hint) from None
    if not out or min(out) < 1:
        raise click.BadParameter("expected positive integers", param_hint=hint)
    return out
