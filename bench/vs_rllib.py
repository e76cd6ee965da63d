"""RLlib 2.60's own SAC and ours side by side: one command, one machine, Hopper-v5.

    python bench/vs_rllib.py [--env Hopper-v5] [--env-steps 100000] [--rllib-env-steps N] [--device cuda]
        [--workers 8] [--envs-per-worker 4] [--rllib-env-runners N] [--eval-every 10000] [--eval-episodes 10]
    python bench/vs_rllib.py --device cpu --env-steps 1500 --learning-starts 500 --eval-every 500 \
        --eval-episodes 2 --hidden 64,64 --workers 1 --envs-per-worker 2 --rllib-env-runners 1   # a CPU check

Both sides: SAC, 2 critics, `--hidden` MLPs, batch 256, Adam at 3e-4 for actor, critics and α
(target entropy −|A|, α from 1), γ 0.99, τ 0.005, uniform replay of 1M, one update per env step
after `--learning-starts` env steps, `--env-steps` env steps in all (RLlib: `--rllib-env-steps`
where given: at its ~12 updates/s on an H200, 100k take over two hours; its rates are per
second all the same, but its process rate then spreads its start-up over a shorter run than
ours, which counts against it: read the updating rates beside it); each side is its own
subprocess, run one after the other (RLlib first), and timed from process start to exit.
- RLlib (`--side rllib`, this file in a subprocess): its new API stack as it is meant to run
  fastest here: `--rllib-env-runners` env runners (default: the CPUs less two) of one env each,
  rollout fragments of one step, the learner in the main process on the GPU where there is one
  (`num_learners=0, num_gpus_per_learner=1`), uniform `EpisodeReplayBuffer`, one `train()` per
  sampling round (`min_time_s_per_iteration=0`), `training_intensity` set so that each round
  takes as many updates as it sampled env steps; deterministic evaluation (`explore=False`) on
  one evaluation env runner each time the sampled env steps pass a multiple of `--eval-every`.
- Ours: `o2o finetune --algo sac --mode ray` with `--workers` rollout actors of
  `--envs-per-worker` envs, its default learner (the graphed one on a GPU), evaluations every
  `--eval-every` env steps of `--eval-episodes` deterministic episodes (RLlib's random start is
  its policy's samples, ours uniform actions, both for `--learning-starts` steps).
Per side: env steps/s and updates/s over the process (start to exit) and over the updating part
(from the first logged point with updates to the last: RLlib's `train()` results, our
TensorBoard `train/updates`), and the evaluation returns; the ratios ours / RLlib of both rates,
and both returns at equal env steps (RLlib's evaluation at the first round past each multiple,
its env step given). Prints one JSON object (progress on stderr). A measurement, never a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rollout import ints, log, machine  # bench/ is on sys.path when this file runs as a script

BATCH, LR = 256, 3e-4


def rllib_side(args) -> dict:
    """RLlib's SAC in this process: its timeline of (time, env steps, updates) and its evaluations."""
    import ray
    from ray.rllib.algorithms.sac import SACConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    gpus = 1 if args.device == "cuda" else 0
    runners = args.rllib_env_runners
    ray.init(num_cpus=os.cpu_count(), num_gpus=gpus, include_dashboard=False, logging_level="ERROR")
    # RLlib's round robin (dqn.calculate_rr_weights) counts the main process as one more sampler:
    # this intensity makes its updates per round equal the round's env steps (runners x 1 x 1).
    intensity = BATCH * runners / (runners + 1)
    config = (SACConfig()
              .environment(args.env)
              .env_runners(num_env_runners=runners, num_envs_per_env_runner=1, rollout_fragment_length=1)
              .learners(num_learners=0, num_gpus_per_learner=gpus)
              .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=ints(args.hidden)))
              .training(train_batch_size_per_learner=BATCH, actor_lr=LR, critic_lr=LR, alpha_lr=LR, gamma=0.99, tau=0.005,
                        initial_alpha=1.0, twin_q=True, training_intensity=intensity,
                        num_steps_sampled_before_learning_starts=args.learning_starts,
                        replay_buffer_config={"type": "EpisodeReplayBuffer", "capacity": 1_000_000})
              .reporting(min_time_s_per_iteration=0, min_sample_timesteps_per_iteration=0)
              .evaluation(evaluation_num_env_runners=1, evaluation_duration=args.eval_episodes,
                          evaluation_duration_unit="episodes", evaluation_config={"explore": False})
              .debugging(seed=args.seed))
    algo = config.build_algo()
    timeline, evaluations, next_eval = [], [], args.eval_every
    env_steps = 0
    while env_steps < (args.rllib_env_steps or args.env_steps):
        result = algo.train()
        env_steps = int(result["env_runners"]["num_env_steps_sampled_lifetime"])
        trained = int(result.get("learners", {}).get("__all_modules__", {}).get("num_env_steps_trained_lifetime", 0))
        timeline.append((time.time(), env_steps, trained // BATCH))
        if env_steps >= next_eval:
            episode_return = find_return(algo.evaluate())
            evaluations.append({"env_steps": env_steps, "return_mean": episode_return})
            log(f"rllib: {env_steps} env steps, {trained // BATCH} updates, eval return {episode_return:.1f}")
            next_eval = (env_steps // args.eval_every + 1) * args.eval_every
    algo.stop()
    ray.shutdown()
    return {"timeline": timeline, "evaluations": evaluations,
            "config": {"env_runners": runners, "envs_per_env_runner": 1, "rollout_fragment_length": 1,
                       "learner": "main process, GPU" if gpus else "main process, CPU", "training_intensity": intensity,
                       "replay": "EpisodeReplayBuffer"}}


def find_return(result: dict) -> float:
    """The mean episode return in an `evaluate()` result (nested under "evaluation" in some versions)."""
    result = result.get("evaluation", result)
    return float(result["env_runners"]["episode_return_mean"])


def run_rllib(args) -> dict:
    command = [sys.executable, __file__, "--side", "rllib", *sys.argv[1:]]
    start = time.time()
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    end = time.time()
    side = json.loads(done.stdout.strip().splitlines()[-1])
    return summarise(side["timeline"], side["evaluations"], start, end) | {"config": side["config"]}


def run_ours(args, directory: Path) -> dict:
    run = directory / "run"
    fields = {"batch_size": BATCH, "utd": 1, "num_critics": 2, "num_min_critics": 2, "actor_lr": LR, "critic_lr": LR,
              "alpha_lr": LR, "learning_starts": args.learning_starts, "random_start_steps": args.learning_starts,
              "eval_every": args.eval_every, "eval_episodes": args.eval_episodes, "runtime.device": args.device,
              "log_every": args.log_every, "hidden": f"[{args.hidden}]"}
    command = [sys.executable, "-m", "distributed_o2o.cli.main", "finetune", "--algo", "sac", "--env", args.env,
               "--online-steps", str(args.env_steps), "--out", str(run), "--mode", "ray", "--quiet",
               "--num-rollout-workers", str(args.workers), "--envs-per-worker", str(args.envs_per_worker),
               "--seed", str(args.seed), *(f"--set={key}={value}" for key, value in fields.items())]
    start = time.time()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    end = time.time()
    timeline = updates_timeline(run)
    evaluations = [{"env_steps": line["env_steps"], "return_mean": line["return_mean"]}
                   for line in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                   if "return_mean" in line and line["env_steps"] > 0]
    summary = json.loads((run / "summary.json").read_text())  # its totals: updates may finish after the last log point
    return summarise(timeline, evaluations, start, end, (summary["env_steps"], summary["updates"])) | {
        "config": {"rollout_workers": args.workers, "envs_per_worker": args.envs_per_worker,
                   "learner_backend": "auto (graphed on a GPU)"}}


def updates_timeline(run: Path) -> list[tuple[float, int, int]]:
    """(wall time, env steps, updates) of each `train/updates` point of the run's TensorBoard log."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    return [(e.wall_time, e.step, int(e.value)) for e in events.Scalars("train/updates")]


def summarise(timeline: list, evaluations: list, start: float, end: float, totals: tuple[int, int] | None = None) -> dict:
    """Rates over the process (start to exit: `totals` of env steps and updates, else the last
    point's) and over the updating part of `timeline`."""
    env_steps, updates = totals or timeline[-1][1:]
    process_s = end - start
    result = {"env_steps": env_steps, "updates": updates, "process_s": round(process_s, 1),
              "env_steps_per_s_process": round(env_steps / process_s, 2), "updates_per_s_process": round(updates / process_s, 2),
              "evaluations": evaluations}
    updating = [point for point in timeline if point[2] > 0]
    if len(updating) >= 2:
        (t0, e0, u0), (t1, e1, u1) = updating[0], updating[-1]
        result.update({"first_update_point_after_start_s": round(t0 - start, 1), "updating_s": round(t1 - t0, 1),
                       "env_steps_per_s_updating": round((e1 - e0) / (t1 - t0), 2),
                       "updates_per_s_updating": round((u1 - u0) / (t1 - t0), 2)})
    return result


def returns_at_equal_env_steps(rllib: list[dict], ours: list[dict], every: int) -> list[dict]:
    """Our evaluation at each multiple of `every` beside RLlib's first one at or past it."""
    pairs = []
    for mine in ours:
        theirs = next((e for e in rllib if e["env_steps"] >= mine["env_steps"]
                       and e["env_steps"] < mine["env_steps"] + every), None)
        if theirs is not None:
            pairs.append({"env_steps": mine["env_steps"], "ours": round(mine["return_mean"], 1),
                          "rllib": round(theirs["return_mean"], 1), "rllib_env_steps": theirs["env_steps"]})
    return pairs


def ratio(ours: dict, rllib: dict, key: str) -> float | None:
    return round(ours[key] / rllib[key], 1) if key in ours and key in rllib and rllib[key] else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", choices=("both", "rllib"), default="both", help="internal: rllib runs that side alone")
    parser.add_argument("--env", default="Hopper-v5")
    parser.add_argument("--env-steps", type=int, default=100_000)
    parser.add_argument("--rllib-env-steps", type=int, default=None, help="RLlib's env steps (default: --env-steps)")
    parser.add_argument("--learning-starts", type=int, default=5000)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--hidden", default="256,256")
    parser.add_argument("--workers", type=int, default=8, help="our rollout actors")
    parser.add_argument("--envs-per-worker", type=int, default=4, help="envs of each of our rollout actors")
    parser.add_argument("--rllib-env-runners", type=int, default=max(1, (os.cpu_count() or 3) - 2))
    parser.add_argument("--eval-every", type=int, default=10_000)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--log-every", type=int, default=1000, help="our training log interval (env steps)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.side == "rllib":
        print(json.dumps(rllib_side(args)))
        return
    log("rllib: starting")
    rllib = run_rllib(args)
    log(f"rllib: {json.dumps({k: v for k, v in rllib.items() if k != 'evaluations'})}")
    with tempfile.TemporaryDirectory() as directory:
        log("ours: starting")
        ours = run_ours(args, Path(directory))
    log(f"ours: {json.dumps({k: v for k, v in ours.items() if k != 'evaluations'})}")
    keys = ("updates_per_s_process", "env_steps_per_s_process", "updates_per_s_updating", "env_steps_per_s_updating")
    print(json.dumps({**machine(args.device), "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
                      "env": args.env, "env_steps": args.env_steps, "batch_size": BATCH, "hidden": ints(args.hidden),
                      "learning_starts": args.learning_starts, "rllib": rllib, "ours": ours,
                      "ratio_ours_over_rllib": {key: ratio(ours, rllib, key) for key in keys},
                      "returns_at_equal_env_steps": returns_at_equal_env_steps(rllib["evaluations"], ours["evaluations"],
                                                                               args.eval_every)}, indent=2))


if __name__ == "__main__":
    main()
