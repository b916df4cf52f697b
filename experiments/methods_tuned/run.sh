#!/usr/bin/env bash
# Every method on the offline defaults at its own best learning rate: one `peftlab study`.
#   tuning: each method at 6 learning rates on a log grid over [1e-5, 1e-2] (seed 0), chosen on validation;
#   final:  each method's chosen rate with 3 fresh seeds (1, 2, 3); the table reports their test accuracy.
# 19 methods x (6 + 3) = 171 runs: about 5 hours on 2 cores, one run at a time on both (JOBS=1, the default: on 2 cores
#   it is as fast as two one-thread runs side by side, and runs in one process). Interrupt it at will:
#   bash experiments/methods_tuned/run.sh  continues the newest study where it stopped (CONTINUE=0: a new one).
# RUNS picks the runs folder (default: this experiment's runs/; the records of its finished runs are committed,
#   see records.py, so a fresh clone continues the committed study).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${RUNS:-$here/runs}"
peftlab=${PEFTLAB:-peftlab}
methods=$(ls "$here/../../configs/method" | sed 's/\.yaml$//' | paste -sd, -)
where=(--jobs "${JOBS:-1}" --runs-dir "$out")
if [ "${CONTINUE:-1}" = 1 ] && ls -d "$out"/studies/methods-tuned/v* >/dev/null 2>&1; then
  $peftlab study --continue "$(ls -d "$out"/studies/methods-tuned/v* | sort -V | tail -1)" "${where[@]}"
else
  $peftlab study "method=$methods" --name methods-tuned --tune "optimizer.lr=tag(log,interval(1e-5,1e-2))" \
    --trials 6 --seeds 3 "${where[@]}"
fi
latest=$(ls -d "$out"/studies/methods-tuned/v* | sort -V | tail -1)
$peftlab compare "$latest" --format markdown --sort metric | tee "$here/results.md"
$peftlab compare "$latest" --plot "$here/figures" >/dev/null
