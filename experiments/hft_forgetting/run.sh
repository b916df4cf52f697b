#!/usr/bin/env bash
# Does Half Fine-Tuning forget less than full fine-tuning (Hui et al. 2024)?
#
# The protocol of experiments/corda_forgetting: fine-tune on the offline default task
# (MiniLM, docstrings, 150 steps of batch 32, 3 seeds), both at full fine-tuning's default
# rate 5e-5, HFT with rounds of 50 steps (three rounds, so three different frozen halves),
# then measure how far the encoder's features moved on a second, unrelated text set (the
# arithmetic word problems) and on the task's own test set (../corda_forgetting/drift.py).
# One command:  bash experiments/hft_forgetting/run.sh   (about 30 minutes on 2 cores)
# Completed runs are not redone (the full arm is lora_pro_gap's when both use one RUNS folder).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${RUNS:-$here/runs}"            # run folders (not committed)
peftlab=${PEFTLAB:-peftlab}
python=${PYTHON:-python3}
common=(trainer.log_every=5 optimizer.lr=5e-5 runs_dir="$out" -q)
. "$here/../lib.sh"
for seed in ${SEEDS:-0 1 2}; do
  for arm in ${ARMS:-full hft}; do
    case $arm in
      full) train "$arm" "$seed" method=full ;;
      hft) train "$arm" "$seed" method=hft method.round_steps=50 ;;
      *) echo "unknown arm '$arm': use full, hft" >&2; exit 2 ;;
    esac
  done
done
[ "${SUMMARIZE:-1}" = 0 ] && exit 0
$python "$here/../corda_forgetting/drift.py" "$out" "$here/drift.jsonl" full hft
$python "$here/../corda_forgetting/summarize.py" "$here/drift.jsonl" "$out" full hft > "$here/results.md"
cat "$here/results.md"
