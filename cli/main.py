"""The `deltaspec` command: a click group whose subcommands are imported only when used."""
from __future__ import annotations

import importlib

import click

from .common import SuggestingGroup

# name -> "module:attribute"; each subcommand lives in its own small module under cli/.
COMMANDS = {
    "ablate": "deltaspec_cli.ablate:ablate",
    "analyze": "deltaspec_cli.analyze:analyze",
    "info": "deltaspec_cli.info:info",
    "compare": "deltaspec_cli.compare:compare",
    "heads": "deltaspec_cli.heads:heads",
    "subspace": "deltaspec_cli.subspace:subspace",
    "plot": "deltaspec_cli.plot:plot",
    "train": "deltaspec_cli.train:train",
    "suggest-rank": "deltaspec_cli.suggest_rank:suggest_rank",
    "resize": "deltaspec_cli.resize:resize",
    "merge": "deltaspec_cli.merge:merge",
    "extract": "deltaspec_cli.extract:extract",
    "report": "deltaspec_cli.report:report",
}
# One-line help for `deltaspec --help`, so listing commands imports neither torch nor matplotlib.
SHORT_HELP = {
    "ablate": "Accuracy and loss of a trained run without its top-k (or random) directions.",
    "analyze": "Spectra and balance metrics of the weight update in a checkpoint.",
    "info": "Detected format, layers, shapes, ranks and dtypes of a checkpoint.",
    "compare": "Metrics of several checkpoints side by side (LoRA vs MultiLoRA vs FT).",
    "heads": "Which heads of a MultiLoRA checkpoint carry the update.",
    "subspace": "Subspace similarity, amplification factor and intruder dimensions.",
    "plot": "Paper figures: Figure-2 histograms, spectra, energy curves, heatmaps.",
    "train": "Fine-tune a model with full FT, LoRA or MultiLoRA and save the checkpoint.",
    "suggest-rank": "Per-layer LoRA ranks from the exact spectrum, and a PEFT rank_pattern.",
    "resize": "Any update to a PEFT LoRA of the chosen (per-layer) rank, by truncated SVD.",
    "merge": "Several LoRAs of one base to one LoRA of Σ w_j ΔW_j, by exact SVD.",
    "extract": "A LoRA (kohya, diffusers, PEFT) from a base and a fine-tuned model.",
    "report": "One self-contained HTML report (provenance, tables, figures, ranks).",
}


class LazyGroup(SuggestingGroup):
    """Keeps `deltaspec --help` fast: torch and matplotlib load only for the command that runs."""

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attr)

    def parse_args(self, ctx, args):
        ctx.meta["deltaspec.argv"] = list(args)  # the command as typed, for provenance (report, resize)
        return super().parse_args(ctx, args)

    def format_commands(self, ctx, formatter):
        rows = [(name, SHORT_HELP.get(name, "")) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="deltaspec")
def cli():
    """deltaspec: what did fine-tuning do to the weights?

    Reconstructs the weight update ΔW of every layer (full fine-tuning, LoRA, MultiLoRA, PEFT
    variants), computes its exact singular values and balance metrics, compares methods and
    plots the MultiLoRA paper's Figure 2.
    """


def main():
    cli(prog_name="deltaspec")


if __name__ == "__main__":
    main()
