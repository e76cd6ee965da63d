#!/usr/bin/env bash
# The runs behind docs/results.md's session-3 tables, side by side on a 4-GPU machine, each in a
# local Ray instance of its own pinned to one GPU (CUDA_VISIBLE_DEVICES):
#   GPU 0, 1  HalfCheetah-v5 SAC for the zoo (configs/zoo-sac.yaml; GPU 1 without LayerNorm in
#             the critics), stopped after TRAIN_SECONDS, then a zoo entry built from each
#   GPU 2     hopper medium (200k) -> CQL (CQL_STEPS) -> O2SAC, 100k online steps
#   GPU 3     hopper medium -> BC (20k steps) -> PORL (spec), PORL with the hand-over constraint,
#             SAC from scratch with 8x4 envs and with one env, 100k online steps each
#   scripts/results_runs.sh RUNS_DIR TRAIN_SECONDS [CQL_STEPS]
# O2O overrides the command (default: o2o). Writes RUNS_DIR/<run>/ and RUNS_DIR/<run>.log.
set -uo pipefail
runs=$1 seconds=$2 cql_steps=${3:-20000}
O2O=${O2O:-o2o}
export OMP_NUM_THREADS=1  # evaluation and data making: one thread per process, many processes
mkdir -p "$runs"
hopper=(--env Hopper-v5 --online-steps 100000 --num-rollout-workers 8 --envs-per-worker 4 --set eval_every=5000 --quiet)

cheetah() {  # GPU, run name, extra finetune args
    local gpu=$1 name=$2
    shift 2
    CUDA_VISIBLE_DEVICES=$gpu timeout --signal=INT --kill-after=30 "$seconds" $O2O finetune --algo sac \
        --config configs/zoo-sac.yaml --env HalfCheetah-v5 --online-steps 2000000 --set replay_capacity=2000000 \
        --set resume_every=100000 --quiet --out "$runs/$name" "$@" >"$runs/$name.log" 2>&1
    $O2O zoo build --run "$runs/$name" --out "$runs/zoo-$name" >>"$runs/$name.log" 2>&1
}
cheetah 0 cheetah-ln &
cheetah 1 cheetah-noln --set critic_layer_norm=false &

$O2O data make --env Hopper-v5 --quality medium --steps 200000 --out "$runs/hopper-medium.hdf5" >"$runs/data.log" 2>&1
(
    export CUDA_VISIBLE_DEVICES=2
    $O2O pretrain --algo cql --dataset "$runs/hopper-medium.hdf5" --env Hopper-v5 --steps "$cql_steps" --out "$runs/cql" >"$runs/o2sac.log" 2>&1
    $O2O finetune --algo o2sac --config configs/o2sac.yaml --policy "$runs/cql" --dataset "$runs/hopper-medium.hdf5" \
        "${hopper[@]}" --out "$runs/o2sac" >>"$runs/o2sac.log" 2>&1
) &
(
    export CUDA_VISIBLE_DEVICES=3
    $O2O pretrain --algo bc --dataset "$runs/hopper-medium.hdf5" --env Hopper-v5 --steps 20000 --out "$runs/bc" >"$runs/bc.log" 2>&1
    $O2O finetune --algo porl --config configs/porl.yaml --policy "$runs/bc" "${hopper[@]}" --out "$runs/porl" >"$runs/porl.log" 2>&1 &
    $O2O finetune --algo porl --config configs/porl-constrained.yaml --policy "$runs/bc" "${hopper[@]}" --out "$runs/porl-constrained" >"$runs/porl-constrained.log" 2>&1 &
    $O2O finetune --algo sac "${hopper[@]}" --out "$runs/sac" >"$runs/sac.log" 2>&1 &
    $O2O finetune --algo sac "${hopper[@]}" --num-rollout-workers 1 --envs-per-worker 1 --out "$runs/sac-1env" >"$runs/sac-1env.log" 2>&1 &
    wait
) &
wait
echo "results_runs done" >"$runs/done"
