"""`o2o report` on synthetic run directories whose scores are known."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.stats import trim_mean

from distributed_o2o.cli.main import main
from distributed_o2o.errors import UserError
from distributed_o2o.report.build import build_report, write_report
from distributed_o2o.zoo import zoo_entry

REPS = 500


def write_run(root: Path, name: str, env: str, method: str, seed: int, steps: list[int], scores: list[float | None],
              returns: list[float] | None = None, handover: int = 0, online_steps: int | None = None,
              finished: bool = True, trial: bool = True, learner_returns: list[float] | None = None) -> Path:
    """A run directory as the driver (and a sweep) leaves it, with the given evaluation scores."""
    path = root / name
    path.mkdir(parents=True)
    online_steps = online_steps or steps[-1]
    (path / "config.yaml").write_text(yaml.safe_dump({"algo": method.split("-")[0], "env": env, "seed": seed,
                                                      "online_steps": online_steps, "dataset": None}))
    returns = returns or [0.0] * len(steps)
    lines = [{"env_steps": s, "return_mean": r, "return_std": 0.0, "normalized_score": n} for s, n, r in zip(steps, scores, returns)]
    for line, learner in zip(lines, learner_returns or []):
        line["online_return_mean"] = learner
    (path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    if finished:
        (path / "summary.json").write_text(json.dumps({"env_steps": online_steps, "handover_env_step": handover, "wall_time_s": 10.0}))
    if trial:
        (path / "trial.json").write_text(json.dumps({"env": env, "method": method, "seed": seed, "dataset": "medium"}))
    return path


def hand_bootstrap_ci(values: np.ndarray, reps: int, seed: int = 123) -> tuple[float, float]:
    """The 95% percentile bootstrap CI of the IQM, resampling runs with replacement."""
    rng = np.random.default_rng(seed)
    draws = trim_mean(rng.choice(values, (reps, len(values))), 0.25, axis=1)
    return float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))


def group(report: dict, method: str, env: str = "Hopper-v5") -> dict:
    return next(g for g in report["groups"] if g["method"] == method and g["env"] == env)


def test_iqm_and_ci_match_a_hand_computation(tmp_path):
    finals = np.array([10.0, 20.0, 30.0, 40.0, 100.0, 35.0, 25.0, 15.0])
    for seed, final in enumerate(finals):
        write_run(tmp_path, f"a{seed}", "Hopper-v5", "porl", seed, [0, 500, 1000], [50.0, 60.0, float(final)])
    g = group(build_report([tmp_path], reps=4000), "porl")
    # IQM of 8 runs: the mean of the middle four (20, 25, 30, 35), not the mean (34.4).
    assert g["iqm"] == pytest.approx(27.5)
    assert g["n_runs"] == 8 and g["seeds"] == list(range(8))
    low, high = hand_bootstrap_ci(finals, 20_000)
    assert g["ci_low"] == pytest.approx(low, abs=2.5) and g["ci_high"] == pytest.approx(high, abs=2.5)
    assert g["ci_low"] < g["iqm"] < g["ci_high"]


def test_stability_figures(tmp_path):
    # Hand-over at 1000; online steps 10,000, so the dip window ends at 2000.
    write_run(tmp_path, "r", "Hopper-v5", "porl", 0, [0, 1000, 2000, 3000, 4000, 10000], [40.0, 50.0, 20.0, 5.0, 70.0, 90.0],
              handover=1000, online_steps=10000)
    g = group(build_report([tmp_path], reps=REPS), "porl")
    assert g["before_handover"]["value"] == 50.0  # the evaluation at the hand-over step, not the one at 0
    assert g["lowest_after_handover"]["value"] == 5.0
    assert g["dip"]["value"] == 30.0  # 50 - 20: the 5 at step 3000 lies past the first 10% of online steps
    assert g["last_10pct"]["value"] == 90.0  # ceil(10% of 6 evaluations) = the last one
    assert g["last_5"]["value"] == pytest.approx((50 + 20 + 5 + 70 + 90) / 5)
    assert g["handover_env_step"] == 1000 and g["learner_lowest_after_handover"] is None  # it delivers what it learns


def test_the_learning_policys_own_lowest_is_reported_on_the_deployed_scores_scale(tmp_path):
    """A run that delivers another policy logs the learning one's mode (`online_return_mean`);
    its lowest after hand-over is normalised as the run normalised its own scores (here score =
    return / 10 + 5, the map read off the run's evaluations)."""
    returns = [400.0, 450.0, 450.0, 600.0]
    write_run(tmp_path, "r", "Hopper-v5", "porl", 0, [0, 1000, 2000, 3000], [r / 10 + 5 for r in returns], returns=returns,
              handover=1000, online_steps=3000, learner_returns=[400.0, 450.0, 30.0, 600.0])
    g = group(build_report([tmp_path], reps=REPS), "porl")
    assert g["lowest_after_handover"]["value"] == pytest.approx(50.0)
    assert g["learner_lowest_after_handover"]["value"] == pytest.approx(8.0)  # 30 / 10 + 5


def test_one_run_is_reported_with_n_runs_1(tmp_path):
    write_run(tmp_path, "only", "Hopper-v5", "sac", 3, [0, 1000], [1.0, 42.0])
    g = group(build_report([tmp_path], reps=REPS), "sac")
    assert g["n_runs"] == 1 and g["iqm"] == g["ci_low"] == g["ci_high"] == 42.0


def test_scores_normalised_with_zoo_references_when_runs_lack_them(tmp_path):
    entry = zoo_entry("Hopper-v5")
    write_run(tmp_path, "r", "Hopper-v5", "sac", 0, [0, 1000], [None, None], returns=[entry.ref_min_score, entry.ref_max_score])
    write_run(tmp_path, "p", "Pendulum-v1", "sac", 0, [0, 1000], [None, None], returns=[-1200.0, -150.0])
    report = build_report([tmp_path], reps=REPS)
    hopper, pendulum = group(report, "sac"), group(report, "sac", "Pendulum-v1")
    assert hopper["score"] == "normalised" and hopper["references"] == "zoo" and hopper["iqm"] == pytest.approx(100.0)
    assert pendulum["score"] == "raw return" and pendulum["iqm"] == -150.0


def test_a_group_names_every_source_of_its_references(tmp_path):
    entry = zoo_entry("Hopper-v5")
    write_run(tmp_path, "a", "Hopper-v5", "sac", 0, [0, 1000], [None, None], returns=[entry.ref_min_score, entry.ref_max_score])
    write_run(tmp_path, "b", "Hopper-v5", "sac", 1, [0, 1000], [0.0, 100.0])
    assert group(build_report([tmp_path], reps=REPS), "sac")["references"] == "the run's, zoo"


def test_a_group_mixing_normalised_and_raw_scores_is_refused(tmp_path):
    write_run(tmp_path, "a", "Pendulum-v1", "sac", 0, [0, 1000], [None, None], returns=[-1200.0, -150.0])
    write_run(tmp_path, "b", "Pendulum-v1", "sac", 1, [0, 1000], [0.0, 90.0])
    with pytest.raises(UserError, match="some runs have normalised scores and some only raw returns"):
        build_report([tmp_path], reps=REPS)


def test_unfinished_runs_are_left_out_and_counted(tmp_path):
    write_run(tmp_path, "done", "Hopper-v5", "sac", 0, [0, 1000], [1.0, 2.0])
    write_run(tmp_path, "cut", "Hopper-v5", "sac", 1, [0, 500], [1.0, 90.0], online_steps=1000, finished=False)
    report = build_report([tmp_path], reps=REPS)
    assert report["n_unfinished"] == 1 and group(report, "sac")["n_runs"] == 1


def test_a_summary_whose_evaluations_end_elsewhere_is_not_finished(tmp_path):
    """Files of two copies of a run mixed (a full summary over cut-short metrics): left out."""
    run = write_run(tmp_path, "mixed", "Hopper-v5", "sac", 0, [0, 500], [1.0, 2.0], online_steps=1000, finished=False)
    (run / "summary.json").write_text(json.dumps({"env_steps": 1000, "handover_env_step": 0}))
    assert build_report([tmp_path], reps=REPS)["n_unfinished"] == 1


def test_baseline_improvement_and_files(tmp_path):
    for seed in range(4):
        write_run(tmp_path, f"s{seed}", "Hopper-v5", "sac", seed, [0, 1000], [0.0, 10.0 + seed])
        write_run(tmp_path, f"p{seed}", "Hopper-v5", "porl", seed, [0, 1000], [0.0, 50.0 + seed])
        write_run(tmp_path, f"w{seed}", "Walker2d-v5", "porl", seed, [0, 1000], [0.0, 60.0 + seed])
        write_run(tmp_path, f"v{seed}", "Walker2d-v5", "sac", seed, [0, 1000], [0.0, 70.0 + seed])
    out = tmp_path / "report"
    report = write_report([tmp_path], out, baseline="porl", reps=REPS)
    assert group(report, "sac")["baseline_improvement"]["value"] == 1.0  # porl beats every sac run on Hopper
    assert group(report, "sac", "Walker2d-v5")["baseline_improvement"]["value"] == 0.0
    aggregate = {row["method"]: row for row in report["aggregate"]}
    assert aggregate["sac"]["baseline_improvement"]["value"] == pytest.approx(0.5)  # the mean over the two envs
    assert aggregate["porl"]["tasks"] == ["Hopper-v5", "Walker2d-v5"]
    assert json.loads((out / "report.json").read_text())["groups"]
    text = (out / "report.md").read_text()
    assert "## Hopper-v5" in text and "## All envs" in text and "curves-Hopper-v5.png" in text
    assert (out / "curves-Hopper-v5.png").stat().st_size > 1000


def test_the_all_envs_table_also_weighs_each_run_over_its_last_tenth(tmp_path):
    """A method whose seeds swing but all end on a high point ties on final scores with a steady
    one; over each run's last 10% of evaluations (here its last two of eleven) it is behind."""
    steps = list(range(0, 11_000, 1000))
    for seed in range(4):
        for env in ("Hopper-v5", "Walker2d-v5"):
            write_run(tmp_path, f"steady-{env}-{seed}", env, "steady", seed, steps, [50.0] * 9 + [90.0, 90.0])
            write_run(tmp_path, f"swing-{env}-{seed}", env, "swing", seed, steps, [50.0] * 9 + [10.0, 90.0])
    report = write_report([tmp_path], tmp_path / "report", baseline="steady", reps=REPS)
    aggregate = {row["method"]: row for row in report["aggregate"]}
    assert aggregate["swing"]["iqm"] == aggregate["steady"]["iqm"] == pytest.approx(90.0)
    assert aggregate["swing"]["last_10pct"]["value"] == pytest.approx(50.0)
    assert aggregate["steady"]["last_10pct"]["value"] == pytest.approx(90.0)
    assert aggregate["swing"]["baseline_improvement"]["value"] == pytest.approx(0.5)
    assert aggregate["swing"]["baseline_improvement_last_10pct"]["value"] == pytest.approx(1.0)
    assert "| swing | Hopper-v5, Walker2d-v5 | 4 | 90.0 [90.0, 90.0] | 50.0 [50.0, 50.0] | 0.50 [0.50, 0.50] | 1.00 [1.00, 1.00] |" \
        in (tmp_path / "report" / "report.md").read_text()


def test_plain_runs_group_by_algorithm(tmp_path):
    write_run(tmp_path, "x", "Hopper-v5", "sac", 0, [0, 1000], [0.0, 1.0], trial=False)
    report = build_report([tmp_path], reps=REPS)
    assert [(g["method"], g["dataset"]) for g in report["groups"]] == [("sac", "-")]


def test_a_pretraining_checkpoint_beside_the_runs_is_not_a_run(tmp_path):
    from distributed_o2o.report.runs import find_run_dirs

    run = write_run(tmp_path, "x", "Hopper-v5", "sac", 0, [0, 1000], [0.0, 1.0], trial=False)
    (tmp_path / "bc").mkdir()  # what `o2o pretrain --out` leaves besides the weights
    (tmp_path / "bc" / "metadata.json").write_text("{}")
    (tmp_path / "bc" / "metrics.jsonl").write_text(json.dumps({"step": 1000, "actor_loss": 0.5}) + "\n")
    assert find_run_dirs([tmp_path]) == [run]


def test_bad_input_is_one_line(tmp_path, capsys):
    write_run(tmp_path, "x", "Hopper-v5", "sac", 0, [0, 1000], [0.0, 1.0])
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r"), "--baseline", "nope"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]) == 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no run directories"):
        build_report([tmp_path / "empty"])


