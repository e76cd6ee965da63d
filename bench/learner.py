"""Learner updates/s: this project's `Learner.update` against a plain eager PyTorch SAC.

    python bench/learner.py --device {cpu,cuda} [--updates 200] [--warmup 20] [--chunk 25]
        [--settings sac2,sac10,o2sac] [--threads N] [--set KEY=VALUE ...]

Prints one JSON object on stdout (progress goes to stderr). Per setting: `updates_per_s` of
`distributed_o2o.runtime.learner.Learner.update` (the runtime's eager path: numpy batches as
the replay returns them, target/α/λ updates, float metrics out), `baseline_updates_per_s` of
`baseline_sac.PlainSAC` on the same batches, same device and thread count, and `ratio` =
learner / baseline. On CUDA the runtime's default is the graphed path (`runtime/graphed.py`,
timed by `bench/graphed_learner.py`); this script times `Learner.update`.

The two are timed in alternating chunks of `--chunk` updates (one `Learner.update` call
each), so a load change on the machine hits both alike; `ratio_median_chunk` is the median of
the per-chunk ratios, which a burst of load on a few chunks does not move. A measurement,
never a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

from baseline_sac import PlainSAC  # bench/ is on sys.path when a benchmark runs as a script
from synthetic import ACT_DIM, OBS_DIM, log, random_transitions
from distributed_o2o.algorithms.policies import TanhGaussianPolicy
from distributed_o2o.config import finetune_config, merge_layers, parse_overrides
from distributed_o2o.runtime.learner import Learner
from distributed_o2o.runtime.replay import ReplayService

HIDDEN = 256

# name -> (algo, config overrides)
SETTINGS: dict[str, tuple[str, dict]] = {
    "sac2": ("sac", {"num_critics": 2, "num_min_critics": 2, "learning_starts": 0, "random_start_steps": 0}),
    "sac10": ("sac", {"num_critics": 10, "num_min_critics": 2, "learning_starts": 0, "random_start_steps": 0}),
    "o2sac": ("o2sac", {"reevaluate_steps": 1, "align_steps": 1}),  # its defaults: 2 critics, min over all
}


def build_learner(algo: str, overrides: dict, device: str, offline: dict[str, np.ndarray]) -> tuple[Learner, int]:
    """The learner ready for online updates, and an env step at which they are due."""
    fixed = {"runtime": {"device": device}, "hidden": [HIDDEN, HIDDEN], "batch_size": 256}
    config = finetune_config(algo, None, merge_layers(overrides, fixed))  # the baseline is built for these
    if algo != "o2sac":
        return Learner(config, OBS_DIM, ACT_DIM), config.learning_starts
    # O2SAC: one step of each offline stage (re-evaluation, alignment), then the hand-over with
    # every candidate scoring the same (the algorithm's own hook: no evaluator needed).
    learner = Learner(config, OBS_DIM, ACT_DIM, policy=TanhGaussianPolicy(OBS_DIM, ACT_DIM, config.hidden), offline=offline)
    for name, _ in learner.stage_plan():
        learner.run_stage(name, 1)
    learner.algorithm.handover(lambda policy: 0.0)
    return learner, config.learning_starts


def build_baseline(algo: str, learner: Learner, device: torch.device) -> PlainSAC:
    config = learner.algorithm.config
    return PlainSAC(OBS_DIM, ACT_DIM, device, num_critics=config.num_critics,
                    num_min=learner.algorithm.num_min_critics, layer_norm=config.critic_layer_norm, hidden=HIDDEN,
                    alpha_init=learner.algorithm.initial_alpha(), reference=algo == "o2sac")


def baseline_runner(baseline: PlainSAC, device: torch.device) -> Callable[[list[dict[str, np.ndarray]]], None]:
    """Runs the baseline on numpy batches, converting them to tensors as `Learner.update` does."""
    def run(batches: list[dict[str, np.ndarray]]) -> None:
        for b in batches:
            baseline.update(*(torch.as_tensor(b[k], dtype=torch.float32, device=device)
                              for k in ("observations", "actions", "rewards", "next_observations", "terminals")))
    return run


def timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def measure(name: str, device: str, updates: int, warmup: int, chunk: int, seed: int, extra: dict) -> dict:
    algo, overrides = SETTINGS[name]
    rng = np.random.default_rng(seed)
    offline = random_transitions(rng, 10_000)
    learner, env_step = build_learner(algo, {**overrides, **extra}, device, offline)
    torch_device = learner.device
    baseline = build_baseline(algo, learner, torch_device)
    replay = ReplayService(OBS_DIM, ACT_DIM, capacity=100_000, offline=offline, seed=seed)
    replay.add({**random_transitions(rng, 20_000), "policy_version": np.zeros(20_000, np.int32)})
    ratio = learner.offline_ratio(env_step)
    # Batches drawn as the eager learner draws them: the offline rows of its ratio, one gather.
    n_off = int(round(learner.batch_size * ratio))
    stacked = replay.sample_many(max(chunk, warmup), learner.batch_size - n_off, n_off)
    pool = [{k: v[i] for k, v in stacked.items()} for i in range(max(chunk, warmup))]
    run_baseline = baseline_runner(baseline, torch_device)

    def run_learner(batches: list[dict[str, np.ndarray]]) -> None:
        learner.update(batches, env_step)

    run_learner(pool[:warmup])
    run_baseline(pool[:warmup])
    pairs: list[tuple[float, float]] = []  # (learner s, baseline s) per chunk
    done = 0
    while done < updates:
        batches = pool[: min(chunk, updates - done)]
        runs = {"learner": lambda: run_learner(batches), "baseline": lambda: run_baseline(batches)}
        order = ("learner", "baseline") if len(pairs) % 2 == 0 else ("baseline", "learner")  # no side always first
        seconds = {side: timed(runs[side], torch_device) for side in order}
        pairs.append((seconds["learner"], seconds["baseline"]))
        done += len(batches)
        learner_s, baseline_s = (sum(column) for column in zip(*pairs))
        log(f"{name}: {done}/{updates} updates, learner {done / learner_s:.1f}/s, baseline {done / baseline_s:.1f}/s")
    return {"algo": algo, "num_critics": learner.algorithm.config.num_critics,
            "num_min_critics": learner.algorithm.num_min_critics, "offline_ratio": ratio, "updates": updates,
            "updates_per_s": round(updates / learner_s, 2), "baseline_updates_per_s": round(updates / baseline_s, 2),
            "ratio": round(baseline_s / learner_s, 3),
            # Robust to a load spike that hits one side of a few chunks (other processes on the cores).
            "ratio_median_chunk": round(float(np.median([b / a for a, b in pairs])), 3), "chunks": len(pairs)}


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--updates", type=int, default=200, help="timed updates per setting (each of learner and baseline)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed updates before timing")
    parser.add_argument("--chunk", type=int, default=25, help="batches per Learner.update call (and per timed chunk)")
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for every setting (e.g. critic_layer_norm=false)")
    args = parser.parse_args()
    names = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        parser.error(f"unknown settings {unknown}; known: {', '.join(SETTINGS)}")
    if args.updates < 1:
        parser.error("--updates must be at least 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible")
    if args.threads:
        torch.set_num_threads(args.threads)
    chunk, warmup = max(1, args.chunk), max(0, args.warmup)

    load_start = round(os.getloadavg()[0], 2)  # other processes on the cores skew every figure
    if args.device == "cpu" and load_start + torch.get_num_threads() > (os.cpu_count() or 1) + 1:
        log(f"warning: load average {load_start} on {os.cpu_count()} cores with {torch.get_num_threads()} torch threads: "
            "other processes compete for the cores and the figures will be noisy (rerun when idle, or use --threads 1)")
    extra = parse_overrides(args.set)
    results = {name: measure(name, args.device, args.updates, warmup, chunk, args.seed, extra) for name in names}
    print(json.dumps({
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": args.device,
        "device_name": device_name(args.device),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_avg_1min": {"start": load_start, "end": round(os.getloadavg()[0], 2)},
        "batch_size": 256, "hidden": [HIDDEN, HIDDEN], "obs_dim": OBS_DIM, "act_dim": ACT_DIM,
        "updates_per_call": chunk, "warmup": warmup, "overrides": extra,
        "settings": results,
    }, indent=2))


if __name__ == "__main__":
    main()
