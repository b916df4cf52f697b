#!/usr/bin/env bash
# Every method on the offline defaults (MiniLM, built-in dataset, 150 steps, seed 0,
# each method's default_lr), as one sweep, then the comparison table.
#   bash experiments/methods_on_defaults/run.sh      (about 15 minutes on 2 cores)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
peftlab=${PEFTLAB:-peftlab}
$peftlab sweep method=lora,dora,pissa,milora,olora,svfit,sorsa,salt,full --name methods-on-defaults
latest=$(ls -d runs/sweeps/methods-on-defaults/v* | sort -V | tail -1)
$peftlab compare "$latest" --format markdown --sort metric | tee "$here/results.md"
