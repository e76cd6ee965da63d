"""Updates/s of the graphed learner path against the eager learner and a plain eager SAC.

    python bench/graphed_learner.py --device cuda [--settings sac2,sac10,o2sac] [--updates 3000]
        [--variants baseline,eager,graph,graph_compile] [--steps-per-graph 16] [--population 5] [--out results.json]
        [--inductor KEY=VALUE ...]

Settings: the SAC family (sac2, sac10, o2sac), the TD3 family (td3: the TD3 core; o2td3: its
stage C) and the offline pretrainers as `o2o pretrain` runs them (bc, td3bc, iql, cql: D_off
alone, offline ratio 1). Per setting (Hopper sizes: obs 11, act 3, 2x256 MLPs, batch 256; CQL's
critic 3x256 as its config), in one process:
- `baseline`: `baseline_sac.PlainSAC` (no project code) on batches already on the device (SAC
  family only; elsewhere `eager`, the eager path as it was, is the baseline);
- `eager`: the algorithm's own `update` (what the eager learner runs; a pretrainer's `step`,
  what `o2o pretrain` runs on a CPU) on the same batches;
- `graph`: `GraphedUpdater.run` (device replay mirror, several updates per CUDA graph);
- `graph_compile`: the same after `torch.compile` of the losses, Polyak and optimiser steps;
- `graph_compile_tf32`: the same with TF32 matrix products (the config's default);
- `graph_compile_bf16`, `population_bf16`: those under bfloat16 autocast (`precision`), with
  their final metrics to set beside the TF32 ones: a candidate for speed, not a learner setting;
- `graph_autotune_tf32`, `population_autotune`: those compiled with Inductor's autotuned matrix
  products (`max_autotune_gemm`, the config's `graph_autotune`); `*_compile_s` of the first says
  what the autotuning cost;
- `stages`: the offline stages that have an update phase (O2SAC's A and B), eagerly
  (`stage.step`, the eager learner's path) and as `GraphedUpdater.run_phase` on D_off (compiled,
  TF32): `stage_<name>_eager` and `stage_<name>_graph` updates/s;
- `ops`: on CPU only, the aten operators dispatched per update of `GraphedUpdater.run` (its eager
  steps: what a graph captures before compilation fuses it; the total and the most frequent);
- `profile`: the kernels of the replays of the variant before it (`graph_compile*` or
  `population`; torch.profiler), a table each under `--profile-dir`: kernels per update and
  where the GPU time goes;
- `population`: a `Population` of `--population` K agents (seeds seed..seed+K-1) in one graphed
  learner, compiled, TF32 (as `graph_compile_tf32`, its K=1 counterpart): population updates/s and
  agent-updates/s (K times that), each agent sampling its own ring of the mirror;
- `population_eager`: the same population's eager `update` against its K agents' own `update`
  one after another on the same batches (agent-updates/s of both, and their ratio).
`--inductor` sets Inductor config values (e.g. `coordinate_descent_tuning=True`) for the whole process: a
candidate compiler setting, to set beside a run of the same command without it (the updater's own
`graphed.INDUCTOR_SETTINGS` still apply while it compiles).
Every variant starts from its own fresh algorithm (same seed). The graphed variants sample
from a 100k-transition mirror (and D_off at the algorithm's offline ratio). Prints one JSON
object; progress goes to stderr. A measurement, never a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import sys
import time
import traceback
from collections import Counter

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from baseline_sac import PlainSAC  # bench/ is on sys.path when a benchmark runs as a script
from synthetic import ACT_DIM, OBS_DIM, log, random_transitions
from distributed_o2o.algorithms.base import Batch, OfflineData
from distributed_o2o.algorithms.offline import PRETRAINERS
from distributed_o2o.algorithms.offline.bc import Pretrainer
from distributed_o2o.algorithms.policies import FAMILIES
from distributed_o2o.algorithms.population import Population, stack_batches
from distributed_o2o.algorithms.registry import algorithm_class
from distributed_o2o.algorithms.sac import SACCore
from distributed_o2o.algorithms.td3 import TD3
from distributed_o2o.config import PretrainConfig, finetune_config
from distributed_o2o.runtime.graphed import GraphedUpdater

HIDDEN, BATCH = 256, 256
ENV_STEP = 50_000  # past every warm-up and learning start
SETTINGS: dict[str, tuple[str, dict]] = {
    "sac2": ("sac", {"num_critics": 2, "num_min_critics": 2}),
    "sac10": ("sac", {"num_critics": 10, "num_min_critics": 2}),  # the RLPD/WSRL/PORL ensemble
    "o2sac": ("o2sac", {"reevaluate_steps": 1, "align_steps": 1}),  # 2 critics, λ, π_ref log-probs
    "td3": ("td3", {}),  # the TD3 core (O2TD3's learner without its penalty and λ), 2 critics
    "o2td3": ("o2td3", {"reevaluate_steps": 1, "align_steps": 1}),  # stage C: λ, π_ref, policy delay 2
    "bc": ("pretrain", {"algo": "bc"}),
    "td3bc": ("pretrain", {"algo": "td3bc"}),
    "iql": ("pretrain", {"algo": "iql"}),
    "cql": ("pretrain", {"algo": "cql"}),
}


def build(name: str, device: torch.device, offline: dict[str, np.ndarray], seed: int):
    """The algorithm as the learner (or `o2o pretrain`) builds it; O2SAC and O2TD3 past their
    offline stages and hand-over."""
    algo_name, overrides = SETTINGS[name]
    torch.manual_seed(seed)
    if algo_name == "pretrain":
        config = PretrainConfig(**overrides, hidden=[HIDDEN, HIDDEN], batch_size=BATCH)
        return PRETRAINERS[config.algo](config, OBS_DIM, ACT_DIM, device)
    cls = TD3 if algo_name == "td3" else algorithm_class(algo_name)
    fields = {**overrides, "hidden": [HIDDEN, HIDDEN], "batch_size": BATCH, "learning_starts": 0}
    if issubclass(cls, SACCore):
        fields["random_start_steps"] = 0
    config = finetune_config("o2td3" if cls is TD3 else algo_name, None, fields)  # the TD3 core reads TD3Config's fields
    algo = cls(config, OBS_DIM, ACT_DIM, device, policy=FAMILIES[cls.policy_family](OBS_DIM, ACT_DIM, config.hidden).to(device))
    algo.set_offline_data(OfflineData(offline, device))
    for stage in algo.offline_stages():
        stage.step()
    algo.handover(lambda policy: 0.0)
    return algo


def offline_ratio(algo) -> float:
    """A pretrainer samples D_off alone."""
    return 1.0 if isinstance(algo, Pretrainer) else algo.offline_ratio(ENV_STEP)


def eager_update(algo):
    """The eager path's step on a batch: `update`, or a pretrainer's `step`."""
    return algo.step if isinstance(algo, Pretrainer) else (lambda batch: algo.update(batch, ENV_STEP))


def time_population_eager(name: str, args, device: torch.device, offline: dict[str, np.ndarray],
                          pool: list[Batch]) -> dict[str, float]:
    """Agent-updates/s of a population's batched eager update and of its agents' own updates in turn."""
    k = args.population
    agents = [build(name, device, offline, args.seed + i) for i in range(k)]
    population = Population([build(name, device, offline, args.seed + i) for i in range(k)])
    per_agent = [[pool[(j + i) % len(pool)] for i in range(k)] for j in range(len(pool))]
    batched = time_eager(lambda b: population.update(b, ENV_STEP), [stack_batches(b) for b in per_agent],
                         args.eager_updates, device)

    def in_turn(batches: list[Batch]) -> None:
        for agent, batch in zip(agents, batches):
            agent.update(batch, ENV_STEP)

    separate = time_eager(in_turn, per_agent, max(1, args.eager_updates // k), device)
    return {"population_eager_agent_updates_per_s": round(k * batched, 1),
            "separate_eager_agent_updates_per_s": round(k * separate, 1),
            "population_eager_speedup": round(batched / separate, 2)}


def synced(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def time_eager(step, pool: list[Batch], updates: int, device: torch.device) -> float:
    for batch in pool[:10]:
        step(batch)
    start = synced(device)
    for i in range(updates):
        step(pool[i % len(pool)])
    return updates / (synced(device) - start)


def precision(variant: str):
    """bfloat16 autocast for the `*_bf16` variants (matrix products in bf16; LayerNorm, losses and
    the optimiser steps in float32): a candidate measured here, not the learner's path."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if variant.endswith("_bf16") else contextlib.nullcontext()


