"""`o2o finetune`: checks the inputs, builds the components for the chosen mode, runs the driver.

Both modes build the same components with the same factories (components.py): `local` as
plain objects in this process, `ray` as actors (ray_runtime.py).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, get_args

import torch

from distributed_o2o.algorithms.registry import algorithm_class
from distributed_o2o.config import FinetuneConfig, RunMode, finetune_config, merge_layers, nested_runtime
from distributed_o2o.durable import check_writable
from distributed_o2o.errors import UserError
from distributed_o2o.runtime.components import Components, RunInputs, build_local_components, load_inputs
from distributed_o2o.runtime.cpu_check import cpu_note
from distributed_o2o.runtime.driver import Driver
from distributed_o2o.runtime.graphed import check_learner_backend
from distributed_o2o.runtime.population_run import (POPULATION_FILE, check_population, check_population_memory,
                                                    read_population_file, write_population_file)
from distributed_o2o.runtime.resume_state import ResumeStore
from distributed_o2o.runtime.run_lock import run_lock
from distributed_o2o.runtime.run_dir import RunDir
from distributed_o2o.runtime.timings import Timings


MODES = get_args(RunMode)
# What `--resume` may change: how the run executes, and its env-step budget.
RESUMABLE_CHANGES = frozenset({"runtime", "online_steps"})


@contextmanager
def _components(config: FinetuneConfig, mode: str, run_dir: RunDir, address: str | None, timings: Timings,
                announce: bool = False, seeds: list[int] | None = None) -> Iterator[Components]:
    if mode not in MODES:
        raise UserError(f"unknown mode '{mode}': use one of {', '.join(MODES)}")
    if mode == "local" and address is not None:
        raise UserError("--address joins a Ray cluster: it needs --mode ray")
    with timings.part("inputs"):
        inputs = load_inputs(config)  # every input is checked before any note or work
    if seeds is not None:
        check_population_memory(config, inputs, len(seeds), learner_here=address is None)
    on_this_cpu = address is None and config.runtime.device != "cuda" and not torch.cuda.is_available()
    if on_this_cpu:  # the learner will run here, without a GPU
        check_learner_backend(config, algorithm_class(config.algo), on_gpu=False)
        if announce:
            _note_cpu_duration(config, inputs)
    if mode == "local":
        yield build_local_components(config, inputs, seeds)
        return
    from distributed_o2o.runtime.ray_cluster import record_address
    from distributed_o2o.runtime.ray_runtime import ray_components

    with ray_components(config, inputs, run_dir.path, address, timings, seeds) as components:
        record_address(run_dir.path)
        yield components


def _note_cpu_duration(config: FinetuneConfig, inputs: RunInputs) -> None:
    """One line before a long run whose learner will be on this machine's CPU."""
    note = cpu_note(config, inputs.obs_dim, inputs.act_dim)
    if note:
        print(note, file=sys.stderr)


def run_finetune(config: FinetuneConfig, out_dir: str | Path, mode: str = "local", progress: bool = True,
                 address: str | None = None, seeds: list[int] | None = None, started: float | None = None) -> dict[str, Any]:
    """One run of `config`; with `seeds`, a population run: one agent per seed trained by one
    learner, agent k in `out_dir/seed_<seeds[k]>` as a run with `seed: seeds[k]` (population.py).
    `started`: where the summary's time breakdown starts (a `time.perf_counter()` value; the
    CLI passes the process's start; default: now)."""
    timings = _start_timings(started)
    if seeds is not None:
        check_population(config, seeds)
    check_writable(out_dir, "the run")
    run_dir = RunDir(out_dir)
    with run_lock(run_dir.path, _warn):
        earlier = run_dir.earlier_run_files()
        if earlier:
            raise UserError(f"'{out_dir}' already holds a run ({', '.join(earlier)}): continue it with --resume {out_dir}, "
                            "or pass another --out")
        if seeds is not None:
            write_population_file(run_dir.path, config, seeds)
        return _drive(config, run_dir, mode, progress, address, timings, resume=False, seeds=seeds)


