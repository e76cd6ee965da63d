"""The whole system: updates/s and env steps/s of `o2o finetune --mode ray` at one update per
env step, against the isolated learner's rate measured in the same run.

    python bench/end_to_end.py [--env Hopper-v5] [--workers 2] [--envs-per-worker 8] [--seconds 60] [--max-steps N] [--device cpu]
        [--set runtime.learner_backend=graph]

1. Isolated learner: a `LearnerActor` (SAC, 2 critics, `--hidden`, batch 256) pulling
   `MAX_UPDATES_PER_CALL` batches per call from a prefilled replay shard actor, calls back to
   back, for `--seconds` / 3: `isolated_updates_per_s`.
2. System: a real run (`run_finetune(mode="ray")`), SAC at UTD 1 on `--env` with `--workers`
   rollout actors; random actions and no updates for `--warmup` env steps, then as many env steps
   as the isolated learner would update in `--seconds` (at most `--max-steps`, which bounds the
   run's length when the rollouts cannot keep up with a fast learner). The rates come from the run's own
   TensorBoard scalars (env steps and updates against wall time) after the warm-up.
`ratio` = system updates/s / isolated updates/s (target >= 0.5). Prints one JSON object on
stdout (progress on stderr). A measurement, never a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import ray

from distributed_o2o.config import finetune_config, merge_layers, parse_overrides
from distributed_o2o.envs import env_spaces
from distributed_o2o.runtime.components import MAX_UPDATES_PER_CALL
from distributed_o2o.runtime.finetune import run_finetune
from distributed_o2o.runtime.ray_cluster import learner_threads
from distributed_o2o.runtime.ray_runtime import LearnerActor, actor_class
from distributed_o2o.runtime.replay import ReplayService
from replay import transitions  # bench/ is on sys.path when this file runs as a script
from rollout import ints, log, machine, start_ray


def isolated_learner(config, seconds: float) -> float:
    """Updates/s of the learner actor alone, batches pulled (and prefetched) from a full shard."""
    spaces = env_spaces(config.env)
    shard = actor_class(ReplayService).options(num_cpus=0).remote(spaces.obs_dim, spaces.act_dim, 100_000)
    ray.get(shard.add.remote(transitions(np.random.default_rng(0), 100_000, spaces.obs_dim, spaces.act_dim)))
    learner = actor_class(LearnerActor).options(num_cpus=0, num_gpus=1 if config.runtime.device == "cuda" else 0).remote(
        learner_threads(ray.nodes(), config), config, spaces.obs_dim, spaces.act_dim)
    ray.get(learner.attach_replay.remote([shard]))
    step, sizes = config.learning_starts, [100_000]
    ray.get(learner.update_from_replay.remote(MAX_UPDATES_PER_CALL, step, sizes))  # warm-up
    start, done = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        ray.get(learner.update_from_replay.remote(MAX_UPDATES_PER_CALL, step, sizes))
        done += MAX_UPDATES_PER_CALL
    rate = done / (time.perf_counter() - start)
    for handle in (learner, shard):
        ray.kill(handle)
    return rate


def scalar_rate(run: Path, tag: str, after_step: int) -> tuple[float, float]:
    """(env steps/s, `tag` units/s) between the first and last TensorBoard points past `after_step`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    points = [e for e in events.Scalars(tag) if e.step > after_step]
    if len(points) < 2:
        raise SystemExit(f"too few logged points after the warm-up ({len(points)}): raise --seconds")
    first, last = points[0], points[-1]
    span = last.wall_time - first.wall_time
    return (last.step - first.step) / span, (last.value - first.value) / span


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="Hopper-v5")
    parser.add_argument("--workers", default="2", help="rollout actors (one count, or several comma-separated)")
    parser.add_argument("--envs-per-worker", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0, help="target length of the measured part of each run")
    parser.add_argument("--warmup", type=int, default=2000, help="env steps of random actions before updates start")
    parser.add_argument("--max-steps", type=int, default=None, help="cap on the measured env steps of each run")
    parser.add_argument("--hidden", default="256,256")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="another SAC config field for both measurements (e.g. runtime.learner_backend=...)")
    args = parser.parse_args()
    start_ray()
    results = {}
    for workers in ints(args.workers):
        runtime = {"device": args.device, "num_rollout_workers": workers, "envs_per_worker": args.envs_per_worker}
        fields = merge_layers({"env": args.env, "hidden": ints(args.hidden), "batch_size": 256, "utd": 1, "num_critics": 2,
                               "num_min_critics": 2, "random_start_steps": args.warmup, "learning_starts": args.warmup,
                               "runtime": runtime, "eval_episodes": 1}, parse_overrides(args.overrides))
        isolated = isolated_learner(finetune_config("sac", None, fields), args.seconds / 3)
        log(f"isolated learner: {isolated:.1f} updates/s")
        steps = int(isolated * args.seconds)
        if args.max_steps is not None:
            steps = min(steps, args.max_steps)
        online = args.warmup + steps
        config = finetune_config("sac", None, {**fields, "online_steps": online, "eval_every": online,
                                               "log_every": max(1, steps // 20)})
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            summary = run_finetune(config, Path(tmp) / "run", mode="ray", progress=False)
            wall = time.perf_counter() - start
            env_rate, update_rate = scalar_rate(Path(tmp) / "run", "train/updates", args.warmup)
        results[str(workers)] = {"isolated_updates_per_s": round(isolated, 1), "updates_per_s": round(update_rate, 1),
                                 "env_steps_per_s": round(env_rate, 1), "ratio": round(update_rate / isolated, 3),
                                 "env_steps": summary["env_steps"], "updates": summary["updates"], "run_wall_s": round(wall, 1)}
        log(f"{workers} workers: {results[str(workers)]}")
    print(json.dumps({**machine(args.device), "env": args.env, "envs_per_worker": args.envs_per_worker,
                      "hidden": ints(args.hidden), "batch_size": 256, "utd": 1, "warmup": args.warmup,
                      "seconds": args.seconds, "max_steps": args.max_steps, "overrides": args.overrides, "workers": results}, indent=2))


if __name__ == "__main__":
    main()
