#!/usr/bin/env bash
# Issue #18's end-to-end figure: one PORL Hopper run (configs/porl.yaml) and a population of five
# seeds of it; prints each one's wall time (command to exit), its time breakdown and the
# population's throughput against five runs in turn.
#   bash bench/population_end_to_end.sh BC_POLICY OUT_DIR [both|single|population]
# With two GPUs "both" (the default) runs the two at once, each alone on its GPU and half of the
# CPUs; with one GPU, one after the other on all of them. "single" or "population" runs that one
# alone (e.g. in two commands where one would run too long); the summary reads whatever OUT_DIR
# holds, so run the other into the same OUT_DIR for the throughput.
set -u
policy=$1 out=$2 which=${3:-both}
case "$which" in both|single|population) ;; *) echo "the third argument is both, single or population, not '$which'" >&2; exit 2 ;; esac
O2O=${O2O:-o2o}
gpus=$(nvidia-smi -L 2>/dev/null | wc -l)
common=(finetune --algo porl --config configs/porl.yaml --policy "$policy" --env Hopper-v5 --mode ray
        --num-rollout-workers 8 --envs-per-worker 4 --set eval_every=5000 --set eval_episodes=10 --quiet)
mkdir -p "$out"
run() {  # GPU CPUS NAME ARGS...
  local gpu=$1 cpus=$2 name=$3 start=$SECONDS
  shift 3
  CUDA_VISIBLE_DEVICES=$gpu taskset -c "$cpus" $O2O "${common[@]}" "$@" --out "$out/$name" > "$out/$name.log" 2>&1
  echo "$name: exit $?, wall $((SECONDS - start)) s" > "$out/$name.wall"
}
all="0-$(( $(nproc) - 1 ))"
case "$which:$gpus" in
  both:2|both:[3-9]*)
    half=$(( $(nproc) / 2 ))
    run 0 "0-$((half - 1))" single --seed 0 &
    run 1 "$half-$((2 * half - 1))" population --seeds 0,1,2,3,4
    wait ;;
  both:*) run 0 "$all" single --seed 0; run 0 "$all" population --seeds 0,1,2,3,4 ;;
  single:*) run 0 "$all" single --seed 0 ;;
  population:*) run 0 "$all" population --seeds 0,1,2,3,4 ;;
esac
python3 - "$out" <<'PY'
import json, re, sys
from pathlib import Path
out = Path(sys.argv[1])
wall = {}
for name in ("single", "population"):
    if not (out / name / "summary.json").is_file():
        continue
    wall[name] = int(re.search(r"wall (\d+) s", (out / f"{name}.wall").read_text()).group(1))
    times = json.loads((out / name / "summary.json").read_text())["time_breakdown_s"]
    print(f"{name}: wall {wall[name]} s; " + ", ".join(f"{k} {v}" for k, v in times.items() if v))
if len(wall) == 2:
    print(f"population throughput: {5 * wall['single'] / wall['population']:.2f}x five runs in turn")
PY
