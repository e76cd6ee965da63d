"""`o2o sweep`: the sweep file's schema and expansion, bad input, and a tiny study run through
Ray Tune, killed half-way and run again."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from distributed_o2o.cli.main import main
from distributed_o2o.config import PretrainConfig
from distributed_o2o.errors import UserError
from distributed_o2o.sweep.spec import load_sweep, plan_sweep, policy_cache_key, trial_bundles
from distributed_o2o.sweep.trials import check_unchanged

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "envs": ["Pendulum-v1"],
    "seeds": [0, 1],
    "online_steps": 400,
    "datasets": {"rand": {"random": 600}},
    "policies": {"bc": {"dataset": "rand", "steps": 50, "set": {"hidden": [16, 16]}}},
    "methods": {
        "porl": {"algo": "porl", "policy": "bc", "set": {"presample_steps": 200, "presample_utd": 1, "utd": 1, "num_critics": 2}},
        "sac": {"algo": "sac", "set": {"random_start_steps": 200, "learning_starts": 200}},
    },
    "set": {"hidden": [16, 16], "eval_every": 200, "eval_episodes": 1, "batch_size": 32, "runtime": {"device": "cpu"}},
    "resources": {"mode": "local", "cpus_per_trial": 1, "max_concurrent": 1},
}


def write_sweep(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec))
    return path


def test_plan_expands_env_method_grid_seed(tmp_path):
    spec = {**TINY, "methods": {**TINY["methods"], "sac": {**TINY["methods"]["sac"], "grid": {"utd": [1, 2]}}}}
    file = write_sweep(tmp_path / "s.yaml", spec)
    plan = plan_sweep(load_sweep(file), file, tmp_path / "out", tmp_path / "cache")
    ids = [t.id for t in plan.trials]
    assert ids == ["Pendulum-v1/porl/seed_0", "Pendulum-v1/porl/seed_1", "Pendulum-v1/sac@utd=1/seed_0",
                   "Pendulum-v1/sac@utd=1/seed_1", "Pendulum-v1/sac@utd=2/seed_0", "Pendulum-v1/sac@utd=2/seed_1"]
    porl, sac2 = plan.trials[1], plan.trials[5]
    assert (porl.config.seed, porl.config.online_steps, porl.config.presample_steps, porl.config.hidden) == (1, 400, 200, [16, 16])
    assert porl.config.policy == str(plan.policies[0].path) and sac2.config.utd == 2 and sac2.config.policy is None
    assert porl.info()["dataset"] == "rand"  # a policy-only run is grouped by its policy's dataset
    assert len(plan.datasets) == 1 and len(plan.policies) == 1  # one BC for both seeds (not per_seed)


def test_stage_cache_paths_follow_settings_not_the_study(tmp_path):
    file = write_sweep(tmp_path / "s.yaml", TINY)
    first = plan_sweep(load_sweep(file), file, tmp_path / "a", tmp_path / "cache")
    second = plan_sweep(load_sweep(file), file, tmp_path / "b", tmp_path / "cache")
    assert first.policies[0].path == second.policies[0].path  # another study reuses the same BC policy
    changed = {**TINY, "policies": {"bc": {**TINY["policies"]["bc"], "steps": 51}}}
    third = plan_sweep(load_sweep(write_sweep(tmp_path / "t.yaml", changed)), file, tmp_path / "a", tmp_path / "cache")
    assert third.policies[0].path != first.policies[0].path and third.datasets[0].path == first.datasets[0].path
    per_seed = {**TINY, "policies": {"bc": {**TINY["policies"]["bc"], "per_seed": True}}}
    fourth = plan_sweep(load_sweep(write_sweep(tmp_path / "u.yaml", per_seed)), file, tmp_path / "a", tmp_path / "cache")
    assert [p.seed for p in fourth.policies] == [0, 1]
    threads = {**TINY, "policies": {"bc": {**TINY["policies"]["bc"], "set": {"hidden": [16, 16], "threads": 1}}}}
    fifth = plan_sweep(load_sweep(write_sweep(tmp_path / "v.yaml", threads)), file, tmp_path / "a", tmp_path / "cache")
    assert fifth.policies[0].path == first.policies[0].path  # how many threads trained it is not what it is


def test_a_field_added_to_the_pretrain_config_at_its_default_keeps_cached_policies_found():
    class WithNewField(PretrainConfig):
        some_later_option: int = 7

    config = PretrainConfig(algo="bc", env="Pendulum-v1", steps=300, hidden=[16, 16])
    later = WithNewField(**config.model_dump())
    assert policy_cache_key(later, "d.hdf5") == policy_cache_key(config, "d.hdf5")
    assert policy_cache_key(WithNewField(**config.model_dump(), some_later_option=8), "d.hdf5") != policy_cache_key(config, "d.hdf5")
    graphed = config.model_copy(update={"learner_backend": "graph", "graph_tf32": False, "device": "cuda"})
    assert policy_cache_key(graphed, "d.hdf5") == policy_cache_key(config, "d.hdf5")  # how it ran, not what it is
    assert policy_cache_key(config.model_copy(update={"seed": 1}), "d.hdf5") != policy_cache_key(config, "d.hdf5")


def test_a_trial_saved_before_a_config_field_existed_is_unchanged_at_that_fields_default(tmp_path):
    import yaml

    file = write_sweep(tmp_path / "s.yaml", TINY)
    trial = plan_sweep(load_sweep(file), file, tmp_path / "out", tmp_path / "cache").trials[0]
    saved = trial.config.model_dump()
    del saved["actor_warmup_steps"]  # as a run made before the field was added wrote it
    trial.run_dir.mkdir(parents=True)
    (trial.run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    check_unchanged(trial)
    (trial.run_dir / "config.yaml").write_text(yaml.safe_dump({**saved, "actor_warmup_steps": 10}))
    with pytest.raises(UserError, match="already ran with another actor_warmup_steps"):
        check_unchanged(trial)


def test_ray_mode_trials_fit_their_placement_group(tmp_path):
    spec = {**TINY, "set": {**TINY["set"], "runtime": {"num_rollout_workers": 3}},
            "resources": {"mode": "ray", "gpus_per_trial": 0.5, "cpus_per_trial": 5, "max_concurrent": 4}}
    file = write_sweep(tmp_path / "s.yaml", spec)
    plan = plan_sweep(load_sweep(file), file, tmp_path / "out", tmp_path / "cache")
    config = plan.trials[0].config
    bundles = trial_bundles(plan.spec.resources, config)
    assert len(bundles) == 2 + 3 and sum(b["CPU"] for b in bundles) == pytest.approx(5.0)
    assert bundles[1]["GPU"] == 0.5 and config.runtime.learner_gpus == 0.5 and config.runtime.actor_cpus == pytest.approx(1.0)


@pytest.mark.parametrize("change, match", [
    ({"seedz": 3}, "unknown config key 'seedz'"),
    ({"methods": {"x": {"algo": "nope"}}}, "unknown algorithm 'nope'"),
    ({"methods": {"x": {"algo": "rlpd", "dataset": "missing"}}}, "names dataset 'missing'"),
    ({"methods": {"x": {"algo": "porl", "policy": "missing"}}}, "names policy 'missing'"),
    ({"methods": {"x": {"algo": "sac", "set": {"utd_ratio": 2}}}}, "method 'x'.*unknown config key 'utd_ratio'"),
    ({"set": {"num_rollout_workers": 2}}, "`num_rollout_workers` is now `runtime.num_rollout_workers`"),
    ({"datasets": {"rand": {"random": 10, "quality": "medium"}}}, "exactly one of"),
    ({"methods": {"x": {"algo": "o2td3", "population": True}}}, "method 'x' \\(population: true\\): 'o2td3' cannot train"),
    ({"methods": {"x": {"algo": "porl", "policy": "bc", "population": True}},
      "policies": {"bc": {"dataset": "rand", "per_seed": True}}}, "method 'x' .*pretrained per seed"),
])
def test_bad_sweep_file_is_one_line_and_starts_nothing(tmp_path, capsys, change, match):
    file = write_sweep(tmp_path / "s.yaml", {**TINY, **change})
    assert main(["sweep", str(file), "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error:")
    with pytest.raises(UserError, match=match):
        plan_sweep(load_sweep(file), file, tmp_path / "out", tmp_path / "cache")
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_unreachable_address_is_one_line(tmp_path, capsys):
    file = write_sweep(tmp_path / "s.yaml", TINY)
    assert main(["sweep", str(file), "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache"),
                 "--address", "127.0.0.1:1"]) == 2
    assert "no Ray cluster answers at '127.0.0.1:1'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def _sweep_command(file: Path, out: Path, cache: Path) -> list[str]:
    return [sys.executable, "-m", "distributed_o2o.cli.main", "sweep", str(file), "--out", str(out), "--cache", str(cache)]


def _mtime(path: Path) -> int:
    return path.stat().st_mtime_ns


@pytest.mark.slow
def test_killed_sweep_finishes_the_remaining_trials_only(tmp_path):
    """A sweep killed (SIGKILL, whole process group) after its first trial finished: the same
    command again leaves the finished trial alone and runs the rest; a report then reads all."""
    file = write_sweep(tmp_path / "s.yaml", TINY)
    out, cache = tmp_path / "out", tmp_path / "cache"
    env = {**os.environ, "RAY_ADDRESS": ""}
    proc = subprocess.Popen(_sweep_command(file, out, cache), cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    runs = out / "runs" / "Pendulum-v1"
    deadline = time.monotonic() + 300
    while not list(runs.glob("*/seed_*/summary.json")):
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "no trial finished within 300 s"
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = list(runs.glob("*/seed_*/summary.json"))
    assert len(first) < 4
    kept = {p: (_mtime(p), (p.parent / "metrics.jsonl").read_text()) for p in first}
    dataset = next((cache / "datasets").glob("*.hdf5"))
    made_at = _mtime(dataset)

    dry = subprocess.run(_sweep_command(file, out, cache) + ["--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert dry.returncode == 0 and dry.stdout.count("  done") == len(first), dry.stdout

    again = subprocess.run(_sweep_command(file, out, cache), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"{len(first)} of 4 trials already done; running {4 - len(first)}" in again.stdout
    assert len(list(runs.glob("*/seed_*/summary.json"))) == 4
    for path, (mtime, metrics) in kept.items():  # the finished trial was not run again
        assert _mtime(path) == mtime and (path.parent / "metrics.jsonl").read_text() == metrics
    assert _mtime(dataset) == made_at and "making" not in again.stdout  # stages reused from the cache
    for summary in runs.glob("*/seed_*/summary.json"):
        assert json.loads(summary.read_text())["env_steps"] == 400

    report = tmp_path / "report"
    assert main(["report", str(out), "--out", str(report), "--reps", "200", "--baseline", "porl"]) == 0
    groups = json.loads((report / "report.json").read_text())["groups"]
    assert sorted((g["method"], g["n_runs"]) for g in groups) == [("porl", 2), ("sac", 2)]
    assert {g["handover_env_step"] for g in groups if g["method"] == "porl"} == {200}


@pytest.mark.parametrize("file", sorted((ROOT / "configs" / "sweeps").glob("*.yaml")), ids=lambda f: f.stem)
def test_shipped_sweep_files_plan(tmp_path, file):
    plan = plan_sweep(load_sweep(file), file, tmp_path / "out", tmp_path / "cache")
    # grid points × the method's own envs (a method may name fewer than the sweep's), per method
    points = sum(math.prod(len(values) for values in m.grid.values()) * len(m.envs or plan.spec.envs)
                 for m in plan.spec.methods.values())
    assert len(plan.trials) == points * len(plan.spec.seed_list())
    assert len({t.run_dir for t in plan.trials}) == len(plan.trials)


def test_only_the_stages_pending_trials_need_are_made(tmp_path):
    from distributed_o2o.sweep.stages import needed_stages

    file = write_sweep(tmp_path / "s.yaml", TINY)
    plan = plan_sweep(load_sweep(file), file, tmp_path / "out", tmp_path / "cache")
    porl = [t for t in plan.trials if t.method == "porl"]
    sac = [t for t in plan.trials if t.method == "sac"]
    assert needed_stages(sac) == ([], [])  # SAC from scratch needs neither
    datasets, policies = needed_stages(porl)
    assert [d.name for d in datasets] == ["rand"] and [p.name for p in policies] == ["bc"]
    (policies[0].path).mkdir(parents=True)
    (policies[0].path / "metadata.json").write_text("{}")
    assert needed_stages(porl) == ([], [])  # the policy is cached: its dataset is not made again


def test_a_pretraining_stage_moves_its_records_into_the_cache_with_the_checkpoint(tmp_path):
    from distributed_o2o.checkpoint import load_policy
    from distributed_o2o.sweep.stages import make_dataset_job, needed_stages, pretrain_policy_job

    file = write_sweep(tmp_path / "s.yaml", TINY)
    plan = plan_sweep(load_sweep(file), file, tmp_path / "out", tmp_path / "cache")
    datasets, policies = needed_stages([t for t in plan.trials if t.method == "porl"])
    make_dataset_job(datasets[0])
    job = policies[0]

    pretrain_policy_job(job)

    assert [json.loads(line)["step"] for line in (job.path / "metrics.jsonl").read_text().splitlines()] == [50]
    assert list((job.path / "tb").iterdir()) and not list(job.path.parent.glob(".*partial"))
    assert load_policy(job.path, "Pendulum-v1").obs_dim == 3


def test_methods_filter(tmp_path, capsys):
    file = write_sweep(tmp_path / "s.yaml", TINY)
    args = ["sweep", str(file), "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache"), "--dry-run"]
    assert main(args + ["--methods", "sac"]) == 0
    out = capsys.readouterr().out
    assert "sac/seed_0" in out and "porl" not in out and "2 trials" in out
    assert main(args + ["--methods", "sac,nope"]) == 2
    assert "--methods names nope" in capsys.readouterr().err


def test_envs_filter(tmp_path, capsys):
    """`--envs` keeps one env's trials (a method's own envs count as the file's), alone or with `--methods`."""
    spec = {**TINY, "methods": {**TINY["methods"], "sac": {**TINY["methods"]["sac"], "envs": ["Pendulum-v1", "MountainCarContinuous-v0"]}}}
    file = write_sweep(tmp_path / "s.yaml", spec)
    args = ["sweep", str(file), "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache"), "--dry-run"]
    assert main(args + ["--envs", "MountainCarContinuous-v0"]) == 0
    out = capsys.readouterr().out
    assert "MountainCarContinuous-v0/sac/seed_1" in out and "Pendulum" not in out and "2 trials" in out
    assert main(args + ["--envs", "Pendulum-v1", "--methods", "sac"]) == 0
    out = capsys.readouterr().out
    assert "Pendulum-v1/sac/seed_0" in out and "porl" not in out and "Mountain" not in out and "2 trials" in out
    assert main(args + ["--envs", "Hopper-v5"]) == 2
    assert "--envs names Hopper-v5, not in the sweep file (it has: Pendulum-v1, MountainCarContinuous-v0)" in capsys.readouterr().err


