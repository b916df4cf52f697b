#!/usr/bin/env bash
# Do low-rank LoRA updates create intruder dimensions that full fine-tuning does not, and does
# higher-rank rsLoRA behave like full fine-tuning? (Shuttleworth et al., "LoRA vs Full Fine-tuning:
# An Illusion of Equivalence")
#
# One study on the offline defaults (MiniLM, built-in dataset, 150 steps), four arms (configs/arm/):
# LoRA r=1 (alpha 2), LoRA r=64 (alpha 128), rsLoRA r=64 (alpha 128, s = 16) and full fine-tuning.
# Each arm's learning rate is tuned on validation over the same 6-point log grid [1e-5, 1e-2]
# (seed 0), then the chosen rate runs with 3 fresh seeds; spectral diagnostics at the end of
# every run. 4 x (6 + 3) = 36 runs: about 1.5 hours on 2 cores (JOBS=2).
#   bash experiments/intruder_dimensions/run.sh   (again after an interruption: it continues)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${RUNS:-$here/runs}"            # run folders (not committed: full fine-tuning adapters are 90 MB each)
peftlab=${PEFTLAB:-peftlab}
python=${PYTHON:-python}
where=(--jobs "${JOBS:-2}" --runs-dir "$out")
if [ "${CONTINUE:-1}" = 1 ] && ls -d "$out"/studies/intruders/v* >/dev/null 2>&1; then
  $peftlab study --continue "$(ls -d "$out"/studies/intruders/v* | sort -V | tail -1)" "${where[@]}"
else
  $peftlab study "+arm=lora_r1,lora_r64,rslora_r64,full" analysis=spectral --config-dir "$here/configs" \
    --name intruders --tune "optimizer.lr=tag(log,interval(1e-5,1e-2))" --trials 6 --seeds 3 "${where[@]}"
fi
latest=$(ls -d "$out"/studies/intruders/v* | sort -V | tail -1)
"$python" "$here/summarize.py" "$latest" > "$here/results.md"
$peftlab compare "$latest" --plot "$here/figures" >/dev/null
cat "$here/results.md"
