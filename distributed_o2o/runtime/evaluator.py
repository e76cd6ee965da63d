"""The evaluator component: its own envs, scoring weights with the policy's mode (or its samples)."""

from __future__ import annotations

import torch

from distributed_o2o.algorithms.policies import build_policy
from distributed_o2o.data.scores import normalized_score
from distributed_o2o.evaluation import evaluate_policy
from distributed_o2o.runtime.streams import EVALUATION_STREAM, hashed_seed


class Evaluator:
    def __init__(self, env_id: str, episodes: int, seed: int, env_kwargs: dict | None = None,
                 ref_min: float | None = None, ref_max: float | None = None):
        self.env_id, self.episodes, self.seed, self.env_kwargs = env_id, episodes, seed, env_kwargs
        self.ref_min, self.ref_max = ref_min, ref_max

    def evaluate(self, policy_arch: dict, state_dict: dict, deterministic: bool = True, env_step: int = 0) -> dict:
        """Mean/std return, normalised score (None without references) and env steps spent."""
        # Start states hashed from the evaluator's seed and the env step: each evaluation point has
        # its own, the policies scored at one point (deployed, acting) share them, a resumed run
        # does not repeat them, and the runs of a study (neighbouring seeds) never share one.
        # The policy's construction and sampled actions draw from a forked torch generator: an
        # evaluation never moves the training's random stream (local mode shares the process).
        start_seed = hashed_seed(self.seed, env_step, EVALUATION_STREAM)
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