def time_graphed(updater: GraphedUpdater, updates: int, ratio: float, device: torch.device) -> float:
    updater.run(2 * updater.steps_per_graph + 3, ENV_STEP, ratio)  # warm-up and capture
    start = synced(device)
    updater.run(updates, ENV_STEP, ratio)
    return updates / (synced(device) - start)


def profile(updater: GraphedUpdater, name: str, ratio: float, directory: str | None) -> float:
    """Kernels per update in graph replays; the per-kernel table goes to `directory`."""
    updates = 4 * updater.steps_per_graph
    updater.run(updates, ENV_STEP, ratio)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        updater.run(updates, ENV_STEP, ratio)
        torch.cuda.synchronize()
    events = prof.key_averages()
    kernels = sum(e.count for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    if directory:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, f"profile_{name}.txt"), "w") as f:
            f.write(f"{updates} updates, {kernels} kernel launches\n")
            f.write(events.table(sort_by="device_time_total", row_limit=60, max_name_column_width=90))
    return round(kernels / updates, 1)


class OpCounter(TorchDispatchMode):
    """Counts the aten operators dispatched inside it (backward and optimiser steps included)."""

    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def count_ops(updater: GraphedUpdater, ratio: float, updates: int = 12) -> dict:
    """Operators per update of `updater.run` on CPU (after a few updates that create the optimisers' state)."""
    updater.run(updates, ENV_STEP, ratio)
    with OpCounter() as counter:
        updater.run(updates, ENV_STEP, ratio)
    top = {name: round(n / updates, 1) for name, n in counter.ops.most_common(12)}
    return {"ops_per_update": round(sum(counter.ops.values()) / updates, 1), "ops_top": top}


