"""Running a sweep's trials as Ray Tune trials, resumably.

A trial's state is its run directory alone: finished (a summary that reached `online_steps`),
resumable (a resume state: continued with `resume_finetune`), or new (anything there is from a
start that never saved, and is cleared). So running the same sweep again, after a kill at any
point, skips the finished trials, continues the interrupted ones and starts the rest, and no
trial's work is done twice beyond its last save.

A population method's seeds (of one env and grid point) run as one Tune trial, one population
run in their parent directory (its resume state there too); it is done when all its seeds are.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distributed_o2o.errors import UserError
from distributed_o2o.metrics_log import METRICS_FILE, read_metrics_file
from distributed_o2o.sweep.spec import Resources, Trial, trial_bundles

TRIAL_FILE = "trial.json"  # the trial's identity (env, method, seed, grid, dataset): `o2o report` groups by it


@dataclass
class TrialStatus:
    state: str  # done | resumable | new
    env_steps: int = 0


def trial_status(run_dir: Path, online_steps: int) -> TrialStatus:
    summary = run_dir / "summary.json"
    if summary.is_file():
        steps = json.loads(summary.read_text()).get("env_steps", 0)
        records = read_metrics_file(run_dir / METRICS_FILE)
        # Done: the budget reached, and the evaluations end where the summary does.
        if steps >= online_steps and records and records[-1]["env_steps"] == steps:
            return TrialStatus("done", steps)
    from distributed_o2o.runtime.resume_state import ResumeStore

    saves = ResumeStore(run_dir / "resume").saves()  # verified when the trial resumes
    if saves:
        return TrialStatus("resumable", int(saves[0].name.removeprefix("save-")))
    return TrialStatus("new")


def saved_config(run_dir: Path) -> dict[str, Any] | None:
    """The config a run directory holds (config.yaml, its runtime section nested), or None."""
    import yaml

    from distributed_o2o.config import nested_runtime

    config_file = run_dir / "config.yaml"
    return nested_runtime(yaml.safe_load(config_file.read_text())) if config_file.is_file() else None


@functools.cache
def _defaults(config_class: type) -> dict[str, Any]:
    """A config class's defaults, dumped once (compared against every saved run's config)."""
    return config_class().model_dump()


def config_differences(saved: dict[str, Any], config) -> list[str]:
    """The keys, runtime aside, where a saved config differs from `config`. A field added to the
    config since the run counts at its default; a policy from a stage cache counts by its entry's
    name (its content's key), not by where that cache was."""
    wanted, defaults = config.model_dump(), _defaults(type(config))

    def same(key: str) -> bool:
        old, new = saved.get(key, defaults.get(key)), wanted.get(key)
        if key == "policy" and old and new and Path(old).parent.name == Path(new).parent.name == "policies":
            return Path(old).name == Path(new).name
        return old == new

    return sorted(k for k in set(saved) | set(wanted) if k != "runtime" and not same(k))


def check_unchanged(trial: Trial) -> None:
    """A trial directory from an earlier sweep run must hold the same config (its runtime section aside)."""
    saved = saved_config(trial.run_dir)
    if saved is None:
        return
    changed = config_differences(saved, trial.config)
    if changed:
        raise UserError(f"trial {trial.id} already ran with another {', '.join(changed)} (in {trial.run_dir}): "
                        "a changed sweep needs a new --out, or remove that trial's directory")


def trial_units(trials: list[Trial]) -> list[list[Trial]]:
    """The trials as Tune runs them: a population's seeds together, any other trial alone."""
    units: dict[Path, list[Trial]] = {}
    for trial in trials:
        units.setdefault(trial.run_dir.parent if trial.population else trial.run_dir, []).append(trial)
    return list(units.values())


def run_trial(trial: dict[str, Any]) -> dict[str, Any]:
    """Finish one trial (`trial`: `trial_payload`); returns the run's summary."""
    from distributed_o2o.config import finetune_config
    from distributed_o2o.runtime.finetune import resume_finetune, run_finetune

    run_dir, mode = Path(trial["run_dir"]), trial["mode"]
    config = finetune_config(trial["config"]["algo"], None, trial["config"])
    if "seeds" in trial:
        return _run_population(trial, config)
    status = trial_status(run_dir, config.online_steps)
    if status.state == "done":
        return json.loads((run_dir / "summary.json").read_text())
    if status.state == "resumable":
        return resume_finetune(run_dir, mode, progress=False)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / TRIAL_FILE).write_text(json.dumps(trial["info"], indent=2))
    return run_finetune(config, run_dir, mode, progress=False)