def test_a_trial_is_done_only_when_its_evaluations_end_where_its_summary_does(tmp_path):
    from distributed_o2o.sweep.trials import trial_status

    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"env_steps": 400}))
    (run / "metrics.jsonl").write_text(json.dumps({"env_steps": 0}) + "\n" + json.dumps({"env_steps": 200}) + "\n")
    assert trial_status(run, 400).state == "new"  # a summary over another copy's cut-short metrics
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"env_steps": 400}) + "\n")
    assert trial_status(run, 400).state == "done" and trial_status(run, 800).state == "new"


@pytest.mark.slow
def test_ray_mode_trial_runs_its_actors_in_its_placement_group(tmp_path):
    """A trial in ray mode: its learner and rollout actors ask for the trial's CPU share and are
    placed inside the trial's placement group (on 2 CPUs, anything else would not be placed)."""
    from distributed_o2o.sweep.run import run_sweep

    spec = {**TINY, "seeds": [0], "methods": {"sac": TINY["methods"]["sac"]},
            "set": {**TINY["set"], "runtime": {"num_rollout_workers": 1}},
            "resources": {"mode": "ray", "cpus_per_trial": 2, "max_concurrent": 1}}
    file = write_sweep(tmp_path / "s.yaml", spec)
    failed = run_sweep(file, tmp_path / "out", cache=tmp_path / "cache", say=lambda line: None, ray_init={"num_cpus": 2})
    assert failed == []
    run = tmp_path / "out" / "runs" / "Pendulum-v1" / "sac" / "seed_0"
    assert json.loads((run / "summary.json").read_text())["env_steps"] == 400
    assert yaml.safe_load((run / "config.yaml").read_text())["runtime"]["actor_cpus"] == pytest.approx(2 / 3)  # driver, learner, 1 rollout


