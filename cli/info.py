"""`deltaspec info`: what deltaspec sees in a checkpoint, without computing anything."""
from __future__ import annotations

import json

import click

from .common import UserPath, cli_words, user_errors
from .options import initial_option, reader_options


@click.command()
@click.argument("ckpt", type=UserPath())
@reader_options
@initial_option
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="Output format.")
@user_errors
def info(ckpt, base, ckpt_type, lora_alpha, include_embeddings, initial, fmt):
    """Detected format, layers, shapes, ranks and dtypes of CKPT (reads headers only).

    Needs no --base: a full fine-tune or DoRA adapter lists its layers from the headers (analyze needs
    --base to form ΔW). Never imports torch for safetensors checkpoints.
    """
    from deltaspec.formatting import hoist_constant, name_legend, short_names, text_grid, wrap
    from deltaspec.io import load

    from .output import echo_err, table_width, warn

    u = load(ckpt, base=base, format=ckpt_type, lora_alpha=lora_alpha, include_embeddings=include_embeddings,
             initial=initial, require_base=False)
    rows = [{"name": x.name, "shape": list(x.shape), "kind": x.kind, "rank": x.rank_bound, "dtype": x.dtype,
             **{k: v for k, v in x.meta.items() if isinstance(v, (str, int, float, bool))}} for x in u]
    if fmt == "json":
        click.echo(json.dumps({"path": u.path, "format": u.format, "base": u.base,
                               "warnings": [cli_words(w) for w in u.warnings],
                               "notes": [cli_words(n) for n in u.notes], "layers": rows}, indent=1))
        return
    width = table_width(None)
    modules = list(dict.fromkeys(x.module for x in u))
    lines = wrap(f"{u.path}: format {u.format}, {len(u)} layers, modules {', '.join(modules)}"
                 + (f", base {u.base}" if u.base else ""), width)
    extra = sorted({k for r in rows for k in r} - {"name", "shape", "kind", "rank", "dtype"})
    head = ["name", "shape", "kind", "rank", "dtype"] + extra
    short = short_names([r["name"] for r in rows])
    body = [[short[r["name"]], "x".join(map(str, r["shape"])), r["kind"], str(r["rank"]), r["dtype"]]
            + [str(r.get(k, "")) for k in extra] for r in rows]
    head, body, same = hoist_constant(head, body, ["shape", "kind", "rank", "dtype", *extra])
    lines += (wrap(f"every layer: {same}", width) if same else []) + name_legend(short, width)
    click.echo("\n".join(lines + text_grid(head, body, width)))
    if u.base is None and (u.format == "full" or any(x.meta.get("variant") == "dora" for x in u)):
        click.echo("note: no --base given: listed from the headers; analyze needs --base to form ΔW", err=True)
    for n in u.notes:  # info names every expected omission (the other commands sum them up in one line)
        echo_err(f"note: {cli_words(n)}")
    warn(u.warnings)
