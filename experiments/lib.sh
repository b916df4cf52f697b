# Shared by the experiments' run.sh scripts (source it after setting $out, $peftlab and
# the array `common`): train one arm for one seed unless a completed run of it exists,
# so an interrupted experiment just runs again and arms shared by two experiments
# (same name, same overrides) are trained once when both point RUNS at one folder.

done_already() {  # name seed: a completed run of this arm and seed exists under $out
  python3 - "$out/$1" "$2" <<'PY'
import json, sys, pathlib
for meta in pathlib.Path(sys.argv[1]).glob("v*/meta.json"):
    m = json.loads(meta.read_text())
    if m.get("status") == "completed" and m.get("seed") == int(sys.argv[2]):
        sys.exit(0)
sys.exit(1)
PY
}

train() {  # name seed overrides...
  local name=$1 seed=$2; shift 2
  done_already "$name" "$seed" || $peftlab train "${common[@]}" "$@" seed="$seed" name="$name"
}
