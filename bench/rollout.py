"""Rollout throughput: env steps/s of rollout actors against the raw rate of the same envs.

    python bench/rollout.py [--env Hopper-v5] [--envs-per-worker 16] [--workers 1,2,4,8,14] [--seconds 10]

Prints one JSON object on stdout (progress goes to stderr):
- `raw_steps_per_s`: the same vectorised envs stepping uniform random actions in a loop, in a
  Ray worker process of this run (no policy, no Ray calls): the ceiling.
- per worker count W: `steps_per_s` of W `RolloutActor`s doing what they do in a run: batched
  CPU inference of a TanhGaussian policy (`--hidden`), chunks of `CHUNK_TRANSITIONS`
  transitions inserted into a replay shard actor, two chunks queued per actor as the driver
  queues them; `ratio_to_raw` = steps_per_s / (W x raw) (target >= 0.7 at W = 1);
  `of_linear` = steps_per_s / (W x the one-actor rate) (target >= 0.8 at W = 14).
- per W also `raw_concurrent_steps_per_s`: W raw loops side by side, the hardware's own scaling
  (shared cores, hyperthread siblings, memory); `ratio_to_raw_concurrent` compares against it.
- `cpu_topology`: hardware threads per core, which bounds how W processes can scale.
A measurement, never a test: nothing is asserted. The helpers here are shared by the other
Ray benchmarks of bench/.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from typing import Any

import numpy as np
import ray
import torch

from distributed_o2o.algorithms.base import ActingSpec
from distributed_o2o.algorithms.policies import build_policy
from distributed_o2o.envs import env_spaces, make_vector_env
from distributed_o2o.runtime.ray_runtime import CHUNK_TRANSITIONS, COLLECTS_PER_WORKER, RolloutActor, actor_class
from distributed_o2o.runtime.replay import ReplayService


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def machine(device: str = "cpu") -> dict[str, Any]:
    """Where and when a figure was taken."""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "cpu": cpu, "cpu_count": os.cpu_count(),
            "load_avg_1min": round(os.getloadavg()[0], 2),  # other work on the machine skews every figure
            "device": device, "gpu": torch.cuda.get_device_name(0) if device == "cuda" and torch.cuda.is_available() else None,
            "torch": torch.__version__, "ray": ray.__version__}


def start_ray() -> None:
    if not ray.is_initialized():
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING")


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def policy_arch(env: str, hidden: list[int]) -> dict:
    spaces = env_spaces(env)
    return {"family": "tanh_gaussian", "obs_dim": spaces.obs_dim, "act_dim": spaces.act_dim, "hidden": hidden}


class RolloutPool:
    """Rollout actors kept busy as the driver keeps them: chunks chained into a replay shard,
    `COLLECTS_PER_WORKER` queued per actor."""

    def __init__(self, env: str, workers: int, envs_per_worker: int, hidden: list[int], chunk: int = CHUNK_TRANSITIONS):
        arch = policy_arch(env, hidden)
        self.actors = [actor_class(RolloutActor).options(num_cpus=0).remote(env, envs_per_worker, 0, arch, None, i)
                       for i in range(workers)]
        self.replay = ray.remote(ReplayService).options(num_cpus=0).remote(arch["obs_dim"], arch["act_dim"], 1_000_000)
        self.steps = max(1, chunk // envs_per_worker)
        self.pending: dict[ray.ObjectRef, int] = {}
        weights = ray.put(build_policy(arch).state_dict())
        ray.get([a.set_weights.remote(0, weights, ActingSpec()) for a in self.actors])  # a stochastic policy acts

    def _submit(self, i: int) -> None:
        self.pending[self.replay.add_fragment.remote(self.actors[i].collect.remote(self.steps))] = i

    def fill(self) -> None:
        for i in range(len(self.actors)):
            for _ in range(COLLECTS_PER_WORKER):
                self._submit(i)

    def step(self) -> int:
        """Wait for one chunk to be stored, queue the next on its actor; transitions stored."""
        [ready], _ = ray.wait(list(self.pending), num_returns=1)
        return self.stored(ready)

    def stored(self, ready: ray.ObjectRef) -> int:
        """A chunk is in: queue the next on its actor; transitions stored."""
        receipt = ray.get(ready)
        self._submit(self.pending.pop(ready))
        return receipt.transitions

    def run(self, seconds: float) -> float:
        """Env steps/s over `seconds` (after the queues are full and one chunk per actor is in)."""
        self.fill()
        for _ in range(len(self.actors)):
            self.step()
        start, steps = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            steps += self.step()
        return steps / (time.perf_counter() - start)

    def close(self) -> None:
        ray.get(list(self.pending))  # let the queued chunks finish rather than fail noisily
        for handle in [*self.actors, self.replay]:
            ray.kill(handle)


@ray.remote(num_cpus=0)
def raw_rate(env: str, envs_per_worker: int, seconds: float, start_at: float) -> float:
    """The envs alone: uniform random actions, no policy, no calls; timed from wall-clock time
    `start_at`, so loops started side by side (each in a worker process that may take seconds
    to start) are timed over the same window."""
    envs = make_vector_env(env, envs_per_worker)
    envs.reset(seed=0)
    rng = np.random.default_rng(0)
    shape = (envs_per_worker, envs.single_action_space.shape[0])
    time.sleep(max(0.0, start_at - time.time()))
    start, steps = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        envs.step(rng.uniform(-1.0, 1.0, size=shape).astype(np.float32))
        steps += envs_per_worker
    return steps / (time.perf_counter() - start)


def cpu_topology() -> dict[str, Any]:
    """Logical CPUs, and how many of them share a physical core (hyperthreads)."""
    siblings = set()
    for cpu in range(os.cpu_count() or 1):
        try:
            with open(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list") as f:
                siblings.add(f.read().strip())
        except OSError:
            return {"logical_cpus": os.cpu_count(), "physical_cores": None}
    return {"logical_cpus": os.cpu_count(), "physical_cores": len(siblings)}


def side_by_side_raw(env: str, envs_per_worker: int, seconds: float, loops: int) -> float:
    """Env steps/s of `loops` raw loops timed over the same window, in total."""
    start_at = time.time() + 5.0 + 0.5 * loops  # after every worker process has started
    return sum(ray.get([raw_rate.remote(env, envs_per_worker, seconds, start_at) for _ in range(loops)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="Hopper-v5")
    parser.add_argument("--envs-per-worker", type=int, default=16)
    parser.add_argument("--workers", default="1,2,4,8,14", help="worker counts to measure, comma-separated")
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per measurement")
    parser.add_argument("--hidden", default="256,256", help="policy hidden sizes")
    parser.add_argument("--chunk", type=int, default=CHUNK_TRANSITIONS, help="transitions per chunk (the runtime's by default)")
    parser.add_argument("--device", default="cpu", help="recorded only: rollout inference runs on the CPU")
    args = parser.parse_args()
    hidden, counts = ints(args.hidden), ints(args.workers)
    start_ray()
    raw = side_by_side_raw(args.env, args.envs_per_worker, args.seconds, 1)
    log(f"raw: {raw:.0f} env steps/s")
    results, one_actor = {}, None
    for workers in counts:
        pool = RolloutPool(args.env, workers, args.envs_per_worker, hidden, args.chunk)
        rate = pool.run(args.seconds)
        pool.close()
        one_actor = one_actor or (rate if workers == 1 else None)
        concurrent = side_by_side_raw(args.env, args.envs_per_worker, args.seconds, workers)
        results[str(workers)] = {"steps_per_s": round(rate), "per_worker": round(rate / workers),
                                 "ratio_to_raw": round(rate / (workers * raw), 3),
                                 "of_linear": None if one_actor is None else round(rate / (workers * one_actor), 3),
                                 "raw_concurrent_steps_per_s": round(concurrent),
                                 "ratio_to_raw_concurrent": round(rate / concurrent, 3)}
        log(f"{workers} workers: {rate:.0f} env steps/s ({rate / (workers * raw):.2f} of raw per worker; "
            f"{concurrent:.0f} raw side by side, {rate / concurrent:.2f} of it)")
    print(json.dumps({**machine(args.device), "cpu_topology": cpu_topology(), "env": args.env,
                      "envs_per_worker": args.envs_per_worker, "hidden": hidden,
                      "chunk_transitions": args.chunk, "seconds": args.seconds, "raw_steps_per_s": round(raw),
                      "workers": results}, indent=2))


if __name__ == "__main__":
    main()
