#!/usr/bin/env bash
# Issue #18's end-to-end figure: one PORL Hopper run (configs/porl.yaml) and a population of five
# seeds of it, at once, each alone on its own GPU and half of the CPUs; prints each one's wall time
# (command to exit), its time breakdown and the population's throughput against five runs in turn.
#   bash bench/population_end_to_end.sh BC_POLICY OUT_DIR      (a machine with two GPUs)
set -u
policy=$1 out=$2
O2O=${O2O:-o2o}
half=$(( $(nproc) / 2 ))
common=(finetune --algo porl --config configs/porl.yaml --policy "$policy" --env Hopper-v5 --mode ray
        --num-rollout-workers 8 --envs-per-worker 4 --set eval_every=5000 --set eval_episodes=10 --quiet)
mkdir -p "$out"
run() {  # GPU CPUS NAME ARGS...
  local gpu=$1 cpus=$2 name=$3 start=$SECONDS
  shift 3
  CUDA_VISIBLE_DEVICES=$gpu taskset -c "$cpus" $O2O "${common[@]}" "$@" --out "$out/$name" > "$out/$name.log" 2>&1
  echo "$name: exit $?, wall $((SECONDS - start)) s" > "$out/$name.wall"
}
run 0 "0-$((half - 1))" single --seed 0 &
run 1 "$half-$((2 * half - 1))" population --seeds 0,1,2,3,4
wait
python3 - "$out" <<'PY'
import json, re, sys
from pathlib import Path
out = Path(sys.argv[1])
wall = {n: int(re.search(r"wall (\d+) s", (out / f"{n}.wall").read_text()).group(1)) for n in ("single", "population")}
for name in ("single", "population"):
    times = json.loads((out / name / "summary.json").read_text())["time_breakdown_s"]
    print(f"{name}: wall {wall[name]} s; " + ", ".join(f"{k} {v}" for k, v in times.items() if v))
print(f"population throughput: {5 * wall['single'] / wall['population']:.2f}x five runs in turn")
PY
