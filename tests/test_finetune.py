"""The local driver end to end: learning on small tasks, resume, stage caching, bad input.

Learning tests use fixed seeds and margins far larger than the seed-to-seed spread seen when
they were written; each runs in well under a minute on 2 CPU cores.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
import pytest
import yaml
from conftest import assert_validated_deployment, latest_save, make_weak_bc

from distributed_o2o.cli.main import main
from distributed_o2o.config import PretrainConfig, finetune_config
from distributed_o2o.errors import UserError
from distributed_o2o.runtime import learner as learner_module
from distributed_o2o.runtime.finetune import resume_finetune, run_finetune

ROOT = Path(__file__).resolve().parents[1]
ENV = "Pendulum-v1"
SMALL = {"hidden": [64, 64], "eval_episodes": 5, "log_every": 500}


@pytest.fixture(scope="module")
def weak_bc(tmp_path_factory):
    """A noisy-PD dataset and a BC policy pretrained on it (return about -900)."""
    return make_weak_bc(tmp_path_factory.mktemp("weak_bc"), transitions=4000, bc_steps=1500, hidden=[64, 64])


def _run(algo, out, **fields):
    config = finetune_config(algo, None, {"env": ENV, **SMALL, **fields})
    summary = run_finetune(config, out, progress=False)
    return summary, [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_sac_from_scratch_improves(tmp_path):
    # 20 episodes: after 5k steps the policy scores about -300 on average but still loses some
    # start states (-1,500 and worse), so 5 episodes can read -900 from a policy that learnt.
    summary, _ = _run("sac", tmp_path / "sac", online_steps=5000, eval_every=2500, random_start_steps=1000, learning_starts=1000,
                      eval_episodes=20)
    assert summary["initial"]["return_mean"] < -1000
    assert summary["final"]["return_mean"] > summary["initial"]["return_mean"] + 500


@pytest.mark.slow
def test_porl_improves_a_weak_bc_policy(tmp_path, weak_bc):
    summary, metrics = _run("porl", tmp_path / "porl", policy=weak_bc["policy"], online_steps=6000, eval_every=3000,
                            presample_steps=1000, presample_utd=2, utd=1, num_critics=2)
    assert summary["final"]["return_mean"] > summary["initial"]["return_mean"] + 300
    assert [m["env_steps"] for m in metrics] == [0, 3000, 6000]
    run = tmp_path / "porl"
    assert (run / "summary.json").exists() and (run / "config.yaml").exists() and list((run / "tb").iterdir())
    assert (run / "checkpoints" / "step_000006000" / "metadata.json").exists()
    # Every checkpoint the run wrote evaluates with `o2o eval`.
    assert main(["eval", "--policy", str(run / "checkpoints" / "step_000006000"), "--env", ENV, "--episodes", "2", "--json"]) == 0


@pytest.fixture(scope="module")
def good_policy(tmp_path_factory):
    """A SAC policy trained 5k steps on Pendulum (its evaluations from -140 to -630 by start state)."""
    out = tmp_path_factory.mktemp("good") / "sac"
    _run("sac", out, online_steps=5000, eval_every=2500, random_start_steps=1000, learning_starts=1000)
    return str(sorted((out / "checkpoints").iterdir())[-1])


# How far below the mean of π_pre's own evaluations an evaluation after hand-over may fall.
COLLAPSE_MARGIN = 500.0


def _porl_around_hand_over(config_file: str, out, policy: str) -> tuple[float, float]:
    """(mean of the evaluations up to the hand-over, lowest evaluation after it) of a PORL run
    from `policy`: 1k pre-sample steps, then 500 steps of fine-tuning, evaluated every 250."""
    config = finetune_config("porl", str(ROOT / "configs" / config_file),
                             {"env": ENV, **SMALL, "eval_episodes": 10, "policy": policy, "online_steps": 1500,
                              "eval_every": 250, "presample_steps": 1000})
    run_finetune(config, out, progress=False)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    before = [m["return_mean"] for m in metrics if m["env_steps"] <= 1000]
    return float(np.mean(before)), min(m["return_mean"] for m in metrics if m["env_steps"] > 1000)


@pytest.mark.slow
def test_porl_stable_and_the_hand_over_constraint_prevent_the_collapse_of_the_specification(tmp_path, good_policy):
    """From a good π_pre, PORL as specified collapses within 250 env steps of hand-over (its fresh
    critic has seen 1k transitions); with the recommended config (validated deployment) and with
    the hand-over constraint, no evaluation after hand-over falls more than COLLAPSE_MARGIN below
    π_pre's level."""
    before, lowest = _porl_around_hand_over("porl.yaml", tmp_path / "spec", good_policy)
    assert lowest < before - COLLAPSE_MARGIN  # the task shows the collapse
    for config_file in ("porl-stable.yaml", "porl-constrained.yaml"):
        before, lowest = _porl_around_hand_over(config_file, tmp_path / config_file, good_policy)
        assert lowest >= before - COLLAPSE_MARGIN, config_file


