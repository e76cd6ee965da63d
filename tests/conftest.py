"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import ray  # noqa: F401  (Ray binds its log handler to sys.stderr on import: imported here, before any test captures
# stderr, its warnings reach the terminal instead of a test's capsys, as when `import distributed_o2o` loaded it)
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """The suite's networks are tiny and CI has 2 cores: two contending intra-op threads made
    steps up to 15x slower and erratic; one is fast and steady."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def write_h5(tmp_path: Path) -> Callable[..., Path]:
    """Write root datasets (and root attributes) to `tmp_path/<name>`, as a D4RL file would hold them."""

    def write(name: str, attrs: dict | None = None, **arrays: np.ndarray) -> Path:
        path = tmp_path / name
        with h5py.File(path, "w") as file:
            for key, value in arrays.items():
                file.create_dataset(key, data=value)
            file.attrs.update(attrs or {})
        return path

    return write


def pd_controller(obs: np.ndarray, kp: float = 5.0, kd: float = 1.0) -> np.ndarray:
    """Torque toward upright for Pendulum observations (cos θ, sin θ, θ'), in [-1, 1]: with noise,
    it balances near the top but cannot swing the pendulum up."""
    theta = np.arctan2(obs[..., 1], obs[..., 0])
    return np.clip(-(kp * theta + kd * obs[..., 2]), -1.0, 1.0)[..., None].astype(np.float32)


def make_weak_bc(root: Path, transitions: int, bc_steps: int, hidden: list[int]) -> dict[str, str]:
    """A noisy-PD-controller dataset on Pendulum-v1 and a BC policy pretrained on it: a weak
    starting policy (return about -900) for fine-tuning tests. Returns the dataset and policy paths."""
    from distributed_o2o.algorithms.offline import run_pretraining
    from distributed_o2o.config import PretrainConfig
    from distributed_o2o.data import collect_dataset, load_dataset, write_dataset

    env = "Pendulum-v1"
    rng = np.random.default_rng(0)
    data = collect_dataset(env, lambda obs: np.clip(pd_controller(obs) + rng.normal(0, 0.3, (len(obs), 1)), -1, 1),
                           transitions, seed=0, progress=False)
    path = write_dataset(root / "data.hdf5", data, env_id=env, behavior_policy="noisy PD", seed=0)
    policy = run_pretraining(PretrainConfig(algo="bc", steps=bc_steps, hidden=hidden, seed=0), load_dataset(str(path), env),
                             root / "bc", progress=False)
    return {"dataset": str(path), "policy": str(policy)}


def latest_save(run: Path) -> Path:
    """The directory of a run's newest resume save."""
    from distributed_o2o.runtime.resume_state import ResumeStore

    saves = ResumeStore(run / "resume").saves()
    assert saves, f"{run} has no resume save"
    return saves[0]


def assert_validated_deployment(run_dir: Path, metrics: list[dict], candidate_module: str, candidate_score: str) -> None:
    """The rule of a validated deployment, read off a run's checkpoints: the policy checkpointed
    (and scored) at each evaluation after the first is the previous evaluation's candidate, as
    it was then, when that candidate's score matched the best candidate score so far, else the
    previous point's policy."""
    from safetensors.torch import load_file

    def weights(m, module):
        return load_file(run_dir / "checkpoints" / f"step_{m['env_steps']:09d}" / f"{module}.safetensors")

    best = -float("inf")
    for before, after in zip(metrics, metrics[1:]):
        passed = before[candidate_score] >= best
        best = max(best, before[candidate_score])
        expected = weights(before, candidate_module if passed else "policy")
        assert all(torch.equal(expected[k], v) for k, v in weights(after, "policy").items())

