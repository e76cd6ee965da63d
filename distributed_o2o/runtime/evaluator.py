"""The evaluator component: its own envs, scoring weights with the policy's mode (or its samples)."""

from __future__ import annotations

import numpy as np
import torch

from distributed_o2o.algorithms.policies import build_policy
from distributed_o2o.data.scores import normalized_score
from distributed_o2o.evaluation import evaluate_policy


def start_state_seed(seed: int, env_step: int) -> int:
    """The seed of the start states of the evaluation at `env_step` by an evaluator seeded `seed`
    (its episodes are seeded from it upwards). Hashed, not `seed + env_step`: with that, runs seeded
    s and s + 1 shared 9 of every 10 episodes, so a study's seeds were not independent measurements
    (π_pre, delivered by several seeds at once, scored nearly alike in all of them)."""
    return int(np.random.SeedSequence([seed, env_step]).generate_state(1)[0] >> 1)


class Evaluator:
    def __init__(self, env_id: str, episodes: int, seed: int, env_kwargs: dict | None = None,
                 ref_min: float | None = None, ref_max: float | None = None):
        self.env_id, self.episodes, self.seed, self.env_kwargs = env_id, episodes, seed, env_kwargs
        self.ref_min, self.ref_max = ref_min, ref_max

    def evaluate(self, policy_arch: dict, state_dict: dict, deterministic: bool = True, env_step: int = 0) -> dict:
        """Mean/std return, normalised score (None without references) and env steps spent."""
        # Start states seeded by the env step: each evaluation point has its own, the policies
        # scored at one point (deployed, acting) share them, and a resumed run does not repeat them.
        # The policy's construction and sampled actions draw from a forked torch generator: an
        # evaluation never moves the training's random stream (local mode shares the process).
        start_seed = start_state_seed(self.seed, env_step)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(start_seed)
            policy = build_policy(policy_arch)
            policy.load_state_dict(state_dict)
            result = evaluate_policy(policy, self.env_id, self.episodes, seed=start_seed,
                                     env_kwargs=self.env_kwargs, deterministic=deterministic)
        record = result.to_dict()
        record["env_steps"] = int(round(result.length_mean * result.episodes))
        record["normalized_score"] = None
        if self.ref_min is not None and self.ref_max is not None:
            record["normalized_score"] = float(normalized_score(result.return_mean, ref_min=self.ref_min, ref_max=self.ref_max))
        return record