def test_a_population_method_runs_its_seeds_as_one_trial_writing_per_seed_runs(tmp_path):
    from distributed_o2o.report.build import build_report
    from distributed_o2o.sweep.run import run_sweep
    from distributed_o2o.sweep.trials import trial_payload, trial_units

    spec = {**TINY, "online_steps": 200, "methods": {"sac": {**TINY["methods"]["sac"], "population": True,
                                                            "set": {"random_start_steps": 100, "learning_starts": 100}}}}
    file = write_sweep(tmp_path / "s.yaml", spec)
    out, cache = tmp_path / "out", tmp_path / "cache"
    plan = plan_sweep(load_sweep(file), file, out, cache)
    [unit] = trial_units(plan.trials)
    payload = trial_payload(unit, load_sweep(file).resources)
    assert (payload["id"], payload["seeds"]) == ("Pendulum-v1/sac (seeds 0,1)", [0, 1])
    lines = []
    assert run_sweep(file, out, cache=cache, say=lines.append, ray_init={"num_cpus": 2}) == []
    runs = out / "runs" / "Pendulum-v1" / "sac"
    assert (runs / "population.yaml").is_file()
    for seed in (0, 1):
        assert json.loads((runs / f"seed_{seed}" / "trial.json").read_text())["seed"] == seed
        assert json.loads((runs / f"seed_{seed}" / "summary.json").read_text())["env_steps"] == 200
    assert [(g["method"], g["n_runs"], g["seeds"]) for g in build_report([out], reps=100)["groups"]] == [("sac", 2, [0, 1])]
    lines.clear()
    assert run_sweep(file, out, cache=cache, say=lines.append, ray_init={"num_cpus": 2}) == []
    assert "2 of 2 trials already done; running 0" in lines


