#!/usr/bin/env bash
# Do low-rank LoRA updates create intruder dimensions that full fine-tuning does not?
# (Shuttleworth et al., "LoRA vs Full Fine-tuning: An Illusion of Equivalence")
#
# LoRA rank 1 and rank 64 (alpha = 2r, as in the paper's example config) versus
# full fine-tuning, on the offline defaults (MiniLM, built-in dataset), the same
# 150 steps, 3 seeds; spectral diagnostics computed at the end of each run.
# One command:  bash experiments/intruder_dimensions/run.sh   (about 20 minutes on 2 cores)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${RUNS:-$here/runs}"            # run folders (not committed: full fine-tuning adapters are 90 MB each)
peftlab=${PEFTLAB:-peftlab}
for seed in 0 1 2; do
  $peftlab train method=lora method.rank=1 method.alpha=2 seed=$seed analysis=spectral runs_dir="$out" name=lora-r1 -q
  $peftlab train method=lora method.rank=64 method.alpha=128 seed=$seed analysis=spectral runs_dir="$out" name=lora-r64 -q
  $peftlab train method=full seed=$seed analysis=spectral runs_dir="$out" name=full -q
done
python "$here/summarize.py" "$out" > "$here/results.md"
cat "$here/results.md"