@pytest.mark.slow
def test_o2sac_first_online_evaluation_stays_near_the_pre_online_score(tmp_path, weak_bc):
    """No dip at hand-over: the first online evaluation stays within 250 return (about 1/4 of the
    pre-online return's magnitude) of the pre-online evaluation. 40 episodes each: this policy's
    returns spread by about 500 from one start state to the next, so with 5 a policy that had
    not moved could read 250 lower."""
    summary, metrics = _run("o2sac", tmp_path / "o2sac", policy=weak_bc["policy"], dataset=weak_bc["dataset"],
                            online_steps=2000, eval_every=1000, reevaluate_steps=1500, align_steps=1500, utd=1,
                            eval_episodes=40)
    assert set(summary["handover"]) >= {"handover_score_offline", "handover_score_aligned"}
    pre_online, first_online = metrics[0]["return_mean"], metrics[1]["return_mean"]
    assert first_online > pre_online - 250


def test_stages_are_cached_and_not_paid_twice(tmp_path, weak_bc, monkeypatch):
    fields = dict(policy=weak_bc["policy"], dataset=weak_bc["dataset"], online_steps=0, reevaluate_steps=30, align_steps=30)
    out = tmp_path / "o2sac"
    config = finetune_config("o2sac", None, {"env": ENV, **SMALL, **fields})
    # The first attempt dies after its stages (before any online step): nothing to resume yet.
    monkeypatch.setattr(learner_module.Learner, "handover", _raise)
    with pytest.raises(RuntimeError, match="injected"):
        run_finetune(config, out, progress=False)
    assert (out / "stages" / "reevaluate.json").exists() and (out / "stages" / "align.json").exists()
    monkeypatch.undo()
    calls = []
    original = learner_module.Learner.run_stage
    monkeypatch.setattr(learner_module.Learner, "run_stage", lambda self, *a: calls.append(a) or original(self, *a))
    with pytest.raises(UserError, match=r"already holds a run \(config.yaml\): continue it with --resume"):
        run_finetune(config, out, progress=False)
    # --resume starts it again; a damaged cached stage is computed again, the other reused.
    align = out / "stages" / "align.safetensors"
    align.write_bytes(align.read_bytes()[:50])
    resume_finetune(out, progress=False)
    assert {name for name, _ in calls} == {"align"}
    calls.clear()
    # A changed stage config does not reuse the cache: a new run directory holding the first
    # config's cached stages computes both stages again.
    other = tmp_path / "other"
    shutil.copytree(out / "stages", other / "stages")
    changed = finetune_config("o2sac", None, {"env": ENV, **SMALL, **fields, "align_steps": 40})
    run_finetune(changed, other, progress=False)
    assert {name for name, _ in calls} == {"reevaluate", "align"}


