#!/usr/bin/env bash
# Does LoRA-Pro close part of the gap between LoRA and full fine-tuning (Wang et al. 2024)?
#
# The offline defaults (MiniLM, the built-in docstring task, 150 steps of batch 32, 3 seeds),
# each method at its own default learning rate: LoRA 2e-3 (rank 8), LoRA-Pro 5e-5 (rank 8;
# its update follows full fine-tuning's Adam step, so full fine-tuning's rate), full
# fine-tuning 5e-5. Training loss every 5 steps; validation every 50 picks the kept weights.
# One command:  bash experiments/lora_pro_gap/run.sh   (about 30 minutes on 2 cores)
# Completed runs are not redone (the LoRA arm is eva_convergence's lora-lr2e-3 when both use
# one RUNS folder). ARMS picks arms; SUMMARIZE=0 skips the table.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${RUNS:-$here/runs}"            # run folders (not committed)
peftlab=${PEFTLAB:-peftlab}
common=(trainer.log_every=5 runs_dir="$out" -q)
. "$here/../lib.sh"
for seed in ${SEEDS:-0 1 2}; do
  for arm in ${ARMS:-lora-lr2e-3 lora_pro full}; do
    case $arm in
      lora-lr2e-3) train "$arm" "$seed" method=lora method.rank=8 optimizer.lr=2e-3 ;;
      lora_pro) train "$arm" "$seed" method=lora_pro method.rank=8 optimizer.lr=5e-5 ;;
      lora_pro-lr5e-4) train "$arm" "$seed" method=lora_pro method.rank=8 optimizer.lr=5e-4 ;;  # 10x: not in ARMS
      full) train "$arm" "$seed" method=full optimizer.lr=5e-5 ;;
      *) echo "unknown arm '$arm': use lora-lr2e-3, lora_pro, full, lora_pro-lr5e-4" >&2; exit 2 ;;
    esac
  done
done
[ "${SUMMARIZE:-1}" = 0 ] && exit 0
python3 "$here/summarize.py" "$out" "$here" > "$here/results.md"
cat "$here/results.md"
