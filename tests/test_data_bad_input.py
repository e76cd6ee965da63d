"""Every kind of bad dataset is refused with one line naming the problem (UserError; exit code 2 in the CLI)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from distributed_o2o.cli.main import main
from distributed_o2o.data import load_dataset, write_dataset
from distributed_o2o.errors import UserError

REPO = Path(__file__).resolve().parents[1]
N = 20


def pendulum_rows(n: int = N) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "observations": rng.normal(size=(n, 3)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n, 1)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminals": np.zeros(n, dtype=bool),
        "timeouts": np.arange(n) == n - 1,
    }


def with_bad_value(name: str, row: int, value: float) -> dict[str, np.ndarray]:
    rows = {**pendulum_rows(), "next_observations": pendulum_rows()["observations"]}
    rows[name] = rows[name].copy()
    rows[name][row] = value
    return rows


def refuse(spec: str, match: str, env_id: str | None = None) -> str:
    with pytest.raises(UserError, match=match) as info:
        load_dataset(spec, env_id=env_id)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_file(tmp_path):
    refuse(str(tmp_path / "nope.hdf5"), "does not exist")


def test_not_hdf5(tmp_path):
    path = tmp_path / "data.hdf5"
    path.write_text("observations,actions\n1,2\n")
    refuse(f"d4rl:{path}", "is not an HDF5 file")


def test_missing_keys_names_missing_and_present(write_h5):
    rows = pendulum_rows()
    path = write_h5("d.hdf5", observations=rows["observations"], rewards=rows["rewards"], timeouts=rows["timeouts"])
    message = refuse(str(path), "lacks actions, terminals")
    assert "it has: observations, rewards, timeouts" in message


def test_lengths_differ(write_h5):
    rows = pendulum_rows()
    rows["actions"] = rows["actions"][:-3]
    message = refuse(str(write_h5("d.hdf5", **rows)), "arrays differ in length")
    assert f"actions {N - 3}" in message and f"observations {N}" in message


@pytest.mark.parametrize(("env_id", "match"), [("Hopper-v5", "observation width 3 and action width 1, but env 'Hopper-v5' has 11 and 3"),
                                               ("NoSuchEnv-v9", "unknown env id 'NoSuchEnv-v9'")])
def test_env_mismatch_or_unknown(write_h5, env_id, match):
    refuse(str(write_h5("d.hdf5", **pendulum_rows())), match, env_id=env_id)


def test_recorded_env_is_checked(write_h5):
    rows = pendulum_rows()  # the file name says hopper, the widths say otherwise
    refuse(str(write_h5("hopper_medium-v2.hdf5", **rows)), "but env 'Hopper-v5' has 11 and 3")


@pytest.mark.parametrize(("name", "row", "value"), [("observations", 3, np.nan), ("actions", 5, np.inf),
                                                     ("rewards", 7, -np.inf), ("next_observations", 11, np.nan)])
def test_non_finite_values(write_h5, name, row, value):
    refuse(str(write_h5("d.hdf5", **with_bad_value(name, row, value))), f"{name} has NaN or inf at row {row}")


def test_float64_overflow_is_caught(write_h5):
    rows = pendulum_rows()
    rows["rewards"] = rows["rewards"].astype(np.float64)
    rows["rewards"][2] = 1e300  # finite in the file, inf once cast to float32
    refuse(str(write_h5("d.hdf5", **rows)), "rewards has NaN or inf at row 2")


def test_empty(write_h5):
    rows = {name: array[:0] for name, array in pendulum_rows().items()}
    refuse(str(write_h5("d.hdf5", **rows)), "is empty")


def test_nothing_left_without_successors(write_h5):
    rows = pendulum_rows(1)  # one row and no next_observations: it has no successor
    refuse(str(write_h5("d.hdf5", **rows)), "no transition left")


def test_rewards_with_wrong_shape(write_h5):
    rows = pendulum_rows()
    rows["rewards"] = np.zeros((N, 2), dtype=np.float32)
    refuse(str(write_h5("d.hdf5", **rows)), r"rewards has shape \(20, 2\), expected \(N,\) or \(N, 1\)")


def test_unknown_prefix():
    refuse("s3:bucket/data.hdf5", "unknown dataset prefix 's3:'")


def test_unknown_d4rl_name(tmp_path, monkeypatch):
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path))
    refuse("d4rl:hopper-medium-v2", "not found .*hopper_medium-v2.hdf5")


def test_newer_own_format(write_h5):
    rows = {**pendulum_rows(), "next_observations": pendulum_rows()["observations"]}
    refuse(str(write_h5("d.hdf5", attrs={"format": "distributed_o2o/d4rl-layout", "format_version": 9}, **rows)), "format_version 9")


def test_writer_validates_its_input(tmp_path):
    rows = with_bad_value("observations", 4, np.nan)
    with pytest.raises(UserError, match="observations has NaN or inf at row 4"):
        write_dataset(tmp_path / "x.hdf5", rows, env_id="Pendulum-v1", behavior_policy="random", seed=0)
    del rows["next_observations"]
    with pytest.raises(UserError, match="lacks next_observations"):
        write_dataset(tmp_path / "x.hdf5", rows, env_id="Pendulum-v1", behavior_policy="random", seed=0)
    assert not list(tmp_path.iterdir())


def minari_dir(root: Path, **metadata) -> Path:
    """A dataset directory holding only metadata.json: the reader must refuse before reading data."""
    box = json.dumps({"type": "Box", "dtype": "float32", "shape": [3], "low": [-1.0] * 3, "high": [1.0] * 3})
    fields = {"minari_version": "0.5.4", "observation_space": box, "action_space": box, **metadata}
    (root / "data").mkdir(parents=True)
    (root / "data" / "metadata.json").write_text(json.dumps(fields))
    return root


def test_minari_without_metadata(tmp_path):
    (tmp_path / "ds" / "data").mkdir(parents=True)
    refuse(f"minari:{tmp_path / 'ds'}", "has no metadata.json")


def test_minari_unsupported_version(tmp_path):
    path = minari_dir(tmp_path / "ds", minari_version="0.3.1")
    refuse(f"minari:{path}", "written by Minari 0.3.1: only datasets of Minari 0.4.x and 0.5.x are supported")


def test_minari_dict_observations(tmp_path):
    path = minari_dir(tmp_path / "ds", observation_space=json.dumps({"type": "Dict", "subspaces": {}}))
    refuse(f"minari:{path}", "Dict observation_space .*only flat Box")


def test_minari_unknown_id(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    refuse("minari:mujoco/hopper/medium-v0", "Minari dataset 'mujoco/hopper/medium-v0' not found")


@pytest.mark.parametrize("make_spec", [lambda tmp: str(tmp / "nope.hdf5"), lambda tmp: f"minari:{tmp}"])
def test_cli_exit_code_2(tmp_path, capsys, make_spec):
    assert main(["data", "inspect", make_spec(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1


def test_cli_subprocess_has_no_traceback(write_h5):
    rows = pendulum_rows()
    rows["actions"] = rows["actions"][:5]
    path = write_h5("d.hdf5", **rows)
    result = subprocess.run([sys.executable, "-m", "distributed_o2o.cli.main", "data", "inspect", str(path)],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "arrays differ in length" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


# ---------------------------------------------------------------- values, dtypes, flags, env
def test_actions_outside_the_action_space_are_refused_naming_the_range(write_h5):
    rows = {**pendulum_rows(), "next_observations": pendulum_rows()["observations"]}
    rows["actions"] = np.linspace(3, 7, N, dtype=np.float32)[:, None]
    refuse(str(write_h5("d.hdf5", **rows)), r"actions range over \[3, 7\], outside the action space \[-1, 1\]")


@pytest.mark.parametrize("value", [np.nan, 2.0, -1.0])
def test_flags_that_are_not_booleans_are_refused(write_h5, value):
    rows = pendulum_rows()
    rows["terminals"] = np.zeros(N)
    rows["terminals"][7] = value
    refuse(str(write_h5("d.hdf5", **rows)), rf"terminals has the value {value} at row 7: a flag is 0/1 or true/false")


def test_observations_stored_as_bytes_are_refused(write_h5):
    rows = pendulum_rows()
    rows["observations"] = np.array([[b"a", b"b", b"c"]] * N)
    refuse(str(write_h5("d.hdf5", **rows)), "observations holds |S1 values, not numbers")


def cheetah_file(write_h5) -> Path:
    """A D4RL HalfCheetah file: the same widths as Walker2d (17, 6)."""
    rng = np.random.default_rng(0)
    return write_h5("halfcheetah_medium-v2.hdf5", observations=rng.normal(size=(N, 17)).astype(np.float32),
                    actions=rng.uniform(-1, 1, size=(N, 6)).astype(np.float32), rewards=np.ones(N, dtype=np.float32),
                    terminals=np.zeros(N, dtype=bool), timeouts=np.arange(N) == N - 1)


def test_a_file_recorded_for_another_env_is_refused_unless_allowed(write_h5):
    path = cheetah_file(write_h5)
    refuse(str(path), "recorded for HalfCheetah-v5, not Walker2d-v5: pass --env HalfCheetah-v5, or set allow_other_env_dataset=true",
           env_id="Walker2d-v5")
    used = load_dataset(str(path), env_id="Walker2d-v5", allow_other_env=True)
    assert (used.env_id, used.ref_min_score, used.ref_max_score) == ("Walker2d-v5", 1.629008, 4592.3)  # the env used
    assert load_dataset(str(path), env_id="HalfCheetah-v4").ref_max_score == 12135.0  # another version: the same env


def minari_with_episode(root: Path, actions: np.ndarray, low: float, high: float) -> Path:
    steps = len(actions)
    space = json.dumps({"type": "Box", "dtype": "float32", "shape": [1], "low": [low], "high": [high]})
    path = minari_dir(root, action_space=space)
    with h5py.File(path / "data" / "main_data.hdf5", "w") as file:
        episode = file.create_group("episode_0")
        episode["observations"] = np.zeros((steps + 1, 3), dtype=np.float32)
        episode["actions"] = actions.astype(np.float32)[:, None]
        episode["rewards"] = np.ones(steps, dtype=np.float32)
        episode["terminations"] = np.zeros(steps, dtype=bool)
        episode["truncations"] = np.arange(steps) == steps - 1
    return path


def test_minari_actions_are_checked_after_rescaling(tmp_path):
    path = minari_with_episode(tmp_path / "zero", np.full(5, 2.0), low=2.0, high=2.0)
    refuse(f"minari:{path}", "action space with high <= low")
    path = minari_with_episode(tmp_path / "outside", np.array([-2.0, 0.0, 6.0]), low=-2.0, high=2.0)
    refuse(f"minari:{path}", r"actions range over \[-1, 3\]")
    inside = load_dataset(f"minari:{minari_with_episode(tmp_path / 'inside', np.array([-2.0, 0.0, 2.0]), -2.0, 2.0)}")
    np.testing.assert_array_equal(inside.actions[:, 0], [-1.0, 0.0, 1.0])
