"""The in-memory offline dataset and the checks every reader and the writer share."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from distributed_o2o.data.scores import normalized_score
from distributed_o2o.envs import check_spaces, resolve_env_id
from distributed_o2o.errors import UserError

REQUIRED_COLUMNS = ("observations", "actions", "rewards", "terminals")
_WIDE_COLUMNS = ("observations", "actions", "next_observations")  # (N, width)
_STEP_COLUMNS = ("rewards", "terminals", "timeouts")  # (N,); (N, 1) is accepted
_FLOAT_COLUMNS = ("observations", "actions", "rewards", "next_observations")
ACTION_TOLERANCE = 1e-4  # float32 rounding of actions stored at the bounds


@dataclass
class OfflineDataset:
    """One row per transition (D4RL `qlearning_dataset` semantics).

    `timeouts[i]` marks the last transition of an episode whose data ends without termination
    (time limit, or the recording stopped), so episodes split on `terminals | timeouts`.
    `episode_returns` are the behaviour policy's returns: complete episodes only, or the
    partial one(s) when the data holds no complete episode.
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray
    episode_returns: np.ndarray
    source: str
    env_id: str | None = None
    ref_min_score: float | None = None
    ref_max_score: float | None = None
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def obs_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def act_dim(self) -> int:
        return int(self.actions.shape[1])

    def __len__(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def num_episodes(self) -> int:
        return int(self.episode_returns.shape[0])

    def summary(self) -> dict[str, Any]:
        """Plain-python (JSON-ready) overview."""
        return_mean = float(self.episode_returns.mean())
        return {
            "transitions": len(self),
            "episodes": self.num_episodes,
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "env_id": self.env_id,
            "source": self.source,
            "return_mean": return_mean,
            "return_std": float(self.episode_returns.std()),
            "ref_min_score": self.ref_min_score,
            "ref_max_score": self.ref_max_score,
            "normalized_score_mean": normalized_score(return_mean, dataset=self),
        }


def require_columns(present: Iterable[str], required: Iterable[str], origin: str) -> None:
    """Refuse data that lacks a column, naming what is missing and what is there."""
    present = sorted(present)
    missing = [name for name in required if name not in present]
    if missing:
        raise UserError(
            f"{origin} lacks {', '.join(missing)} (it has: {', '.join(present) or 'nothing'}): "
            "store one row per step under those names"
        )


def validate_columns(columns: Mapping[str, np.ndarray], origin: str) -> dict[str, np.ndarray]:
    """Check shapes, lengths and values; return float32 / bool copies with (N,) step columns."""
    out: dict[str, np.ndarray] = {}
    for name, raw in columns.items():
        array = np.asarray(raw)
        if name in _STEP_COLUMNS:
            if not (array.ndim == 1 or (array.ndim == 2 and array.shape[1] == 1)):
                raise UserError(f"{origin}: {name} has shape {array.shape}, expected (N,) or (N, 1): store one scalar per step")
            array = array.reshape(-1)
        elif name in _WIDE_COLUMNS and array.ndim != 2:
            raise UserError(f"{origin}: {name} has shape {array.shape}, expected (N, width): only flat vectors are supported")
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
            raise UserError(f"{origin}: {name} holds {array.dtype} values, not numbers: store it as a numeric array")
        if name not in _FLOAT_COLUMNS and array.dtype != bool:
            flags = np.isin(array, (0, 1))  # NaN is neither
            if not flags.all():
                row = int(np.argmin(flags))
                raise UserError(f"{origin}: {name} has the value {array[row]} at row {row}: a flag is 0/1 or true/false; fix "
                                "those rows")
        with np.errstate(over="ignore"):  # an overflow to inf is reported below, with its row
            out[name] = array.astype(np.float32 if name in _FLOAT_COLUMNS else bool)

    lengths = {name: array.shape[0] for name, array in out.items()}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{name} {length}" for name, length in lengths.items())
        raise UserError(f"{origin}: arrays differ in length ({listed}): every array needs one row per step")
    if next(iter(lengths.values())) == 0:
        raise UserError(f"{origin} is empty (0 steps): collect or point at a dataset with data")

    for name in _FLOAT_COLUMNS:
        if name in out:
            bad = ~np.isfinite(out[name])
            if bad.ndim == 2:
                bad = bad.any(axis=1)
            if bad.any():
                raise UserError(f"{origin}: {name} has NaN or inf at row {int(np.argmax(bad))}: fix or drop those rows")
    return out


def episode_returns(rewards: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Return of each complete episode (ending at a True in `ends`); the partial one if none is complete."""
    cumulative = np.concatenate([[0.0], np.cumsum(rewards, dtype=np.float64)])
    end_rows = np.flatnonzero(ends)
    if end_rows.size == 0:
        return cumulative[-1:]
    starts = np.concatenate([[0], end_rows[:-1] + 1])
    return cumulative[end_rows + 1] - cumulative[starts]


def choose_env_id(env_id: str | None, recorded: str | None, origin: str, allow_other_env: bool = False) -> tuple[str | None, bool]:
    """The env the data is used with: the caller's (an unknown id is an error), else the recorded
    one if it resolves, else None; and whether the data was recorded for that env (its reference
    scores then apply). Data recorded for another env is refused unless `allow_other_env`."""
    try:
        recorded_env = resolve_env_id(recorded) if recorded else None
    except UserError:
        recorded_env = None
    if env_id is None:
        return recorded_env, True
    env = resolve_env_id(env_id)
    if recorded_env is None or _unversioned(recorded_env) == _unversioned(env):
        return env, True
    if not allow_other_env:
        raise UserError(f"{origin} was recorded for {recorded_env}, not {env}: pass --env {recorded_env}, or set "
                        f"allow_other_env_dataset=true to use it with {env} (scores are then normalised with {env}'s references)")
    return env, False


def _unversioned(env_id: str) -> str:
    return re.sub(r"-v\d+$", "", env_id)


def check_dataset(dataset: OfflineDataset, origin: str) -> None:
    """Refuse actions outside the action space [-1, 1], or widths that differ from the env's
    (not checked when the env is unknown)."""
    low, high = float(dataset.actions.min()), float(dataset.actions.max())
    if not (np.isfinite(low) and np.isfinite(high)) or low < -1.0 - ACTION_TOLERANCE or high > 1.0 + ACTION_TOLERANCE:
        raise UserError(f"{origin}: actions range over [{low:.4g}, {high:.4g}], outside the action space [-1, 1]: store "
                        "actions scaled to [-1, 1] (low -> -1, high -> 1), the convention of every reader and env here")
    if dataset.env_id is not None:
        check_spaces(origin, dataset.obs_dim, dataset.act_dim, dataset.env_id)