def test_a_population_size_cuts_the_seeds_into_population_runs_that_the_report_pools(tmp_path):
    from distributed_o2o.report.build import build_report
    from distributed_o2o.sweep.run import run_sweep
    from distributed_o2o.sweep.trials import trial_payload, trial_units

    spec = {**TINY, "seeds": [0, 1, 2], "online_steps": 200,
            "methods": {"sac": {**TINY["methods"]["sac"], "population": 2, "set": {"random_start_steps": 100, "learning_starts": 100}}}}
    file = write_sweep(tmp_path / "s.yaml", spec)
    out, cache = tmp_path / "out", tmp_path / "cache"
    plan = plan_sweep(load_sweep(file), file, out, cache)
    payloads = [trial_payload(unit, plan.spec.resources) for unit in trial_units(plan.trials)]
    assert [(p["id"], p["seeds"]) for p in payloads] == [("Pendulum-v1/sac/seeds_0_1 (seeds 0,1)", [0, 1]),
                                                         ("Pendulum-v1/sac/seeds_2 (seeds 2)", [2])]
    assert run_sweep(file, out, cache=cache, say=[].append, ray_init={"num_cpus": 2}) == []
    runs = out / "runs" / "Pendulum-v1" / "sac"
    for group, seed in (("seeds_0_1", 0), ("seeds_0_1", 1), ("seeds_2", 2)):
        assert json.loads((runs / group / f"seed_{seed}" / "summary.json").read_text())["env_steps"] == 200
    assert [(g["method"], g["n_runs"], g["seeds"]) for g in build_report([out], reps=100)["groups"]] == [("sac", 3, [0, 1, 2])]


def test_the_dry_run_says_how_many_runs_the_populations_make(tmp_path, capsys):
    spec = {**TINY, "seeds": [0, 1, 2], "methods": {"sac": {**TINY["methods"]["sac"], "population": 2}}}
    args = ["sweep", str(write_sweep(tmp_path / "s.yaml", spec)), "--out", str(tmp_path / "out"),
            "--cache", str(tmp_path / "cache"), "--dry-run"]
    assert main(args) == 0
    assert "3 trials, 3 to run or resume, as 2 runs (a population's seeds train in one)" in capsys.readouterr().out
    assert main(args[:1] + [str(write_sweep(tmp_path / "t.yaml", TINY))] + args[2:]) == 0
    assert capsys.readouterr().out.rstrip().endswith("to run or resume")  # no populations: one run per trial


@pytest.mark.parametrize("size", [0, 1])
def test_a_population_of_fewer_than_two_is_refused(tmp_path, size):
    file = write_sweep(tmp_path / "s.yaml", {**TINY, "methods": {"sac": {"algo": "sac", "population": size}}})
    with pytest.raises(UserError, match=f"population: {size}: give true"):
        load_sweep(file)
