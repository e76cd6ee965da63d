"""`o2o sweep`: plan the study, check it, make the missing datasets and policies, run the
trials that are not finished yet on Ray Tune."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from distributed_o2o.errors import UserError
from distributed_o2o.sweep.spec import SweepPlan, load_sweep, plan_sweep
from distributed_o2o.sweep.stages import needed_stages, run_stages
from distributed_o2o.sweep.reuse import copy_reused, reusable
from distributed_o2o.sweep.trials import check_unchanged, run_trials, trial_status, trial_units


def default_cache() -> Path:
    """Where made datasets and pretrained policies are kept across sweeps: $O2O_CACHE_DIR, else
    $XDG_CACHE_HOME/distributed_o2o, else ~/.cache/distributed_o2o."""
    if os.environ.get("O2O_CACHE_DIR"):
        return Path(os.environ["O2O_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "distributed_o2o"


def check_plan(plan: SweepPlan) -> None:
    """What can be refused before anything starts: missing policy sources, changed trials."""
    for job in plan.policies:
        if job.config is None and not (job.path / "metadata.json").is_file():
            raise UserError(f"policy '{job.name}' for {job.env}: '{job.path}' is not a checkpoint directory "
                            "(no metadata.json): fix its `source` in the sweep file")
    for trial in plan.trials:
        check_unchanged(trial)


def describe(plan: SweepPlan, reused: dict[Path, Path]) -> list[tuple[str, str]]:
    """(what, status) for every stage still to make and every trial, in the order they run;
    `reused`: the trials a finished run of another study stands for (`reusable`)."""
    statuses = {t.run_dir: trial_status(t.run_dir, t.config.online_steps) for t in plan.trials}
    datasets, policies = needed_stages([t for t in plan.trials if statuses[t.run_dir].state != "done" and t.run_dir not in reused])
    rows = [(f"dataset {j.name} [{j.env}]", "to make") for j in datasets]
    rows += [(f"policy {j.name} [{j.env}]" + ("" if j.seed is None else f" seed {j.seed}"), "to pretrain") for j in policies]
    for trial in plan.trials:
        status = statuses[trial.run_dir]
        shown = {"done": "done", "resumable": f"resume at env step {status.env_steps}", "new": "to run"}[status.state]
        rows.append((f"trial {trial.id}", f"reuse {reused[trial.run_dir]}" if trial.run_dir in reused else shown))
    return rows


def _plan_line(plan: SweepPlan, reused: dict[Path, Path]) -> str:
    """The dry run's last line: how many trials, how many to run and as how many runs."""
    todo = [t for t in plan.trials if _left(t, reused)]
    units = len(trial_units(todo))
    together = "" if units == len(todo) else f", as {units} runs (a population's seeds train in one)"
    taken = f"; {len(reused)} reused from --reuse" if reused else ""
    return f"{len(plan.trials)} trials, {len(todo)} to run or resume{together}{taken}"


def run_sweep(sweep_file: str | Path, out: str | Path, address: str | None = None, dry_run: bool = False,
              cache: str | Path | None = None, methods: list[str] | None = None, envs: list[str] | None = None,
              reuse: list[Path] | None = None, say: Callable[[str], None] = print,
              ray_init: dict[str, Any] | None = None) -> list[str]:
    """Run (or with `dry_run`, describe) the sweep, or only the trials of `methods` and `envs`,
    taking in the finished runs under `reuse` that a trial's config matches (sweep/reuse.py);
    returns one line per failed trial."""
    spec = load_sweep(sweep_file)
    out = Path(out)
    plan = plan_sweep(spec, sweep_file, out, cache or default_cache())
    every_env = list(dict.fromkeys(t.env for t in plan.trials))  # the sweep's and any a method names
    plan.trials = _only(_only(plan.trials, "method", methods, list(spec.methods)), "env", envs, every_env)
    check_plan(plan)
    reused = reusable(plan.trials, [Path(p) for p in reuse or ()])
    if dry_run:
        rows = describe(plan, reused)
        width = max(len(what) for what, _ in rows)
        for what, status in rows:
            say(f"{what:<{width}}  {status}")
        say(_plan_line(plan, reused))
        return []
    # A population's seeds run together: all of them while any is not done.
    pending = [t for unit in trial_units(plan.trials) for t in unit
               if any(_left(u, reused) for u in unit)]
    started = bool(pending) and _connect(address, ray_init or {})  # before anything is written: a bad address leaves nothing
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "sweep.yaml").write_text(yaml.safe_dump(spec.model_dump(), sort_keys=False))
        copy_reused(plan.trials, reused)
        say(f"{len(plan.trials) - len(pending)} of {len(plan.trials)} trials already done; running {len(pending)}")
        if not pending:
            return []
        run_stages(pending, say)
        return run_trials(pending, spec.resources, out.resolve(), say)
    finally:
        if started:
            import ray

            ray.shutdown()


def _left(trial, reused: dict[Path, Path]) -> bool:
    """Whether `trial` still has to run: not done in the study, and no finished run stands for it."""
    return trial.run_dir not in reused and trial_status(trial.run_dir, trial.config.online_steps).state != "done"


def _only(trials: list, field: str, names: list[str] | None, known: list[str]) -> list:
    """The trials whose `field` is one of `names` (all where None); a name the file lacks is an error."""
    if not names:
        return trials
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise UserError(f"--{field}s names {', '.join(unknown)}, not in the sweep file (it has: {', '.join(known)})")
    return [t for t in trials if getattr(t, field) in names]


def _connect(address: str | None, ray_init: dict[str, Any]) -> bool:
    """Join the cluster at `address` (or start a local instance); True when this started it."""
    import ray

    from distributed_o2o.runtime.ray_cluster import init_ray

    if ray.is_initialized():
        return False
    init_ray(address, include_dashboard=False, **ray_init)
    return True
