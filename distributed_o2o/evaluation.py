"""Evaluation: separate env instances, deterministic actions (the mode) unless asked, N whole episodes."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from distributed_o2o.algorithms.policies import Policy
from distributed_o2o.envs import make_vector_env


@dataclass
class EvalResult:
    return_mean: float
    return_std: float
    length_mean: float
    episodes: int
    returns: list[float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_policy(policy: Policy, env_id: str, episodes: int, seed: int = 10_000,
                    env_kwargs: dict | None = None, num_envs: int | None = None, deterministic: bool = True) -> EvalResult:
    """Run `episodes` complete episodes with the policy's mode (or, not `deterministic`, its
    samples: what the agent collects) on fresh envs seeded from `seed`.

    Envs run side by side (batched inference); each env stops being counted once the episodes
    still owed are covered, so exactly `episodes` returns come back.
    """
    num_envs = min(episodes, num_envs or 16)
    envs = make_vector_env(env_id, num_envs, env_kwargs)
    try:
        obs, _ = envs.reset(seed=[seed + i for i in range(num_envs)])
        returns, lengths = [], []
        running = np.zeros(num_envs)
        steps = np.zeros(num_envs, dtype=np.int64)
        # Env i contributes at most `quota[i]` episodes, so the set of episodes does not depend on speed.
        quota = np.full(num_envs, episodes // num_envs)
        quota[: episodes % num_envs] += 1
        done_count = np.zeros(num_envs, dtype=np.int64)
        while len(returns) < episodes:
            action = policy.act(obs, deterministic=deterministic)
            obs, reward, terminated, truncated, _ = envs.step(action)
            running += reward
            steps += 1
            for i in np.flatnonzero(terminated | truncated):
                if done_count[i] < quota[i]:
                    returns.append(float(running[i]))
                    lengths.append(int(steps[i]))
                    done_count[i] += 1
                running[i], steps[i] = 0.0, 0
        return EvalResult(float(np.mean(returns)), float(np.std(returns)), float(np.mean(lengths)), episodes, returns)
    finally:
        envs.close()
