#!/usr/bin/env bash
# Every method on the offline defaults (MiniLM, built-in dataset, 150 steps, seed 0,
# each method's default_lr), as one sweep, then the comparison table.
#   bash experiments/methods_on_defaults/run.sh      (about 70 minutes on one core)
# RUNS picks the runs folder (default: this experiment's runs/, not committed); JOBS=2 runs two at once.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${RUNS:-$here/runs}"
peftlab=${PEFTLAB:-peftlab}
methods=$(ls "$here/../../configs/method" | sed 's/\.yaml$//' | paste -sd, -)
$peftlab sweep "method=$methods" runs_dir="$out" --name methods-on-defaults --jobs "${JOBS:-1}"
latest=$(ls -d "$out"/sweeps/methods-on-defaults/v* | sort -V | tail -1)
$peftlab compare "$latest" --format markdown | tee "$here/results.md"