def time_stages(name: str, args, device: torch.device, offline: dict[str, np.ndarray]) -> dict[str, float]:
    algo = build(name, device, offline, args.seed)
    updater = GraphedUpdater(build(name, device, offline, args.seed), OBS_DIM, ACT_DIM, 1000, device,
                             args.steps_per_graph, compile=True, tf32=True)
    updater.set_offline(offline)
    result = {}
    for stage in [] if isinstance(algo, Pretrainer) else algo.offline_stages():
        if stage.phase is None:
            continue
        result[f"stage_{stage.name}_eager"] = round(time_eager(lambda _: stage.step(), [None], args.eager_updates, device), 1)
        updater.run_phase(2 * updater.steps_per_graph + 3, stage.phase, 1.0)  # compile, warm-up, capture
        start = synced(device)
        updater.run_phase(args.updates, stage.phase, 1.0)
        result[f"stage_{stage.name}_graph"] = round(args.updates / (synced(device) - start), 1)
        log(f"{name}: stage {stage.name} {result[f'stage_{stage.name}_eager']} eager, {result[f'stage_{stage.name}_graph']} graphed")
    return result


def measure(name: str, args, device: torch.device) -> dict:
    rng = np.random.default_rng(args.seed)
    offline, online = random_transitions(rng, 20_000), random_transitions(rng, 100_000)
    first = build(name, device, offline, args.seed)
    ratio, sac_family = offline_ratio(first), isinstance(first, SACCore)
    num_offline_rows = int(round(BATCH * ratio))
    pool = []
    for _ in range(64):  # eager batches, mixed like the graphed ones
        rows_on, rows_off = rng.integers(0, 100_000, BATCH - num_offline_rows), rng.integers(0, 20_000, num_offline_rows)
        arrays = {k: np.concatenate([online[k][rows_on], offline[k][rows_off]]) for k in online}
        pool.append(Batch.from_numpy(arrays, device))
    result: dict = {"offline_ratio": ratio}

    def graphed(compile: bool, steps: int, tf32: bool = False, autotune: bool = False) -> GraphedUpdater:
        updater = GraphedUpdater(build(name, device, offline, args.seed), OBS_DIM, ACT_DIM, 200_000, device, steps,
                                 compile, tf32, autotune)
        updater.set_offline(offline)
        updater.add(online)
        return updater

    for variant in args.variants:
        log(f"{name}: {variant}")
        if variant.startswith(("graph_compile", "graph_autotune", "population")):
            # Compiled code is kept per function and reused by a later variant whose guards pass, even
            # one asking for other Inductor settings (autotuned products): each variant compiles its own.
            torch._dynamo.reset()
        try:
            if variant == "baseline" and not sac_family:
                continue  # no plain version of the others: `eager` (their path as it was) is the baseline
            if variant == "baseline":
                algo = build(name, device, offline, args.seed)
                plain = PlainSAC(OBS_DIM, ACT_DIM, device, num_critics=algo.config.num_critics, num_min=algo.num_min_critics,
                                 layer_norm=algo.config.critic_layer_norm, hidden=HIDDEN,
                                 alpha_init=algo.initial_alpha(), reference=name == "o2sac")
                result[variant] = time_eager(lambda b: plain.update(b.obs, b.actions, b.rewards, b.next_obs, b.terminals),
                                             pool, args.eager_updates, device)
            elif variant == "eager":
                algo = build(name, device, offline, args.seed)
                result[variant] = time_eager(eager_update(algo), pool, args.eager_updates, device)
            elif variant == "graph":
                result[variant] = time_graphed(graphed(False, args.steps_per_graph), args.updates, ratio, device)
            elif variant in ("graph_compile", "graph_compile_tf32", "graph_compile_bf16", "graph_autotune_tf32"):
                with precision(variant):
                    start = time.perf_counter()
                    updater = graphed(True, args.steps_per_graph, tf32=not variant.endswith("compile"),
                                      autotune="autotune" in variant)
                    updater.run(3, ENV_STEP, ratio)  # compiles
                    result[f"{variant}_compile_s"] = round(time.perf_counter() - start, 1)
                    result[variant] = time_graphed(updater, args.updates, ratio, device)
                    result[f"{variant}_metrics"] = updater.run(args.steps_per_graph, ENV_STEP, ratio)
                compiled, compiled_name = updater, f"{name}_{variant}"
            elif variant == "graph_losses_tf32":  # a fallback: optimisers left uncompiled
                if not any(key.endswith("_error") for key in result):
                    continue
                updater = graphed(False, args.steps_per_graph, tf32=True)
                updater.algorithm.compile_losses()
                result[variant] = time_graphed(updater, args.updates, ratio, device)
            elif variant in ("population", "population_bf16", "population_autotune"):
                k, key = args.population, variant.replace("population", "population_updates_per_s")
                population = Population([build(name, device, offline, args.seed + i) for i in range(k)])
                updater = GraphedUpdater(population, OBS_DIM, ACT_DIM, 200_000, device, args.steps_per_graph, True, True,
                                         autotune=variant.endswith("autotune"))
                updater.set_offline(offline)
                for i in range(k):
                    updater.add(online, agent=i)
                with precision(variant):
                    rate = time_graphed(updater, args.updates, ratio, device)
                compiled, compiled_name = updater, f"{name}_{variant}{k}"
                result.update({"population_size": k, key: round(rate, 1),
                               key.replace("_updates_", "_agent_updates_"): round(k * rate, 1)})
                log(f"{name}: population of {k}: {rate:.1f} updates/s, {k * rate:.1f} agent-updates/s")
            elif variant == "population_eager":
                result.update(time_population_eager(name, args, device, offline, pool))
                log(f"{name}: population_eager {result}")
            elif variant == "stages":
                result.update(time_stages(name, args, device, offline))
            elif variant == "ops":
                if device.type == "cpu":
                    result.update(count_ops(graphed(False, args.steps_per_graph), ratio))
            elif variant == "profile":
                result[f"kernels_per_update_{compiled_name}"] = profile(compiled, compiled_name, ratio, args.profile_dir)
        except Exception as error:  # one broken variant must not cost the others' figures
            result[f"{variant}_error"] = "".join(traceback.format_exception(error))[-1500:]
            log(result[f"{variant}_error"])
        if isinstance(result.get(variant), float):
            result[variant] = round(result[variant], 1)
            log(f"{name}: {variant} {result[variant]} updates/s")
    return result


