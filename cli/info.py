"""`deltaspec info`: what deltaspec sees in a checkpoint, without computing anything."""
from __future__ import annotations

import json

import click

from .common import user_errors
from .options import reader_options


@click.command()
@click.argument("ckpt", type=click.Path())
@reader_options
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="Output format.")
@user_errors
def info(ckpt, base, ckpt_type, lora_alpha, include_embeddings, fmt):
    """Detected format, layers, shapes, ranks and dtypes of CKPT (reads headers only)."""
    import deltaspec as ds
    from deltaspec.results import text_grid

    u = ds.load(ckpt, base=base, format=ckpt_type, lora_alpha=lora_alpha, include_embeddings=include_embeddings)
    rows = [{"name": x.name, "shape": list(x.shape), "kind": x.kind, "rank": x.rank_bound, "dtype": x.dtype,
             **{k: v for k, v in x.meta.items() if isinstance(v, (str, int, float, bool))}} for x in u]
    if fmt == "json":
        click.echo(json.dumps({"path": u.path, "format": u.format, "base": u.base, "warnings": u.warnings,
                               "layers": rows}, indent=1))
        return
    modules = list(dict.fromkeys(x.module for x in u))
    click.echo(f"{u.path}: format {u.format}, {len(u)} layers, modules {', '.join(modules)}"
               + (f", base {u.base}" if u.base else ""))
    extra = sorted({k for r in rows for k in r} - {"name", "shape", "kind", "rank", "dtype"})
    head = ["name", "shape", "kind", "rank", "dtype"] + extra
    body = [[r["name"], "x".join(map(str, r["shape"])), r["kind"], str(r["rank"]), r["dtype"]]
            + [str(r.get(k, "")) for k in extra] for r in rows]
    click.echo("\n".join(text_grid(head, body)))
    for w in u.warnings:
        click.echo(f"warning: {w}", err=True)
