"""Collect a dataset by running a policy in vectorised envs.

Transitions are buffered per env and written out one whole episode at a time, so episodes
are contiguous rows, as D4RL-layout readers expect.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from rich.console import Console

from distributed_o2o.data.dataset import OfflineDataset, validate_columns
from distributed_o2o.envs import make_vector_env, resolve_env_id
from distributed_o2o.errors import UserError
from distributed_o2o.progress import progress_bar

_COLUMNS = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")


def uniform_actor(act_dim: int, seed: int) -> Callable[[np.ndarray], np.ndarray]:
    """The 'random' behaviour policy: actions uniform in [-1, 1], from a generator seeded by `seed`."""
    rng = np.random.default_rng(seed)

    def act(obs: np.ndarray) -> np.ndarray:
        return rng.uniform(-1.0, 1.0, size=(obs.shape[0], act_dim))

    return act


def collect_dataset(
    env_id: str,
    act_fn: Callable[[np.ndarray], np.ndarray],
    steps: int,
    *,
    seed: int = 0,
    num_envs: int = 4,
    env_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
) -> OfflineDataset:
    """Run `act_fn` (obs batch -> actions in [-1, 1]) for `steps` transitions in total.

    Env i is reset with seed `seed + i`. Episodes still running at the end are kept, their
    last step marked as a timeout; `episode_returns` count complete episodes only, unless
    none completed.
    """
    if steps < 1 or num_envs < 1:
        raise UserError(f"cannot collect {steps} steps with {num_envs} envs: both must be at least 1")
    envs = make_vector_env(env_id, num_envs, env_kwargs)
    buffers: list[list[tuple]] = [[] for _ in range(num_envs)]
    episodes: list[list[tuple]] = []
    returns: list[float] = []
    collected = 0
    try:
        obs, _ = envs.reset(seed=[seed + i for i in range(num_envs)])
        with progress_bar(Console(stderr=True), progress) as bar:
            task = bar.add_task(f"collecting {env_id}", total=steps)
            while collected < steps:
                actions = np.clip(np.asarray(act_fn(obs.astype(np.float32)), dtype=np.float32), -1.0, 1.0)
                next_obs, rewards, terminated, truncated, info = envs.step(actions)
                ended = info.get("_final_obs", np.zeros(num_envs, dtype=bool))
                taken = min(num_envs, steps - collected)  # the last batch may be cut short
                for i in range(taken):
                    final = info["final_obs"][i] if ended[i] else next_obs[i]
                    buffers[i].append((obs[i], actions[i], rewards[i], final, terminated[i], truncated[i]))
                    if terminated[i] or truncated[i]:
                        episodes.append(buffers[i])
                        returns.append(float(sum(step[2] for step in buffers[i])))
                        buffers[i] = []
                collected += taken
                obs = next_obs
                bar.advance(task, taken)
    finally:
        envs.close()

    partial = [buffer for buffer in buffers if buffer]
    for buffer in partial:
        buffer[-1] = (*buffer[-1][:5], True)
    if not returns:
        returns = [float(sum(step[2] for step in buffer)) for buffer in partial]
    rows = [step for episode in episodes + partial for step in episode]
    columns = dict(zip(_COLUMNS, (np.asarray(column) for column in zip(*rows))))
    return OfflineDataset(
        **validate_columns(columns, f"data collected in {env_id}"),
        episode_returns=np.asarray(returns, dtype=np.float64),
        source="o2o",
        env_id=resolve_env_id(env_id),
        attrs={"seed": seed, "num_envs": num_envs},
    )
