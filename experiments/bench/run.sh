#!/usr/bin/env bash
# peftlab against Hugging Face PEFT on the same work, as `make bench` runs it:
#   1. the training step of every method both have, on MiniLM (with peak memory) and on the tiny causal LM's layers;
#   2. PiSSA initialisation (init.py): time, and how close each side's start is to the exact triplets;
#   3. scaling curves (scaling.py): step time and memory vs rank and sequence length, init time vs size;
#   4. the whole default run, `peftlab train`, against the PEFT + Trainer script (peft_trainer.py), 3 seeds.
# Results go to experiments/bench/results/ (JSON, the scaling plot) and are printed; README.md reads the committed ones.
# SLOW=1 adds the step and init benchmarks on Gemma 3 270M (the `lm` extra; about 15 minutes more).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python=${PYTHON:-python}
out="$here/results"
mkdir -p "$out"
echo "== machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2 | xargs)"
echo "== training step, MiniLM (batch 32 x 64 tokens)"
"$python" "$here/step.py" --model minilm --memory --json "$out/step_minilm.json"
echo "== training step, tiny causal LM (batch 8 x 128 tokens)"
"$python" "$here/step.py" --model tiny_lm --batch 8 --length 128 --steps 30 --json "$out/step_tiny_lm.json"
if [ "${SLOW:-0}" = 1 ]; then
  echo "== training step, Gemma 3 270M (batch 4 x 128 tokens)"
  "$python" "$here/step.py" --model gemma3-270m --batch 4 --length 128 --steps 20 --methods lora,dora \
    --json "$out/step_gemma3-270m.json"
  echo "== causal-LM fine-tuning step with its output layer, Gemma 3 270M (batch 8 arithmetic problems)"
  "$python" "$here/../bench_lm_step.py" --model gemma3-270m --steps 5
fi
echo "== PiSSA initialisation, MiniLM (36 matrices, r = 8)"
"$python" "$here/init.py" --model minilm --json "$out/init_minilm.json"
if [ "${SLOW:-0}" = 1 ]; then
  echo "== PiSSA initialisation, Gemma 3 270M (126 matrices, r = 8)"
  "$python" "$here/init.py" --model gemma3-270m --repeats 3 --json "$out/init_gemma3-270m.json"
fi
echo "== scaling: step time and activation memory vs rank and length, PiSSA init time vs width and layers"
"$python" "$here/scaling.py" --out "$out"
echo "== the whole default run against the PEFT + Trainer script"
"$python" "$here/end_to_end.py" --pairs "${PAIRS:-3}" --json "$out/end_to_end.json"
