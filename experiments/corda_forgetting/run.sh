#!/usr/bin/env bash
# Does CorDA-KPA forget less than CorDA-IPA and LoRA (Yang et al. 2024)?
#
# Fine-tune on the offline default task (MiniLM, docstrings by module family, 150 steps
# of batch 32, rank 8 on the default targets, lr 5e-4 for every arm, 3 seeds), and
# measure what the encoder still computes on a second, unrelated text set: the
# arithmetic word problems (dataset=arith_kinds). CorDA-KPA's covariance comes from
# that set's train split (the knowledge to keep), CorDA-IPA's from the fine-tuning data.
# drift.py measures, on the second set's test prompts and on the task's own test set,
# how far the fine-tuned encoder's features moved from the pretrained ones.
# One command:  bash experiments/corda_forgetting/run.sh   (about 30 minutes on 2 cores)
# Completed runs are not redone (the LoRA arm is shared with eva_convergence when
# both use the same RUNS folder); SUMMARIZE=0 skips the measurement and the table.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${RUNS:-$here/runs}"            # run folders (not committed)
peftlab=${PEFTLAB:-peftlab}
python=${PYTHON:-python3}
common=(method.rank=8 trainer.log_every=5 optimizer.lr=5e-4 runs_dir="$out" -q)
. "$here/../lib.sh"
for seed in ${SEEDS:-0 1 2}; do
  for arm in ${ARMS:-lora corda-ipa corda-kpa}; do
    case $arm in
      corda-ipa) train "$arm" "$seed" method=corda method.mode=ipa ;;
      corda-kpa) train "$arm" "$seed" method=corda method.mode=kpa method.calibration.dataset=arith_kinds ;;
      *) train "$arm" "$seed" method="$arm" ;;
    esac
  done
done
[ "${SUMMARIZE:-1}" = 0 ] && exit 0
$python "$here/drift.py" "$out" "$here/drift.jsonl" lora corda-ipa corda-kpa
$python "$here/summarize.py" "$here/drift.jsonl" "$out" > "$here/results.md"
cat "$here/results.md"
