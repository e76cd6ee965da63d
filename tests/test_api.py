"""The top-level Python API (`from distributed_o2o import ...`) and the light import it needs."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest

import distributed_o2o
from distributed_o2o.cli import finetune as finetune_cli
from distributed_o2o.cli.main import main


def _modules_loaded_by(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True).stdout
    return {name.split(".")[0] for name in json.loads(out.splitlines()[-1])}


def test_importing_the_package_loads_neither_torch_nor_ray():
    loaded = _modules_loaded_by("import distributed_o2o")
    assert not loaded & {"torch", "ray", "gymnasium"}


def test_the_api_names_are_importable_and_unknown_names_fail():
    from distributed_o2o import evaluate, finetune, load_dataset, load_policy, make_env, pretrain, resume  # noqa: F401

    assert set(distributed_o2o.__all__) <= set(dir(distributed_o2o))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        distributed_o2o.nothing  # noqa: B018


def test_finetune_defaults_to_the_cli_mode():
    api_default = inspect.signature(distributed_o2o.finetune).parameters["mode"].default
    cli_default = inspect.signature(finetune_cli.finetune).parameters["mode"].default.default
    assert api_default == cli_default == "ray"


def test_pretrain_finetune_evaluate_from_python(tmp_path, capsys):
    from distributed_o2o import evaluate, finetune, load_dataset, load_policy, make_env, pretrain
    from distributed_o2o.data import collect_dataset, write_dataset

    rng = np.random.default_rng(0)
    data = collect_dataset("Pendulum-v1", lambda obs: rng.uniform(-1, 1, (len(obs), 1)), 400, seed=0, progress=False)
    file = write_dataset(tmp_path / "data.hdf5", data, env_id="Pendulum-v1", behavior_policy="random", seed=0,
                         ref_min_score=-1500.0, ref_max_score=-100.0)
    assert len(load_dataset(str(file))) == 400

    ckpt = pretrain("bc", str(file), out=tmp_path / "bc", steps=20, hidden=[16, 16], batch_size=32, progress=False)
    assert (ckpt / "metrics.jsonl").is_file() and list((ckpt / "tb").iterdir())  # read beside the weights below
    summary = finetune("porl", env="Pendulum-v1", policy=str(ckpt), online_steps=300, out=tmp_path / "run", mode="local",
                       progress=False, presample_steps=100, num_critics=2, hidden=[16, 16], batch_size=32, eval_every=300,
                       eval_episodes=1)
    assert summary["env_steps"] == 300 and summary["final"]["normalized_score"] is not None  # the dataset's references
    _check_run_records(tmp_path / "run", summary)

    policy = load_policy(ckpt)
    env = make_env("Pendulum-v1", seed=0)
    obs, _ = env.reset(seed=0)
    action = policy.act(obs)  # one observation, sampled (SB3's default)
    assert action.shape == (1,) and np.abs(action).max() <= 1.0
    np.testing.assert_array_equal(policy.act(obs, deterministic=True), policy.act(obs, deterministic=True))

    result = evaluate(ckpt, episodes=2)  # the env the checkpoint records
    assert result["env"] == "Pendulum-v1" and len(result["returns"]) == 2
    assert result["normalized_score"] == pytest.approx(100 * (result["return_mean"] + 1500) / 1400)

    # The run's checkpoints carry the references on: `o2o eval` needs neither --env nor a dataset.
    final = tmp_path / "run" / "checkpoints" / "step_000000300"
    assert main(["eval", "--policy", str(final), "--episodes", "1", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["normalized_score"] == pytest.approx(100 * (printed["return_mean"] + 1500) / 1400)


def test_references_fall_back_to_the_zoo_for_its_envs():
    from distributed_o2o.config import finetune_config
    from distributed_o2o.runtime.components import load_inputs
    from distributed_o2o.zoo import zoo_entry

    inputs = load_inputs(finetune_config("sac", None, {"env": "Hopper-v5"}))  # SAC from scratch: no dataset, no policy
    entry = zoo_entry("Hopper-v5")
    assert (inputs.ref_min, inputs.ref_max) == (entry.ref_min_score, entry.ref_max_score)
    explicit = load_inputs(finetune_config("sac", None, {"env": "Hopper-v5", "ref_min_score": 0.0, "ref_max_score": 1.0}))
    assert (explicit.ref_min, explicit.ref_max) == (0.0, 1.0)
    assert load_inputs(finetune_config("sac", None, {"env": "Pendulum-v1"})).ref_min is None


def _check_run_records(run, summary):
    """What a run records for whoever reads it later: seed, versions, commit, rates, best checkpoint."""
    assert summary == json.loads((run / "summary.json").read_text())
    assert summary["seed"] == 0 and summary["updates_per_s"] > 0
    assert summary["versions"]["torch"] == version("torch") and set(summary["versions"]) >= {"ray", "gymnasium", "mujoco"}
    checkout = Path(distributed_o2o.__file__).resolve().parents[1]
    if (checkout / ".git").exists():
        head = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        assert summary["git_commit"].removesuffix("-dirty") == head
    assert Path(summary["best_checkpoint"]).name == f"step_{summary['best']['env_steps']:09d}"
    assert (Path(summary["best_checkpoint"]) / "metadata.json").is_file()
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["updates_per_s"] > 0 and all("updates_per_s" in line for line in lines)
