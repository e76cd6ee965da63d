"""`o2o sweep --reuse`: finished runs of another study stand for trials with the same config."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from distributed_o2o.cli.main import main
from distributed_o2o.report.runs import read_runs
from distributed_o2o.sweep.reuse import copy_reused, reusable
from distributed_o2o.sweep.spec import load_sweep, plan_sweep
from test_sweep import TINY, write_sweep


def _plan(file: Path, out: Path, cache: Path):
    return plan_sweep(load_sweep(file), file, out, cache)


def _finish(trial, scores=(1.0, 2.0)) -> None:
    """Records as a finished run writes them: its config, evaluations up to the budget, a summary."""
    steps = trial.config.online_steps
    trial.run_dir.mkdir(parents=True)
    (trial.run_dir / "config.yaml").write_text(yaml.safe_dump(trial.config.model_dump()))
    rows = [{"env_steps": step, "return_mean": score} for step, score in zip((0, steps), scores)]
    (trial.run_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (trial.run_dir / "summary.json").write_text(json.dumps({"env_steps": steps, "wall_time_s": 5.0}))
    (trial.run_dir / "trial.json").write_text(json.dumps(trial.info()))


def _study_with_finished_sac(tmp_path: Path) -> tuple[Path, Path, Path]:
    """TINY's sweep file, the stage cache, and a study in which its SAC trials have finished."""
    cache, old = tmp_path / "cache", tmp_path / "old"
    file = write_sweep(tmp_path / "a.yaml", TINY)
    for trial in _plan(file, old, cache).trials:
        if trial.method == "sac":
            _finish(trial)
    return file, cache, old


def test_a_trial_whose_config_a_finished_run_has_is_copied_in_under_its_own_name(tmp_path, capsys):
    _, cache, old = _study_with_finished_sac(tmp_path)
    # The same SAC under another name, and a SAC with another UTD: only the first is reusable.
    renamed = {**TINY, "methods": {"scratch": TINY["methods"]["sac"],
                                   "faster": {**TINY["methods"]["sac"], "set": {**TINY["methods"]["sac"]["set"], "utd": 2}}}}
    second = write_sweep(tmp_path / "b.yaml", renamed)
    new = tmp_path / "new"
    plan = _plan(second, new, cache)
    found = reusable(plan.trials, [old])
    assert sorted(t.id for t in plan.trials if t.run_dir in found) == ["Pendulum-v1/scratch/seed_0", "Pendulum-v1/scratch/seed_1"]

    assert main(["sweep", str(second), "--out", str(new), "--cache", str(cache), "--dry-run", "--reuse", str(old)]) == 0
    out = capsys.readouterr().out
    assert f"reuse {old / 'runs/Pendulum-v1/sac/seed_0'}" in out
    assert out.rstrip().endswith("4 trials, 2 to run or resume; 2 reused from --reuse")

    copy_reused(plan.trials, found)
    run = new / "runs/Pendulum-v1/scratch/seed_1"
    trial = json.loads((run / "trial.json").read_text())
    assert trial["method"] == "scratch" and trial["reused_from"] == str((old / "runs/Pendulum-v1/sac/seed_1").resolve())
    assert (run / "metrics.jsonl").read_text() == (old / "runs/Pendulum-v1/sac/seed_1/metrics.jsonl").read_text()
    assert {(r.method, r.seed) for r in read_runs([new])} == {("scratch", 0), ("scratch", 1)}
    assert reusable(_plan(second, new, cache).trials, [old]) == {}  # now done here: nothing left to take


def test_a_sweep_whose_trials_are_all_reused_finishes_without_starting_ray(tmp_path, capsys):
    import ray

    file, cache, old = _study_with_finished_sac(tmp_path)
    new = tmp_path / "new"
    assert main(["sweep", str(file), "--out", str(new), "--cache", str(cache), "--methods", "sac", "--reuse", str(old)]) == 0
    assert "2 of 2 trials already done; running 0" in capsys.readouterr().out
    assert not ray.is_initialized() and (new / "sweep.yaml").is_file()
    assert json.loads((new / "runs/Pendulum-v1/sac/seed_0/trial.json").read_text())["reused_from"]


def test_a_population_is_reused_only_with_all_its_seeds(tmp_path):
    cache, old = tmp_path / "cache", tmp_path / "old"
    spec = {**TINY, "methods": {"sac": {**TINY["methods"]["sac"], "population": True}}}
    file = write_sweep(tmp_path / "p.yaml", spec)
    trials = _plan(file, old, cache).trials
    _finish(trials[0])
    new = tmp_path / "new"
    assert reusable(_plan(file, new, cache).trials, [old]) == {}  # seed 1 missing: the population runs whole
    _finish(trials[1])
    (trials[0].run_dir.parent / "summary.json").write_text(json.dumps({"seeds": [0, 1]}))
    plan = _plan(file, new, cache)
    found = reusable(plan.trials, [old])
    assert len(found) == 2
    copy_reused(plan.trials, found)
    assert json.loads((new / "runs/Pendulum-v1/sac/summary.json").read_text())["seeds"] == [0, 1]
    assert {r.population for r in read_runs([new])} == {2}  # the report still sees a population of two


def test_a_missing_reuse_folder_is_one_line(tmp_path, capsys):
    file = write_sweep(tmp_path / "a.yaml", TINY)
    args = ["sweep", str(file), "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache"), "--dry-run"]
    assert main(args + ["--reuse", str(tmp_path / "nope")]) == 2
    assert "--reuse" in capsys.readouterr().err