def test_methods_start_from_the_checkpoint_modules_they_name(tmp_path, weak_bc):
    """IQL fine-tuning continues the offline critic AND value network; naive takes the critic."""
    from distributed_o2o.algorithms.offline import run_pretraining
    from distributed_o2o.data import load_dataset
    from distributed_o2o.runtime.components import load_inputs

    iql_dir = run_pretraining(PretrainConfig(algo="iql", steps=20, hidden=[32, 32]),
                              load_dataset(weak_bc["dataset"], ENV), tmp_path / "iql", progress=False)
    inputs = load_inputs(finetune_config("iql", None, {"env": ENV, "policy": str(iql_dir), "dataset": weak_bc["dataset"]}))
    assert set(inputs.pretrained) == {"critic", "value"}
    assert inputs.policy.family == "gaussian"
    assert set(load_inputs(finetune_config("naive", None, {"env": ENV, "policy": str(iql_dir)})).pretrained) == {"critic"}


def _raise(*args, **kwargs):
    raise RuntimeError("injected failure")


def test_a_failed_run_resumes_from_its_last_checkpoint_without_losing_data(tmp_path, monkeypatch):
    out = tmp_path / "sac"
    config = finetune_config("sac", None, {"env": ENV, **SMALL, "online_steps": 1200, "eval_every": 400,
                                           "random_start_steps": 100, "learning_starts": 100})
    original = learner_module.Learner.update
    calls = {"n": 0}

    def failing_update(self, batches, env_step):
        calls["n"] += 1
        if env_step > 700:
            raise RuntimeError("injected failure")
        return original(self, batches, env_step)

    monkeypatch.setattr(learner_module.Learner, "update", failing_update)
    with pytest.raises(RuntimeError, match="injected"):
        run_finetune(config, out, progress=False)
    monkeypatch.undo()
    with pytest.raises(UserError, match="already holds a run"):
        run_finetune(config, out, progress=False)
    summary = resume_finetune(out, progress=False)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["env_steps"] for m in metrics] == [0, 400, 800, 1200]
    assert summary["env_steps"] == 1200
    saved = np.load(latest_save(out) / "replay.npz")
    assert len(saved["rewards"]) == 1200 and int(saved["inserted"]) == 1200
    # The transitions collected before the failure are still there, in order: a new episode
    # starts every 200 steps (Pendulum's time limit), so timeouts sit at rows 199, 399, ...
    np.testing.assert_array_equal(np.flatnonzero(saved["timeouts"]), np.arange(199, 1200, 200))


def test_a_resumed_run_continues_its_env_and_noise_streams_instead_of_repeating_its_start(tmp_path):
    """The envs and the random actions after a resume at step 200 are not those of step 0 (every
    stream used to start again from the config seed: obs[200] == obs[0])."""
    out = tmp_path / "run"
    fields = {"env": ENV, **SMALL, "hidden": [16, 16], "eval_episodes": 1, "online_steps": 200, "eval_every": 200,
              "random_start_steps": 400, "learning_starts": 100}
    run_finetune(finetune_config("sac", None, fields), out, progress=False)
    resume_finetune(out, progress=False, changes={"online_steps": 400})
    saved = np.load(latest_save(out) / "replay.npz")
    observations, actions = saved["observations"], saved["actions"]
    assert len(observations) == 400
    assert not np.array_equal(observations[200], observations[0])  # Pendulum's episodes last 200 steps: both are resets
    assert not np.array_equal(actions[200:300], actions[:100])  # uniform random actions before random_start_steps


