#!/usr/bin/env bash
# Does PiSSA converge faster and end higher than LoRA on a causal LM (Meng et al. 2024)?
#
# Gemma 3 270M (offline, model=gemma3-270m) fine-tuned on the built-in arithmetic
# word problems (dataset=arith), rank 8 on all seven projections of every layer,
# 120 steps of batch 8 (the small_lm trainer preset), the same learning rate for
# both (5e-4, PiSSA's default; the paper's protocol: identical hyperparameters),
# 3 seeds each, plus the untrained model evaluated the same way (trainer.max_steps=0).
# Selection on 100 validation problems every 60 steps; test exact match on all 300.
# One command:  bash experiments/pissa_vs_lora_lm/run.sh   (about 1.5 hours on 2 cores)
# Runs that already completed are not redone, so an interrupted study just runs again.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${RUNS:-$here/runs}"            # run folders (not committed)
peftlab=${PEFTLAB:-peftlab}
common=(model=gemma3-270m dataset=arith method.rank=8 trainer.eval_every=60 task.validation_generations=100
        task.generation_batch_size=32 runs_dir="$out" -q)
done_already() {  # name seed: a completed run of this arm and seed exists
  python - "$out/$1" "$2" <<'PY'
import json, sys, pathlib
runs = [m.parent for m in pathlib.Path(sys.argv[1]).glob("v*/meta.json")]
ok = any(json.loads((r / "meta.json").read_text()).get("status") == "completed"
         and json.loads((r / "meta.json").read_text()).get("seed") == int(sys.argv[2]) for r in runs)
sys.exit(0 if ok else 1)
PY
}
train() {  # name seed overrides...
  local name=$1 seed=$2; shift 2
  done_already "$name" "$seed" || $peftlab train "${common[@]}" "$@" seed="$seed" name="$name"
}
train untrained 0 method=lora trainer.max_steps=0
for seed in ${SEEDS:-0 1 2}; do  # SEEDS="0" for a quick look
  train pissa "$seed" method=pissa optimizer.lr=5e-4
  train lora "$seed" method=lora optimizer.lr=5e-4
done
python "$here/summarize.py" "$out" "$here" > "$here/results.md"
cat "$here/results.md"
