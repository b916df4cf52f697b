#!/usr/bin/env bash
# Does EVA converge faster than LoRA and PiSSA (Paischer et al. 2024)?
#
# The offline defaults (MiniLM, the built-in docstring dataset, 150 steps of batch 32,
# rank 8 on the default targets), the same learning rate for every arm (5e-4: EVA's and
# PiSSA's recommended value), plus LoRA at its own default 2e-3, 3 seeds each. EVA's
# calibration uses the run's training split. Training loss logged every 5 steps;
# validation every 50 steps picks the kept weights; test accuracy is reported.
# One command:  bash experiments/eva_convergence/run.sh   (about 30 minutes on 2 cores)
# Completed runs are not redone. ARMS="lora pissa" runs a subset; SUMMARIZE=0 skips the table.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${RUNS:-$here/runs}"            # run folders (not committed)
peftlab=${PEFTLAB:-peftlab}
common=(method.rank=8 trainer.log_every=5 runs_dir="$out" -q)
. "$here/../lib.sh"
for seed in ${SEEDS:-0 1 2}; do
  for arm in ${ARMS:-lora pissa eva lora-lr2e-3}; do
    case $arm in
      lora-lr2e-3) train "$arm" "$seed" method=lora optimizer.lr=2e-3 ;;
      *) train "$arm" "$seed" method="$arm" optimizer.lr=5e-4 ;;
    esac
  done
done
[ "${SUMMARIZE:-1}" = 0 ] && exit 0
python3 "$here/summarize.py" "$out" "$here" > "$here/results.md"
cat "$here/results.md"
