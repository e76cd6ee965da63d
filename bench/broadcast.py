"""Parameter broadcast latency: from the learner's publish to the last rollout actor acting
with the new version.

    python bench/broadcast.py [--workers 1,2,4,8,14] [--repeats 20] [--hidden 256,256] [--device cpu]

For each actor count N: a `LearnerActor` (SAC, `--hidden`) and N `RolloutActor`s that collect
without pause (chunks chained into a replay shard, two queued per actor, as in a run). Each
repeat is the driver's publish path: `weights()` on the learner (one `ray.put`), then
`offer_weights` with that ref to every actor, which takes it on a thread of its own while its
chunk runs and acts with it from its next vector step. The latency is the time from the
publish call to the last actor's acknowledgement, plus at most one vector step. Prints one JSON object (p50, p95, max in ms per N); progress on stderr.
A measurement, never a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import ray

from distributed_o2o.config import finetune_config
from distributed_o2o.runtime.ray_runtime import LearnerActor
from rollout import RolloutPool, ints, log, machine, policy_arch, start_ray  # bench/ is on sys.path as a script


WARMUP = 2  # untimed publishes first (the actors' weight threads and object fetches warm up)


def measure(args, workers: int, hidden: list[int]) -> dict[str, float]:
    arch = policy_arch(args.env, hidden)
    config = finetune_config("sac", None, {"env": args.env, "hidden": hidden, "runtime": {"device": args.device}})
    learner = ray.remote(LearnerActor).options(num_cpus=0, num_gpus=1 if args.device == "cuda" else 0).remote(
        1, config, arch["obs_dim"], arch["act_dim"])
    pool = RolloutPool(args.env, workers, args.envs_per_worker, hidden)
    pool.fill()
    latencies = []
    for version in range(1, args.repeats + WARMUP + 1):
        start = time.perf_counter()
        _, weights = ray.get(learner.weights.remote())
        acks = {actor.offer_weights.remote(version, weights) for actor in pool.actors}
        while acks:  # the actors keep collecting while the new weights make their way in
            [ready], _ = ray.wait([*acks, *pool.pending], num_returns=1)
            if ready in acks:
                acks.remove(ready)
            else:
                pool.stored(ready)
        if version > WARMUP:
            latencies.append(time.perf_counter() - start)
        for _ in range(workers):  # a little collection between publishes
            pool.step()
    pool.close()
    ray.kill(learner)
    ms = np.array(latencies) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2),
            "max_ms": round(float(ms.max()), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="Hopper-v5")
    parser.add_argument("--envs-per-worker", type=int, default=16)
    parser.add_argument("--workers", default="1,2,4,8,14", help="actor counts to measure, comma-separated")
    parser.add_argument("--repeats", type=int, default=20, help="publishes per actor count")
    parser.add_argument("--hidden", default="256,256")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="the learner's device")
    args = parser.parse_args()
    hidden = ints(args.hidden)
    start_ray()
    results = {}
    for workers in ints(args.workers):
        results[str(workers)] = measure(args, workers, hidden)
        log(f"{workers} actors: {results[str(workers)]}")
    print(json.dumps({**machine(args.device), "env": args.env, "envs_per_worker": args.envs_per_worker, "hidden": hidden,
                      "repeats": args.repeats, "actors": results}, indent=2))


if __name__ == "__main__":
    main()