def test_the_wall_time_of_seeds_trained_as_a_population_is_marked_as_shared(tmp_path):
    for seed in range(2):
        write_run(tmp_path, f"pop/seed_{seed}", "Hopper-v5", "rlpd", seed, [0, 1000], [0.0, 30.0 + seed])
        write_run(tmp_path, f"alone/seed_{seed}", "Hopper-v5", "sac", seed, [0, 1000], [0.0, 10.0 + seed])
    (tmp_path / "pop" / "summary.json").write_text(json.dumps({"seeds": [0, 1], "run_dir": "pop"}))
    # The population's records in trials of 2 and 1 seeds (`population: 2` over three seeds).
    write_run(tmp_path, "pop3/seed_2", "Hopper-v5", "rlpd", 2, [0, 1000], [0.0, 32.0])
    (tmp_path / "pop3" / "summary.json").write_text(json.dumps({"seeds": [2], "run_dir": "pop3"}))
    report = write_report([tmp_path], tmp_path / "report", reps=REPS)
    assert group(report, "rlpd")["population_sizes"] == [1, 2]
    assert group(report, "sac")["population_sizes"] == [1]  # seed_<n> folders without a population's summary
    rows = {line.split(" | ")[0].strip("| "): line for line in (tmp_path / "report" / "report.md").read_text().splitlines()
            if line.startswith("| rlpd") or line.startswith("| sac")}
    assert "10 (population of 2 for some seeds)" in rows["rlpd"]
    assert "population" not in rows["sac"]


