#!/usr/bin/env bash
# Regenerates sample_checkpoints/ from scratch on CPU (seed 0): the pretrained base, then full FT,
# LoRA (r=16) and MultiLoRA (4 heads x r=4, same total rank) fine-tunes of it on the built-in task
# mixture, with the same data stream, steps and seed. Then prints the k/v balance metrics.
set -euo pipefail
cd "$(dirname "$0")"
STEPS=${STEPS:-1500}
deltaspec train --method pretrain  --out base      --steps 1500 --seed 0 -q
deltaspec train --method full      --out full      --base base --steps "$STEPS" --seed 0 -q
deltaspec train --method lora      --out lora      --base base --steps "$STEPS" --seed 0 --rank 16 -q
deltaspec train --method multilora --out multilora --base base --steps "$STEPS" --seed 0 --rank 16 --heads 4 -q
deltaspec compare lora multilora full --base base --labels LoRA,MultiLoRA,FT --modules k_proj,v_proj
