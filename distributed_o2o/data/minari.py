"""Reader for Minari datasets (HDF5 storage, Minari 0.4.x/0.5.x) with h5py and json only.

Layout: `<dataset dir>/data/metadata.json` and `<dataset dir>/data/main_data.hdf5`, one group
`episode_{i}` per episode with T+1 observations and T actions, rewards, terminations and
truncations. Minari stores actions in the env's own bounds; they are mapped to [-1, 1], the
project's action convention (the env factory rescales the env the same way).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from distributed_o2o.data.dataset import OfflineDataset, check_dataset, choose_env_id, require_columns, validate_columns
from distributed_o2o.errors import UserError

SUPPORTED_VERSIONS = ("0.4.", "0.5.")


def minari_dir(id_or_dir: str) -> Path:
    """A directory as is; a dataset id (`mujoco/hopper/medium-v0`) under $MINARI_DATASETS_PATH or ~/.minari/datasets."""
    path = Path(id_or_dir).expanduser()
    if path.is_dir():
        return path
    root = Path(os.environ.get("MINARI_DATASETS_PATH") or Path.home() / ".minari" / "datasets").expanduser()
    if (root / id_or_dir).is_dir():
        return root / id_or_dir
    raise UserError(f"Minari dataset '{id_or_dir}' not found (neither a directory nor under {root}): set MINARI_DATASETS_PATH or pass the dataset directory")


def read_minari(path: Path, env_id: str | None = None, allow_other_env: bool = False) -> OfflineDataset:
    origin = f"Minari dataset '{path}'"
    data_dir = path / "data" if (path / "data" / "metadata.json").is_file() else path
    metadata = _metadata(data_dir, origin)
    _flat_box(metadata, "observation_space", origin)
    act_space = _flat_box(metadata, "action_space", origin)

    try:
        file = h5py.File(data_dir / "main_data.hdf5", "r")
    except OSError:
        raise UserError(f"{origin}: {data_dir / 'main_data.hdf5'} is missing or not HDF5: re-create the dataset with Minari") from None
    with file:
        names = sorted((key for key in file if key.startswith("episode_")), key=lambda key: int(key.rpartition("_")[2]))
        episodes = [_episode(file[name], f"{origin}, {name}") for name in names]
    if not episodes:
        raise UserError(f"{origin} is empty (no episodes): collect or point at a dataset with data")

    columns = {key: np.concatenate([episode[key] for episode in episodes]) for key in episodes[0]}
    columns = validate_columns(columns, origin)
    # an episode whose last step carries neither flag (cut short) still ends there
    last_rows = np.cumsum([len(episode["rewards"]) for episode in episodes]) - 1
    columns["timeouts"][last_rows[~columns["terminals"][last_rows]]] = True
    columns["actions"] = _to_unit_box(columns["actions"], act_space, origin)

    returns = np.array([episode["rewards"].sum(dtype=np.float64) for episode in episodes])
    env_spec = _json_field(metadata.get("env_spec")) or {}
    env, recorded_here = choose_env_id(env_id, env_spec.get("id"), origin, allow_other_env)
    dataset = OfflineDataset(
        **columns,
        episode_returns=returns,
        source="minari",
        env_id=env,
        ref_min_score=_float_or_none(metadata.get("ref_min_score")) if recorded_here else None,
        ref_max_score=_float_or_none(metadata.get("ref_max_score")) if recorded_here else None,
        attrs=metadata,
    )
    check_dataset(dataset, origin)
    return dataset


def _metadata(data_dir: Path, origin: str) -> dict[str, Any]:
    try:
        metadata = json.loads((data_dir / "metadata.json").read_text())
    except FileNotFoundError:
        raise UserError(f"{origin} has no metadata.json (looked in {data_dir}): pass a Minari dataset directory (the one holding data/)") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{origin}: metadata.json is not valid JSON ({exc}): re-create the dataset with Minari") from None
    version = str(metadata.get("minari_version", "unknown"))
    if not version.startswith(SUPPORTED_VERSIONS):
        raise UserError(f"{origin} was written by Minari {version}: only datasets of Minari 0.4.x and 0.5.x are supported")
    if metadata.get("data_format", "hdf5") != "hdf5":
        raise UserError(f"{origin} uses Minari's '{metadata['data_format']}' storage: only 'hdf5' is supported (re-create it with data_format='hdf5')")
    return metadata


def _flat_box(metadata: dict[str, Any], key: str, origin: str) -> dict[str, Any]:
    space = _json_field(metadata.get(key)) or {}
    kind, shape = space.get("type", "unknown"), space.get("shape") or []
    if kind != "Box" or len(shape) != 1:
        raise UserError(f"{origin} has a {kind} {key} of shape {shape}: only flat Box observation and action spaces are supported")
    return space


def _episode(group: h5py.Group, origin: str) -> dict[str, np.ndarray]:
    present = [key for key, item in group.items() if isinstance(item, h5py.Dataset)]
    require_columns(present, ("observations", "actions", "rewards", "terminations", "truncations"), origin)
    observations = group["observations"][()]
    steps = group["rewards"].shape[0]
    if observations.shape[0] != steps + 1:
        raise UserError(f"{origin} has {observations.shape[0]} observations for {steps} steps (expected {steps + 1}): the dataset is corrupt")
    return {
        "observations": observations[:-1],
        "actions": group["actions"][()],
        "rewards": group["rewards"][()],
        "next_observations": observations[1:],
        "terminals": group["terminations"][()],
        "timeouts": group["truncations"][()],
    }


def _to_unit_box(actions: np.ndarray, space: dict[str, Any], origin: str) -> np.ndarray:
    low = np.broadcast_to(np.asarray(space["low"], dtype=np.float64), actions.shape[1:])
    high = np.broadcast_to(np.asarray(space["high"], dtype=np.float64), actions.shape[1:])
    if np.all(low == -1.0) and np.all(high == 1.0):
        return actions
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
        raise UserError(f"{origin} has an unbounded action space: actions must be bounded to map them to [-1, 1]")
    if np.any(high <= low):
        raise UserError(f"{origin} has an action space with high <= low (low {space['low']}, high {space['high']}): "
                        "its metadata is damaged; re-create the dataset with Minari")
    return (2.0 * (actions - low) / (high - low) - 1.0).astype(np.float32)


def _json_field(value: Any) -> Any:
    """Minari stores spaces and specs as JSON strings inside metadata.json."""
    return json.loads(value) if isinstance(value, str) else value


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)