def resume_finetune(run_path: str | Path, mode: str = "local", progress: bool = True, address: str | None = None,
                    changes: dict[str, Any] | None = None, started: float | None = None) -> dict[str, Any]:
    """Continue a run from its last resume save with its saved config. `changes` may set how it
    executes (its `runtime` section: workers, shards, device...) and raise `online_steps`
    (extending the run); any other field given must keep its saved value. A run that stopped
    before its first save starts again from its config, reusing its cached offline stages.
    A population run continues all its agents (its config: population.yaml's). `started`: as
    for `run_finetune` (the breakdown is this segment's)."""
    timings = _start_timings(started)
    check_writable(run_path, "the run")
    run_dir = RunDir(run_path)
    with run_lock(run_dir.path, _warn):
        population = read_population_file(run_dir.path)
        if population is None and not run_dir.config_file.exists():
            raise UserError(f"'{run_path}' is not a run directory (config.yaml is missing): pass the --out of an earlier "
                            "`o2o finetune`")
        seeds = None if population is None else population["seeds"]
        saved_config = nested_runtime(run_dir.read_config() if population is None else population["config"])
        source = run_dir.config_file if population is None else run_dir.path / POPULATION_FILE
        config = _resumed_config(source, saved_config, changes or {})
        if seeds is not None:  # its budget may have been extended
            write_population_file(run_dir.path, config, seeds)
        if ResumeStore(run_dir.resume_dir).saves():
            return _drive(config, run_dir, mode, progress, address, timings, resume=True, seeds=seeds)
        runs = [run_dir] if seeds is None else [RunDir(run_dir.path / f"seed_{seed}") for seed in seeds]
        results = [str((run.path / name).relative_to(run_dir.path)) for run in runs for name in run.earlier_run_files()
                   if name not in ("config.yaml", "resume", POPULATION_FILE)]
        if results:
            raise UserError(f"run '{run_path}' holds results ({', '.join(results)}) but no resume state (resume/ was "
                            "removed): it cannot be continued; start it again in another --out")
        _warn(f"run '{run_path}' stopped before its first resume save: starting it again (cached offline stages are reused)")
        return _drive(config, run_dir, mode, progress, address, timings, resume=False, seeds=seeds)


def _start_timings(started: float | None) -> Timings:
    """The run's timings, in "startup" from now; the seconds since `started` as "imports"."""
    timings = Timings(started, first="imports")
    timings.end()
    timings.begin("startup")
    return timings


def _resumed_config(source: Path, saved: dict[str, Any], changes: dict[str, Any]) -> FinetuneConfig:
    """The saved config (read from `source`) with `changes`, refused (one line naming the field)
    where they touch anything but `online_steps` and the runtime fields."""
    algo = changes.get("algo", saved["algo"])
    if algo != saved["algo"]:
        raise UserError(f"--resume continues the saved config: 'algo' cannot change (the run is {saved['algo']}, "
                        f"{algo} given); start a new run with another --out")
    before = finetune_config(algo, None, saved)
    config = finetune_config(algo, None, merge_layers(saved, changes))
    for name in type(config).model_fields:
        if name not in RESUMABLE_CHANGES and getattr(config, name) != getattr(before, name):
            raise UserError(f"--resume continues the saved config: '{name}' cannot change ({getattr(before, name)!r} in "
                            f"{source}, {getattr(config, name)!r} given); only --online-steps and the runtime section "
                            "(--num-rollout-workers, --set runtime.KEY=...) may, or start a new run with another --out")
    return config


def _drive(config: FinetuneConfig, run_dir: RunDir, mode: str, progress: bool, address: str | None, timings: Timings,
           resume: bool, seeds: list[int] | None = None) -> dict[str, Any]:
    with _components(config, mode, run_dir, address, timings, announce=not resume, seeds=seeds) as components:
        timings.end()  # of the start-up
        summary = Driver(config, run_dir, components, progress, timings).run(resume=resume)
        timings.begin("shutdown")
    timings.end()
    return _with_breakdown(summary, run_dir, timings)


def _with_breakdown(summary: dict[str, Any], run_dir: RunDir, timings: Timings) -> dict[str, Any]:
    """The summary with `time_breakdown_s`, written again now that the components are shut down:
    a run's summary.json; a population's own summary.json (its sub-runs' leave it out)."""
    summary["time_breakdown_s"] = timings.breakdown()
    written = summary if "runs" not in summary else {k: v for k, v in summary.items() if k != "runs"}
    run_dir.write_summary(written)
    return summary


def _warn(line: str) -> None:
    print(line, file=sys.stderr)