def set_inductor_config(items: list[str]) -> dict[str, object]:
    """`KEY=VALUE` items (values as Python literals) set on torch._inductor.config; returns them."""
    import ast

    import torch._inductor.config as inductor_config

    values = {}
    for item in items:
        key, _, raw = item.partition("=")
        if not hasattr(inductor_config, key):
            raise SystemExit(f"--inductor {item}: torch._inductor.config has no '{key}'")
        values[key] = ast.literal_eval(raw)
        setattr(inductor_config, key, values[key])
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--variants", default="baseline,eager,graph,graph_compile")
    parser.add_argument("--updates", type=int, default=3000, help="timed updates of each graphed variant")
    parser.add_argument("--eager-updates", type=int, default=300, help="timed updates of baseline and eager")
    parser.add_argument("--steps-per-graph", type=int, default=16)
    parser.add_argument("--population", type=int, default=5, help="agents of the population variants")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile-dir", default=None)
    parser.add_argument("--out", default=None, help="also write the JSON here, after each setting")
    parser.add_argument("--inductor", action="append", default=[], metavar="KEY=VALUE",
                        help="an Inductor config value for every compiled variant of this process, e.g. "
                             "combo_kernels=True (a candidate setting, measured against a run without it)")
    args = parser.parse_args()
    inductor = set_inductor_config(args.inductor)
    # Each algorithm instance compiles its own copies of the same functions (Adam.step: one per
    # optimiser): room for all of this run's, where the default limit would fall back to eager.
    torch._dynamo.config.recompile_limit = 256
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    report = {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "batch_size": BATCH, "hidden": [HIDDEN, HIDDEN], "steps_per_graph": args.steps_per_graph,
        "population": args.population, "inductor": inductor, "settings": {},
    }
    for name in [s.strip() for s in args.settings.split(",") if s.strip()]:
        report["settings"][name] = measure(name, args, device)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
