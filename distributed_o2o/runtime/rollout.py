"""A rollout worker: a vectorised set of envs acting with the latest broadcast policy
(broadcast.py: how the weights reach it)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from distributed_o2o.algorithms.base import ActingSpec
from distributed_o2o.algorithms.policies import build_policy
from distributed_o2o.envs import make_vector_env
from distributed_o2o.errors import UserError
from distributed_o2o.runtime.broadcast import WeightsInbox
from distributed_o2o.runtime.streams import hashed_seed, stream_seed


@dataclass
class Receipt:
    """What the driver learns of an inserted fragment: counts, finished episodes, and the mean
    policy version its transitions were acted with."""

    transitions: int
    version: float
    episode_returns: list[float]


@dataclass
class Fragment:
    """Transitions of `steps` vector steps, time-major: arrays of shape (T, num_envs, ...).

    Off-policy consumers flatten it; on-policy consumers keep the time order.
    """

    arrays: dict[str, np.ndarray]
    episode_returns: list[float] = field(default_factory=list)

    @property
    def num_transitions(self) -> int:
        return int(self.arrays["rewards"].size)

    def flat(self) -> dict[str, np.ndarray]:
        return {k: v.reshape(-1, *v.shape[2:]) for k, v in self.arrays.items()}

    def receipt(self) -> Receipt:
        version = float(self.arrays["policy_version"].mean()) if self.num_transitions else -1.0
        return Receipt(self.num_transitions, version, self.episode_returns)


class RolloutWorker:
    """Steps `num_envs` envs with batched CPU inference. Worker w's streams start from
    `seed + 1000 * w`, its env i from a seed hashed from that and i; evaluation uses other seeds and
    other env instances."""

    def __init__(self, env_id: str, num_envs: int, seed: int, policy_arch: dict, env_kwargs: dict | None = None, worker_index: int = 0):
        self.base_seed = seed + 1000 * worker_index
        self.envs = make_vector_env(env_id, num_envs, env_kwargs)
        self.num_envs = num_envs
        self.streams = worker_index * num_envs + np.arange(num_envs, dtype=np.int32)
        self.obs, self.rng, self.episode_return = self._start_streams(self.base_seed)
        self.policy = build_policy(policy_arch)
        self.policy.requires_grad_(False)
        self.inbox = WeightsInbox(self.policy)
        self.spec = ActingSpec(uniform=True)

    def _start_streams(self, seed: int) -> tuple[np.ndarray, np.random.Generator, np.ndarray]:
        """Reset env i from a seed hashed from `seed` and i, the action noise and torch from `seed`;
        episodes start anew. Returns the first observations, the noise generator and the episodes' returns."""
        obs, _ = self.envs.reset(seed=[hashed_seed(seed, i) for i in range(self.num_envs)])
        rng = np.random.default_rng(seed)
        torch.manual_seed(seed)
        return obs, rng, np.zeros(self.num_envs)

    def reseed(self, env_step: int) -> None:
        """A resumed run's streams, from the seed and the env step it resumes at (streams.py)."""
        self.obs, self.rng, self.episode_return = self._start_streams(stream_seed(self.base_seed, env_step))

    def set_weights(self, version: int, state_dict: dict | None, spec: ActingSpec) -> None:
        """Act with these weights (None: keep them) and this spec from the next collect on."""
        self.inbox.set(version, state_dict)
        self.spec = spec

    def offer_weights(self, version: int, state_dict: dict) -> None:
        """Newer weights, taken up at the next vector step, also by a `collect` already running
        (the Ray actor receives this call on a thread of its own, so it never waits for a chunk)."""
        self.inbox.offer(version, state_dict)

    def _actions(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(actions sent to the env, actions stored)."""
        spec, shape = self.spec, (self.num_envs, self.envs.single_action_space.shape[0])
        if spec.uniform:
            action = self.rng.uniform(-1.0, 1.0, size=shape).astype(np.float32)
            return action, action
        with torch.inference_mode():
            obs_t = torch.as_tensor(obs, dtype=torch.float32)
            if spec.deterministic or not self.policy.stochastic:
                raw = self.policy.mode(obs_t).numpy()
            else:
                raw = self.policy.explore(obs_t).numpy()
        if spec.gaussian_sigma > 0:
            raw = raw + self.rng.normal(0.0, spec.gaussian_sigma, size=shape).astype(np.float32)
        if spec.epsilon > 0:
            explore = self.rng.random(self.num_envs) < spec.epsilon
            raw = np.where(explore[:, None], self.rng.uniform(-1.0, 1.0, size=shape).astype(np.float32), raw)
        action = np.clip(raw, -1.0, 1.0)
        return action, (raw if spec.store_raw_actions else action)

    def collect(self, steps: int) -> Fragment:
        """Step every env `steps` times; returns (steps, num_envs, ...) arrays."""
        cols: dict[str, list[np.ndarray]] = {k: [] for k in ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")}
        returns, versions = [], []
        for _ in range(steps):
            self.inbox.take_offered()
            versions.append(self.inbox.version)
            action, stored = self._actions(self.obs)
            next_obs, reward, terminated, truncated, info = self.envs.step(action)
            if not np.all(np.isfinite(reward)):
                raise UserError(f"the env returned a non-finite reward ({reward}): fix the env or its reward wrapper")
            true_next = next_obs.copy()
            if "_final_obs" in info:  # SAME_STEP autoreset: next_obs is already a reset obs
                for i in np.flatnonzero(info["_final_obs"]):
                    true_next[i] = info["final_obs"][i]
            cols["observations"].append(self.obs)
            cols["actions"].append(stored)
            cols["rewards"].append(reward)
            cols["next_observations"].append(true_next)
            cols["terminals"].append(terminated)
            cols["timeouts"].append(truncated & ~terminated)
            self.episode_return += reward
            for i in np.flatnonzero(terminated | truncated):
                returns.append(float(self.episode_return[i]))
                self.episode_return[i] = 0.0
            self.obs = next_obs
        arrays = {k: np.stack(v).astype(np.float32) for k, v in cols.items()}
        arrays["policy_version"] = np.repeat(np.asarray(versions, dtype=np.int32)[:, None], self.num_envs, axis=1)
        arrays["stream"] = np.repeat(self.streams[None], steps, axis=0)
        return Fragment(arrays, returns)

    def close(self) -> None:
        self.envs.close()
