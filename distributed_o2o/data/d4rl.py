"""Reader for D4RL-layout HDF5 files: D4RL's own and the project's (recognised by `format`).

Transitions follow D4RL's `qlearning_dataset`. When the file stores no `next_observations`,
next_obs[i] = obs[i+1], so a row whose successor is not in its episode is dropped: every
timeout row, and the file's last row. The row before a dropped timeout then becomes its
episode's last transition and inherits the timeout flag, so episodes still split.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import gymnasium as gym
import h5py
import numpy as np

from distributed_o2o.data.dataset import (
    REQUIRED_COLUMNS,
    OfflineDataset,
    check_dataset,
    choose_env_id,
    episode_returns,
    require_columns,
    validate_columns,
)
from distributed_o2o.data.scores import d4rl_ref_scores
from distributed_o2o.errors import UserError

OWN_FORMAT = "distributed_o2o/d4rl-layout"
OWN_FORMAT_VERSION = 1
EPISODE_RETURNS_KEY = "metadata/episode_returns"  # own files: returns that row flags cannot recover
_OPTIONAL_COLUMNS = ("timeouts", "next_observations")


def d4rl_path(name_or_path: str) -> Path:
    """A file path as is; a dataset name (`hopper-medium-v2`) under $D4RL_DATASET_DIR or ~/.d4rl/datasets.

    D4RL's downloads are named `hopper_medium-v2.hdf5`; both spellings are tried.
    """
    if name_or_path.endswith((".hdf5", ".h5")) or os.sep in name_or_path or Path(name_or_path).is_file():
        return Path(name_or_path).expanduser()
    root = Path(os.environ.get("D4RL_DATASET_DIR") or Path.home() / ".d4rl" / "datasets").expanduser()
    base, _, version = name_or_path.rpartition("-")
    candidates = [root / f"{name_or_path}.hdf5"]
    if base:
        candidates.append(root / f"{base.replace('-', '_')}-{version}.hdf5")
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = " or ".join(str(c) for c in candidates)
    raise UserError(f"D4RL dataset '{name_or_path}' not found ({tried}): download it there, set D4RL_DATASET_DIR, or pass the file path")


def read_d4rl(path: Path, env_id: str | None = None, allow_other_env: bool = False) -> OfflineDataset:
    origin = f"dataset '{path}'"
    if not path.exists():
        raise UserError(f"{origin} does not exist: check the path")
    if path.is_dir():
        raise UserError(f"{origin} is a directory, not an HDF5 file: for a Minari dataset use 'minari:{path}'")
    try:
        file = h5py.File(path, "r")
    except OSError:
        raise UserError(f"{origin} is not an HDF5 file: pass a D4RL-layout .hdf5 file") from None
    with file:
        attrs = {key: _python(value) for key, value in file.attrs.items()}
        present = [key for key, item in file.items() if isinstance(item, h5py.Dataset)]
        require_columns(present, REQUIRED_COLUMNS, origin)
        raw = validate_columns({key: file[key][()] for key in (*REQUIRED_COLUMNS, *_OPTIONAL_COLUMNS) if key in present}, origin)
        stored_returns = file[EPISODE_RETURNS_KEY][()] if EPISODE_RETURNS_KEY in file else None

    own = attrs.get("format") == OWN_FORMAT
    if own and attrs.get("format_version", 0) > OWN_FORMAT_VERSION:
        raise UserError(f"{origin} has format_version {attrs['format_version']}, newer than this distributed_o2o reads ({OWN_FORMAT_VERSION}): upgrade distributed_o2o")
    recorded = attrs.get("env_id") if own else path.stem.replace("_", "-")
    env, recorded_here = choose_env_id(env_id, recorded, origin, allow_other_env)
    if "timeouts" not in raw:
        raw["timeouts"] = _infer_timeouts(raw["terminals"], env)
    if stored_returns is None:
        stored_returns = episode_returns(raw["rewards"], raw["terminals"] | raw["timeouts"])

    if own:  # the references the file records, for the env it was recorded for
        refs = (attrs.get("ref_min_score"), attrs.get("ref_max_score")) if recorded_here else (None, None)
    else:  # the D4RL table, looked up by file name (unless used with another env), else by the env's name
        refs = (recorded_here and d4rl_ref_scores(path.stem)) or d4rl_ref_scores(env or "") or (None, None)
    dataset = OfflineDataset(
        **_transitions(raw, origin),
        episode_returns=np.asarray(stored_returns, dtype=np.float64),
        source="o2o" if own else "d4rl",
        env_id=env,
        ref_min_score=refs[0],
        ref_max_score=refs[1],
        attrs=attrs,
    )
    check_dataset(dataset, origin)
    return dataset


def _transitions(raw: dict[str, np.ndarray], origin: str) -> dict[str, np.ndarray]:
    columns = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")
    if "next_observations" in raw:
        return {name: raw[name] for name in columns}
    timeouts, ends = raw["timeouts"], raw["terminals"] | raw["timeouts"]
    inherits = np.flatnonzero(timeouts[1:] & ~ends[:-1])
    raw["timeouts"] = timeouts.copy()
    raw["timeouts"][inherits] = True
    raw["next_observations"] = np.roll(raw["observations"], -1, axis=0)
    keep = ~timeouts
    keep[-1] = False
    if not keep.any():
        raise UserError(f"{origin} has no transition left once rows without a successor are dropped: store next_observations")
    return {name: raw[name][keep] for name in columns}


def _infer_timeouts(terminals: np.ndarray, env_id: str | None) -> np.ndarray:
    """Old D4RL files lack `timeouts`: as D4RL does, mark each env time limit (unknown env: none)."""
    spec = gym.registry.get(env_id) if env_id else None
    limit = spec.max_episode_steps if spec else None
    if not limit:
        return np.zeros_like(terminals)
    rows = np.arange(terminals.shape[0])
    episode_start = np.maximum.accumulate(np.where(np.concatenate([[True], terminals[:-1]]), rows, 0))
    return ((rows - episode_start) % limit == limit - 1) & ~terminals


def _python(value: Any) -> Any:
    """An HDF5 attribute as a plain python value."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    return value
