#!/usr/bin/env bash
# Regenerates docs/sample_report.html, the example report of the bundled samples (run from the repo root).
set -euo pipefail
deltaspec report sample_checkpoints/lora sample_checkpoints/multilora sample_checkpoints/full \
    --base sample_checkpoints/base --labels LoRA,MultiLoRA,FT --device cpu -q -o docs/sample_report.html