def test_the_bootstrap_intervals_repeat_and_leave_numpys_generator_alone():
    """rliable resamples with NumPy's global generator whatever random_state it is given: the
    report seeds that generator for each interval and restores the caller's state after."""
    from distributed_o2o.report.stats import improvement_probability, iqm_curve, iqm_interval

    scores = np.array([[3.0], [9.0], [4.0], [12.0], [7.0], [1.0]])
    np.random.seed(7)
    expected_draw = np.random.rand()
    np.random.seed(7)
    first = (iqm_interval(scores, reps=300), improvement_probability(scores, scores[::-1] - 2.0, reps=300),
             [band.tolist() for band in iqm_curve(np.hstack([scores, 2 * scores]), reps=300)])
    assert np.random.rand() == expected_draw  # the caller's stream goes on as if nothing drew from it
    np.random.rand(5)  # a different global state before the second computation
    second = (iqm_interval(scores, reps=300), improvement_probability(scores, scores[::-1] - 2.0, reps=300),
              [band.tolist() for band in iqm_curve(np.hstack([scores, 2 * scores]), reps=300)])
    assert first == second
    assert first[0].low < first[0].value < first[0].high  # a real interval, not a point


@pytest.mark.parametrize("runs, tasks", [(3, 1), (5, 1), (7, 3), (10, 2)])
def test_the_statistics_given_to_rliables_bootstrap_equal_rliables_own(runs, tasks):
    """The report evaluates its own NumPy statistics on each resample (SciPy's per-call overhead
    made rliable's the bulk of a report's time); they must equal rliable's, ties included."""
    from rliable import metrics

    from distributed_o2o.report.stats import improvement_fraction, trimmed_mean

    rng = np.random.default_rng(runs * tasks)
    x = rng.normal(size=(runs, tasks)).round(1)  # rounded: ties within x and between x and y
    y = rng.normal(size=(runs + 2, tasks)).round(1)
    assert trimmed_mean(x) == pytest.approx(metrics.aggregate_iqm(x), abs=1e-12)
    np.testing.assert_allclose(trimmed_mean(x, axis=0), trim_mean(x, 0.25, axis=0), atol=1e-12)
    assert improvement_fraction(x, y) == pytest.approx(metrics.probability_of_improvement(x, y), abs=1e-12)
    assert improvement_fraction(x, x) == metrics.probability_of_improvement(x, x) == 0.5
