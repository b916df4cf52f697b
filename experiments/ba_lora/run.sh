#!/usr/bin/env bash
# Does BA-LoRA (PiSSA + consistency, diversity and singular-value terms) beat PiSSA and LoRA
# on the default task (MiniLM on the stdlib docstrings, 150 steps of batch 32)?
#
# Arms, 3 seeds each (SEEDS="0" for a quick look, ARMS to pick arms):
#   lora-measured   method=lora at its default lr (2e-3), with BA-LoRA's three terms measured at
#                   weight 0: logged, not trained on, so the training is LoRA's exactly
#   pissa-measured  method=pissa (lr 5e-4), the terms measured at weight 0 likewise
#   ba_lora         method=ba_lora: PiSSA + the terms at the paper's weights (1e-4, 3e-4, 1e-4; k = 3)
#   ba_lora_x100    the same terms at 100 times the paper's weights (ours, not the paper's)
# and on the causal LM (the protocol of experiments/pissa_vs_lora_lm: Gemma 3 270M on the arithmetic
# word problems, rank 8, 120 steps of batch 8, lr 5e-4 for all, test exact match by greedy decoding):
#   lm-lora, lm-pissa, lm-ba_lora   (about 15-25 minutes per run on one core)
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
common=(runs_dir="$out" trainer.log_every=5 -q)
lm=(model=gemma3-270m dataset=arith method.rank=8 trainer.eval_every=60 task.validation_generations=100
    task.generation_batch_size=32 optimizer.lr=5e-4)
. "$here/../lib.sh"
for seed in ${SEEDS:-0 1 2}; do
  for arm in ${ARMS:-pissa-measured ba_lora ba_lora_x100 lora-measured lm-pissa lm-ba_lora lm-lora}; do
    case $arm in
      lora-measured) train lora-measured "$seed" method=lora "${measured[@]}" ;;
      pissa-measured) train pissa-measured "$seed" method=pissa "${measured[@]}" ;;
      ba_lora) train ba_lora "$seed" method=ba_lora ;;
      ba_lora_x100) train ba_lora_x100 "$seed" method=ba_lora regularizer.ba_consistency.weight=1e-2 \
                      regularizer.ba_diversity.weight=3e-2 regularizer.ba_svd.weight=1e-2 ;;
      lm-lora) train lm-lora "$seed" "${lm[@]}" method=lora ;;
      lm-pissa) train lm-pissa "$seed" "${lm[@]}" method=pissa ;;
      lm-ba_lora) train lm-ba_lora "$seed" "${lm[@]}" method=ba_lora ;;
      *) echo "unknown arm '$arm': use lora-measured, pissa-measured, ba_lora, ba_lora_x100, lm-lora, lm-pissa," \
              "lm-ba_lora" >&2; exit 2 ;;
    esac
  done
done
results="$here/results.md"
[ -n "${EXTRA:-}" ] && results="$out/results.md"  # a run with extra overrides is not the study's result
[ "${SUMMARIZE:-1}" = 0 ] && exit 0
"$python" "$here/summarize.py" "$out" > "$results"
cat "$results"
