#!/usr/bin/env bash
# Does BA-LoRA (PiSSA + consistency, diversity and singular-value terms) beat PiSSA and LoRA
# on the default task (MiniLM on the stdlib docstrings, 150 steps of batch 32)?
#
# Arms, 3 seeds each (SEEDS="0" for a quick look, ARMS to pick arms):
#   lora            method=lora at its default lr (2e-3)
#   pissa           method=pissa (lr 5e-4), with BA-LoRA's three terms measured at weight 0:
#                   logged, not trained on, so the training is PiSSA's exactly
#   ba_lora         method=ba_lora: PiSSA + the terms at the paper's weights (1e-4, 3e-4, 1e-4; k = 3)
#   ba_lora_x100    the same terms at 100 times the paper's weights (ours, not the paper's)
# The LoRA arm also measures the three terms at weight 0.
# One command:  bash experiments/ba_lora/run.sh   (about 40 minutes on 2 idle cores)
# Extra overrides for every run go in EXTRA, e.g. EXTRA="model=tiny trainer.max_steps=4" for a smoke test
# (its summary then goes to the runs folder, not to results.md).
# Runs that already completed are not redone, so an interrupted study just runs again.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${RUNS:-$here/runs}"            # run folders (not committed)
peftlab=${PEFTLAB:-peftlab}
python=${PYTHON:-python}
read -r -a extra <<< "${EXTRA:-}"
terms="regularizer=[ba_consistency,ba_diversity,ba_svd]"
measured=("$terms" regularizer.ba_consistency.weight=0 regularizer.ba_diversity.weight=0 regularizer.ba_svd.weight=0)
common=(runs_dir="$out" -q)
done_already() {  # name seed: a completed run of this arm and seed exists
  "$python" - "$out/$1" "$2" <<'PY'
import json, sys, pathlib
runs = [m.parent for m in pathlib.Path(sys.argv[1]).glob("v*/meta.json")]
ok = any(json.loads((r / "meta.json").read_text()).get("status") == "completed"
         and json.loads((r / "meta.json").read_text()).get("seed") == int(sys.argv[2]) for r in runs)
sys.exit(0 if ok else 1)
PY
}
train() {  # name seed overrides...
  local name=$1 seed=$2; shift 2
  done_already "$name" "$seed" || $peftlab train "${common[@]}" "$@" "${extra[@]}" seed="$seed" name="$name"
}
for seed in ${SEEDS:-0 1 2}; do
  for arm in ${ARMS:-lora pissa ba_lora ba_lora_x100}; do
    case $arm in
      lora) train lora "$seed" method=lora "${measured[@]}" ;;
      pissa) train pissa "$seed" method=pissa "${measured[@]}" ;;
      ba_lora) train ba_lora "$seed" method=ba_lora ;;
      ba_lora_x100) train ba_lora_x100 "$seed" method=ba_lora regularizer.ba_consistency.weight=1e-2 \
                      regularizer.ba_diversity.weight=3e-2 regularizer.ba_svd.weight=1e-2 ;;
      *) echo "unknown arm '$arm': use lora, pissa, ba_lora, ba_lora_x100" >&2; exit 2 ;;
    esac
  done
done
results="$here/results.md"
[ -n "${EXTRA:-}" ] && results="$out/results.md"  # a run with extra overrides is not the study's result
"$python" "$here/summarize.py" "$out" > "$results"
cat "$results"