@pytest.mark.parametrize("args, message", [
    (["--algo", "porl", "--env", ENV], "porl fine-tunes a pretrained policy: pass --policy"),
    (["--algo", "o2sac", "--env", ENV, "--policy", "{policy}"], "o2sac needs the offline dataset: pass --dataset"),
    (["--algo", "naive", "--env", ENV, "--policy", "{policy}"], "naive loads the offline critic too"),
    (["--algo", "porl", "--env", "Hopper-v5", "--policy", "{policy}"], "observation width 3 and action width 1"),
    (["--algo", "porl", "--env", ENV, "--policy", "{policy}", "--set", "utdd=3"], "unknown config key 'utdd'"),
    (["--algo", "nosuch", "--env", ENV], "unknown algorithm 'nosuch'"),
    (["--resume", "{tmp}/nothing"], "is not a run directory"),
    (["--algo", "sac", "--env", ENV, "--learner-backend", "graph", "--set", "runtime.device=cpu"], "learner_backend 'graph' needs a CUDA device"),
])
def test_bad_finetune_input_is_one_line_and_exit_2(args, message, weak_bc, tmp_path, capsys):
    out = [] if "--resume" in args else ["--out", str(tmp_path / "run")]
    argv = [a.format(policy=weak_bc["policy"], tmp=tmp_path) for a in args] + out + ["--quiet"]
    assert main(["finetune", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_resume_extends_the_budget_keeps_runtime_changes_and_refuses_other_changes(tmp_path, capsys):
    out = str(tmp_path / "run")
    first = ["finetune", "--algo", "sac", "--env", ENV, "--online-steps", "200", "--set", "eval_every=200", "--set",
             "eval_episodes=1", "--set", "random_start_steps=100", "--set", "learning_starts=100", "--set", "hidden=[16,16]",
             "--mode", "local", "--quiet"]
    assert main([*first, "--out", out]) == 0
    capsys.readouterr()
    for flags, message in [(["--seed", "3"], "'seed' cannot change (0 in"), (["--set", "utd=2"], "'utd' cannot change"),
                           (["--algo", "porl"], "'algo' cannot change"), (["--online-steps", "100"], "at env step 200"),
                           (["--out", "elsewhere"], "drop --out"),
                           (["--set", "envs_per_worker=2"], "`envs_per_worker` is now `runtime.envs_per_worker`")]:
        assert main(["finetune", "--resume", out, "--mode", "local", "--quiet", *flags]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (flags, err)
    # A run saved before the config had a runtime section (its fields at the top level) continues.
    config_file = tmp_path / "run" / "config.yaml"
    saved = yaml.safe_load(config_file.read_text())
    config_file.write_text(yaml.safe_dump({**saved, **saved.pop("runtime")}, sort_keys=False))
    # The same value as saved is no change; runtime fields and the budget may change.
    assert main(["finetune", "--resume", out, "--mode", "local", "--quiet", "--seed", "0", "--online-steps", "400",
                 "--envs-per-worker", "2", "--set", "runtime.broadcast_every=2"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["env_steps"] == 400
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["env_steps"] for m in metrics] == [0, 200, 400]
    saved = yaml.safe_load(config_file.read_text())
    assert saved["online_steps"] == 400 and saved["runtime"]["envs_per_worker"] == 2 and saved["runtime"]["broadcast_every"] == 2


@pytest.mark.parametrize("args, message", [
    (["--algo", "porl", "--set", "constraint.eps_end=0.5"],
     "the 'constraint' block is off for porl by default; turn it on with --set constraint={} (its defaults)"),
    ([], "no algorithm given: pass --algo (one of"),
])
def test_config_mistakes_say_how_to_fix_them(args, message, tmp_path, capsys):
    assert main(["finetune", "--env", ENV, "--out", str(tmp_path / "run"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_whole_block_turns_the_constraint_on_before_its_fields_are_set():
    config = finetune_config("porl", None, {}, sets=["constraint={}", "constraint.eps_end=0.5"])
    assert config.constraint.eps_end == 0.5 and config.constraint.eps_start == 0.125


def test_local_mode_is_bit_identical_per_seed(tmp_path):
    """docs/design.md, "Determinism": one process, one seed, the same run to the bit."""
    from safetensors.numpy import load_file

    fields = {"online_steps": 300, "eval_every": 300, "eval_episodes": 2, "random_start_steps": 100, "learning_starts": 100,
              "hidden": [16, 16], "runtime": {"envs_per_worker": 2, "num_rollout_workers": 2}}
    runs = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        summary = run_finetune(finetune_config("sac", None, {"env": ENV, "seed": seed, **fields}), tmp_path / name,
                               mode="local", progress=False)
        runs[name] = (summary["final"]["return_mean"], load_file(str(tmp_path / name / "checkpoints" / "step_000000300" /
                                                                      "policy.safetensors")))
    (ret_a, w_a), (ret_b, w_b), (ret_c, w_c) = runs["a"], runs["b"], runs["c"]
    assert ret_a == ret_b and all(np.array_equal(w_a[k], w_b[k]) for k in w_a)
    assert ret_a != ret_c and not all(np.array_equal(w_a[k], w_c[k]) for k in w_a)


def test_evaluations_log_the_sampled_and_online_returns_on_shared_start_states(tmp_path, weak_bc):
    """With a deployed average, each evaluation scores π̄'s mode, and logs π's samples and π's
    mode on the same start states (equal at step 0, where π̄ = π = π_pre)."""
    _, metrics = _run("porl", tmp_path / "porl", policy=weak_bc["policy"], online_steps=400, eval_every=200,
                      presample_steps=200, presample_utd=1, utd=1, num_critics=2, eval_episodes=2, policy_average_tau=0.01)
    assert all({"stochastic_return_mean", "online_return_mean"} <= set(m) for m in metrics)
    assert metrics[0]["online_return_mean"] == metrics[0]["return_mean"]
    checkpoint = tmp_path / "porl" / "checkpoints" / "step_000000400"
    assert {"policy", "online_policy"} <= set(json.loads((checkpoint / "metadata.json").read_text())["modules"])


def test_a_validated_deployment_changes_only_to_a_candidate_that_scored_as_well_as_any_before(tmp_path, weak_bc):
    """Each evaluation scores the deployed policy (π_pre at first) and logs the candidate π̄; the
    next point deploys the candidate as it was scored if its score matched the best candidate
    score so far, else keeps the deployed policy: a reported score is never of the policy that
    was chosen on the same episodes."""
    _, metrics = _run("porl", tmp_path / "porl", policy=weak_bc["policy"], online_steps=1200, eval_every=200,
                      presample_steps=200, presample_utd=1, utd=1, num_critics=2, eval_episodes=2,
                      policy_average_tau=0.05, validated_deployment=True)
    assert all("candidate_return_mean" in m for m in metrics)
    assert metrics[0]["candidate_return_mean"] == metrics[0]["return_mean"]  # π̄ = π_pre = deployed at 0
    assert_validated_deployment(tmp_path / "porl", metrics, "policy_average", "candidate_return_mean")


def test_an_evaluation_leaves_the_training_random_stream_alone():
    from distributed_o2o.algorithms.policies import TanhGaussianPolicy
    from distributed_o2o.runtime.evaluator import Evaluator

    policy = TanhGaussianPolicy(3, 1, [8])
    torch.manual_seed(0)
    state = torch.random.get_rng_state()
    Evaluator(ENV, 1, seed=5).evaluate(policy.arch(), policy.state_dict(), deterministic=False, env_step=0)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_the_seeds_of_a_study_evaluate_on_start_states_of_their_own():
    """A fixed policy scored by the evaluators of runs seeded s and s + 1 at one env step, or by one
    of them at two steps, meets no episode twice; the same evaluation repeats exactly. (Seeding by
    seed + env_step gave neighbouring seeds 9 of every 10 episodes in common.)"""
    from distributed_o2o.algorithms.policies import TanhGaussianPolicy
    from distributed_o2o.runtime.evaluator import Evaluator

    torch.manual_seed(0)
    policy = TanhGaussianPolicy(3, 1, [8])

    def returns(seed: int, env_step: int) -> set[float]:
        return set(Evaluator(ENV, 10, seed).evaluate(policy.arch(), policy.state_dict(), True, env_step)["returns"])

    first = returns(10_000, 0)
    assert len(first) == 10 and returns(10_000, 0) == first
    assert first.isdisjoint(returns(10_001, 0))
    assert first.isdisjoint(returns(10_000, 1))
