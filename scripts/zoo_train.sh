#!/usr/bin/env bash
# The zoo's SAC runs side by side on one Ray instance (a GPU each where there are several),
# each stopped after TRAIN_SECONDS at the latest, then a zoo entry built from each run.
#   scripts/zoo_train.sh RUNS_DIR TRAIN_SECONDS [ENV ...]   (default: Hopper-v5 HalfCheetah-v5 Walker2d-v5)
# Writes RUNS_DIR/<env>/ (the run), RUNS_DIR/<env>.log, RUNS_DIR/zoo/<env>/ (the entry).
# O2O, RAY and ZOO_CONFIG override the commands and the config (configs/zoo-sac.yaml).
set -uo pipefail
runs=$1 seconds=$2
shift 2
envs=("$@")
[ ${#envs[@]} -gt 0 ] || envs=(Hopper-v5 HalfCheetah-v5 Walker2d-v5)
O2O=${O2O:-o2o} RAY=${RAY:-ray} config=${ZOO_CONFIG:-configs/zoo-sac.yaml}
mkdir -p "$runs"
$RAY start --head --disable-usage-stats --include-dashboard=false >"$runs/ray.log" 2>&1 || { cat "$runs/ray.log"; exit 1; }
trap '$RAY stop >/dev/null 2>&1' EXIT
for env in "${envs[@]}"; do
    timeout --signal=INT --kill-after=60 "$seconds" $O2O finetune --algo sac --config "$config" --env "$env" \
        --address auto --quiet --out "$runs/$env" >"$runs/$env.log" 2>&1 &
done
wait
for env in "${envs[@]}"; do
    $O2O zoo build --run "$runs/$env" --out "$runs/zoo" >>"$runs/$env.log" 2>&1 &
done
wait
echo "zoo_train done" >>"$runs/done"
