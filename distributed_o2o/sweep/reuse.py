"""Finished runs of other studies taken into this one (`o2o sweep --reuse DIR`).

A trial not yet done whose config equals a finished run's (`config_differences`: the runtime
section aside, a cached policy by its cache entry) is not run again: the run's records
(config.yaml, metrics.jsonl, summary.json) are copied into the trial's directory with this
sweep's trial.json, which names the run it came from (`reused_from`). Checkpoints and resume
states are not copied. A population's seeds train together, so they are reused together or not
at all; where they all come from one population run, its own summary.json comes too (the report
marks the wall time as a population's).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from distributed_o2o.errors import UserError
from distributed_o2o.metrics_log import METRICS_FILE
from distributed_o2o.sweep.spec import Trial
from distributed_o2o.sweep.trials import TRIAL_FILE, config_differences, saved_config, trial_status, trial_units

RECORDS = ("config.yaml", METRICS_FILE, "summary.json")


def finished_runs(sources: list[Path]) -> list[tuple[Path, dict]]:
    """Every run directory under `sources` with a config and a summary, with its config."""
    runs = []
    for source in sources:
        if not source.is_dir():
            raise UserError(f"--reuse {source}: no such directory: name a study's --out or a folder holding run directories")
        for summary in sorted(source.rglob("summary.json")):
            config = saved_config(summary.parent)
            if config is not None:
                runs.append((summary.parent, config))
    return runs


def reusable(trials: list[Trial], sources: list[Path]) -> dict[Path, Path]:
    """For each trial not done that a finished run under `sources` can stand for: its run
    directory -> that run (the first found, in the order of `sources`). A population's seeds
    only all together."""
    if not sources:
        return {}
    runs = finished_runs(sources)
    found: dict[Path, Path] = {}
    for unit in trial_units(trials):
        if all(trial_status(t.run_dir, t.config.online_steps).state == "done" for t in unit):
            continue
        matches = {}
        for trial in unit:
            match = next((run for run, config in runs if run.resolve() != trial.run_dir.resolve()
                          and not config_differences(config, trial.config)
                          and trial_status(run, trial.config.online_steps).state == "done"), None)
            if match is not None:
                matches[trial.run_dir] = match
        if len(matches) == len(unit):
            found.update(matches)
    return found


def copy_reused(trials: list[Trial], found: dict[Path, Path]) -> None:
    """Write each found run's records into its trial's directory (anything there before, a
    start that never finished, is replaced)."""
    for unit in trial_units([t for t in trials if t.run_dir in found]):
        for trial in unit:
            source = found[trial.run_dir]
            if trial.run_dir.exists():
                shutil.rmtree(trial.run_dir)
            trial.run_dir.mkdir(parents=True)
            for name in RECORDS:
                shutil.copy2(source / name, trial.run_dir / name)
            info = {**trial.info(), "reused_from": str(source.resolve())}
            (trial.run_dir / TRIAL_FILE).write_text(json.dumps(info, indent=2))
        parents = {found[t.run_dir].parent for t in unit}
        population = next(iter(parents)) / "summary.json"
        if unit[0].population and len(parents) == 1 and population.is_file():
            seeds = json.loads(population.read_text()).get("seeds")
            if sorted(seeds or []) == sorted(t.seed for t in unit):
                shutil.copy2(population, unit[0].run_dir.parent / "summary.json")
