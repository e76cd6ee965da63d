"""`o2o data inspect` and `o2o data collect` through `distributed_o2o.cli.main.main`."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from distributed_o2o.cli.main import main
from distributed_o2o.data import load_dataset


def collect(tmp_path, capsys, *extra: str, seed: int = 5) -> tuple[str, object]:
    out = tmp_path / "sub" / f"random-{seed}.hdf5"
    argv = ["data", "collect", "--env", "Pendulum-v1", "--policy", "random", "--steps", "300", "--out", str(out),
            "--seed", str(seed), "--num-envs", "2", *extra]
    assert main(argv) == 0
    return capsys.readouterr().out, out


def test_collect_random_writes_an_own_dataset(tmp_path, capsys):
    stdout, out = collect(tmp_path, capsys)

    assert stdout.count("\n") == 1 and "wrote 300 transitions, 2 episodes of random on Pendulum-v1" in stdout
    ds = load_dataset(str(out))
    assert (len(ds), ds.source, ds.env_id, ds.num_episodes) == (300, "o2o", "Pendulum-v1", 2)
    assert ds.attrs["behavior_policy"] == "random" and ds.attrs["seed"] == 5
    assert np.abs(ds.actions).max() <= 1.0 and np.unique(ds.actions).size > 250  # uniform, not constant

    _, again = collect(tmp_path, capsys, seed=5)
    _, other = collect(tmp_path, capsys, seed=6)
    np.testing.assert_array_equal(load_dataset(str(again)).actions, ds.actions)
    assert not np.array_equal(load_dataset(str(other)).actions, ds.actions)


def test_inspect_json_prints_one_object(tmp_path, capsys):
    _, out = collect(tmp_path, capsys)

    assert main(["data", "inspect", str(out), "--json", "--env", "Pendulum-v1"]) == 0
    summary = json.loads(capsys.readouterr().out)  # fails unless stdout is exactly one JSON document
    assert summary == load_dataset(str(out)).summary()
    assert (summary["transitions"], summary["episodes"], summary["source"], summary["normalized_score_mean"]) == (300, 2, "o2o", None)


def test_inspect_table(tmp_path, capsys):
    _, out = collect(tmp_path, capsys)

    assert main(["data", "inspect", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "transitions" in stdout and "300" in stdout and "Pendulum-v1" in stdout


def test_inspect_refuses_wrong_env(tmp_path, capsys):
    _, out = collect(tmp_path, capsys)

    assert main(["data", "inspect", str(out), "--env", "Hopper-v5"]) == 2
    assert "was recorded for Pendulum-v1, not Hopper-v5" in capsys.readouterr().err


def test_collect_with_checkpoint_policy(tmp_path, capsys):
    checkpoint = pytest.importorskip("distributed_o2o.checkpoint")
    from distributed_o2o.algorithms.policies import TanhGaussianPolicy

    policy_dir = checkpoint.save_checkpoint(tmp_path / "ckpt", {"policy": TanhGaussianPolicy(3, 1, hidden=(8,))},
                                            env_id="Pendulum-v1", algo="sac")
    out = tmp_path / "ckpt.hdf5"
    argv = ["data", "collect", "--env", "Pendulum-v1", "--policy", str(policy_dir), "--steps", "50", "--out", str(out)]

    assert main(argv) == 0
    assert "wrote 50 transitions" in capsys.readouterr().out
    with h5py.File(out) as file:
        assert file.attrs["behavior_policy"] == str(policy_dir)
    assert main([*argv[:-2], "--out", str(tmp_path / "again.hdf5")]) == 0  # sampling is seeded by --seed
    np.testing.assert_array_equal(load_dataset(str(tmp_path / "again.hdf5")).actions, load_dataset(str(out)).actions)