def _run_population(trial: dict[str, Any], config) -> dict[str, Any]:
    from distributed_o2o.runtime.finetune import resume_finetune, run_finetune

    run_dir, seeds = Path(trial["run_dir"]), trial["seeds"]
    subs = [run_dir / f"seed_{seed}" for seed in seeds]
    if all(trial_status(sub, config.online_steps).state == "done" for sub in subs):
        return {"seeds": seeds, "runs": [json.loads((sub / "summary.json").read_text()) for sub in subs]}
    if trial_status(run_dir, config.online_steps).state == "resumable":
        return resume_finetune(run_dir, trial["mode"], progress=False)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    for sub, info in zip(subs, trial["info"], strict=True):
        sub.mkdir(parents=True)
        (sub / TRIAL_FILE).write_text(json.dumps(info, indent=2))
    return run_finetune(config, run_dir, trial["mode"], progress=False, seeds=seeds)


def trial_payload(unit: list[Trial], resources: Resources) -> dict[str, Any]:
    """What a Tune trial receives (`unit`: one of `trial_units`): plain data (Tune copies it
    into the trial's process)."""
    first = unit[0]
    payload = {"id": first.id, "run_dir": str(first.run_dir), "mode": resources.mode, "config": first.config.model_dump(),
               "info": first.info(), "bundles": trial_bundles(resources, first.config)}
    if first.population:
        seeds = [t.seed for t in unit]
        payload.update(id=f"{first.id.rsplit('/', 1)[0]} (seeds {','.join(map(str, seeds))})", run_dir=str(first.run_dir.parent),
                       seeds=seeds, info=[t.info() for t in unit])
    return payload


def _tune_trainable(params: dict[str, Any]) -> None:
    from ray import tune

    summary = run_trial(params["trial"])
    runs = summary.get("runs", [summary])  # a population's: their mean
    finals = [run.get("final") or {} for run in runs]
    returns, scores = [f.get("return_mean") for f in finals], [f.get("normalized_score") for f in finals]
    tune.report({"env_steps": runs[0]["env_steps"], "wall_time_s": runs[0]["wall_time_s"],
                 "final_return": None if None in returns else sum(returns) / len(returns),
                 "final_score": None if None in scores else sum(scores) / len(scores)})


def run_trials(trials: list[Trial], resources: Resources, storage: Path, say: Callable[[str], None]) -> list[str]:
    """Run `trials` as Tune trials on the connected Ray cluster (a population's seeds as one);
    returns one line per failed trial."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's console tables off (this module prints a line per trial)
    from ray import tune
    from ray.tune.execution.placement_groups import PlacementGroupFactory

    payloads = [trial_payload(unit, resources) for unit in trial_units(trials)]
    trainable = tune.with_resources(_tune_trainable, lambda params: PlacementGroupFactory(params["trial"]["bundles"]))
    done = [0]

    class Progress(tune.Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            done[0] += 1
            result = trial.last_result or {}
            score = result.get("final_score")
            shown = f"normalised {score:.1f}" if score is not None else f"return {result.get('final_return', float('nan')):.1f}"
            say(f"[{done[0]}/{len(payloads)}] {trial.config['trial']['id']}: {shown} at {result.get('env_steps')} env steps "
                f"({result.get('wall_time_s', 0):.0f} s)")

    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search(payloads)},
        tune_config=tune.TuneConfig(max_concurrent_trials=resources.max_concurrent or 0),
        run_config=tune.RunConfig(storage_path=str(storage), name="tune", verbose=0, callbacks=[Progress()],
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )
    logging.getLogger("ray.tune").setLevel(logging.ERROR)
    failed = []
    for result in tuner.fit():
        if result.error is not None:
            failed.append(f"{result.config['trial']['id']}: {_last_line(str(result.error))}")
    return failed


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no reason given"
