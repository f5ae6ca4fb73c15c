#!/usr/bin/env bash
# Regenerates sample_checkpoints/ on CPU: full FT, LoRA (r=16) and MultiLoRA (4 heads x r=4, same total
# rank) fine-tunes of the bundled base on the built-in task mixture, with the same data stream, steps and
# seed for every method (only the method differs). Every seed trains into runs/samples/seed<k>/; seed 0
# keeps step checkpoints (for the trajectory figure) and its final checkpoints are copied here.
# Then prints the per-seed table of sample_checkpoints/README.md and the k/v comparison of the samples.
#
#   bash sample_checkpoints/make.sh [--seeds 0,1,2] [--jobs 2] [--resume] [--pretrain]
#     --seeds    seeds to train (default 0: the samples only); the table is over all of them
#     --jobs     training runs at a time (default 1); each uses one thread (OMP_NUM_THREADS=1)
#     --resume   keep runs that already finished (their train_info.json exists) instead of retraining
#     --pretrain also retrain the base from scratch (1500 steps; changes every number downstream)
#   STEPS=N overrides the fine-tuning steps (default 1500); RUNS=DIR the scratch folder.
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=0 JOBS=1 PRETRAIN=0 RESUME=0
while [ $# -gt 0 ]; do
  case "$1" in
    --seeds) SEEDS=$2; shift 2 ;;
    --jobs) JOBS=$2; shift 2 ;;
    --pretrain) PRETRAIN=1; shift ;;
    --resume) RESUME=1; shift ;;
    *) echo "usage: bash sample_checkpoints/make.sh [--seeds 0,1,2] [--jobs N] [--resume] [--pretrain]" >&2; exit 2 ;;
  esac
done
STEPS=${STEPS:-1500}
RUNS=${RUNS:-runs/samples}
BASE=sample_checkpoints/base
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
if [ "$PRETRAIN" = 1 ] || [ ! -f $BASE/model.safetensors ]; then
  deltaspec train --method pretrain -o $BASE --steps 1500 --seed 0 -q --force
fi

# one line per run: seed method extra-options; seed 0 also keeps step checkpoints
# (no trailing blanks: xargs -L would join such a line with the next)
jobs_list() {
  for seed in ${SEEDS//,/ }; do
    every=""; [ "$seed" = 0 ] && every=" --save-every $((STEPS / 10))"
    echo "$seed full$every"
    echo "$seed lora --rank 16$every"
    echo "$seed multilora --rank 16 --heads 4$every"
  done
}
train_one() {
  seed=$1 method=$2; shift 2
  out=$RUNS/seed$seed/$method
  if [ "$RESUME" = 1 ] && [ -f "$out/train_info.json" ]; then echo "$out: kept (--resume)"; return; fi
  rm -rf "$out" && mkdir -p "$RUNS/seed$seed"
  TIMEFORMAT="%U %S %R"
  t=$( { time deltaspec train --method "$method" -o "$out" --base $BASE --steps "$STEPS" --seed "$seed" -q "$@" \
          > "$out.log" 2>&1 ; } 2>&1 ) || { echo "$out: failed, see $out.log" >&2; return 1; }
  read -r user sys wall <<< "$t"
  echo "$out: $(grep 'exact match' "$out.log" | cut -d: -f2-) [CPU $user+$sys s, wall $wall s]"
}
export -f train_one
export RUNS BASE STEPS RESUME
START=$(date +%s)
jobs_list | xargs -P "$JOBS" -L 1 bash -c 'train_one "$@"' _
echo "training took $(( $(date +%s) - START )) s of wall time"

if [[ ",$SEEDS," == *",0,"* ]]; then  # the shipped samples: seed 0's final checkpoints and checkpoint-0
  for m in full lora multilora; do
    rm -rf sample_checkpoints/$m && mkdir sample_checkpoints/$m
    find $RUNS/seed0/$m -maxdepth 1 -type f -exec cp {} sample_checkpoints/$m/ \;
    if [ -d $RUNS/seed0/$m/checkpoint-0 ]; then cp -r $RUNS/seed0/$m/checkpoint-0 sample_checkpoints/$m/; fi
  done
  python figures/fig_trajectory.py --runs $RUNS/seed0
fi
python sample_checkpoints/seed_table.py --base $BASE --json $RUNS/seed_table.json \
  $(for seed in ${SEEDS//,/ }; do echo $RUNS/seed$seed/{lora,multilora,full}; done)
python sample_checkpoints/init_table.py --base $BASE \
  $(for seed in ${SEEDS//,/ }; do echo $RUNS/seed$seed/{lora,multilora}; done)
deltaspec compare sample_checkpoints/lora sample_checkpoints/multilora sample_checkpoints/full --base $BASE \
  --labels LoRA,MultiLoRA,FT --modules k_proj,v_proj --metrics top1_energy,normalized_entropy,effective_rank -q
