"""The learner interface: everything the runtime knows about an algorithm.

An `Algorithm` is plain PyTorch. The driver (local or Ray) asks it how to act at a given
env step (`acting`), how many gradient steps are due (`updates_due`), which offline stages
run before interaction (`offline_stages`), and hands it batches (`update`). It never sees
networks or losses; the algorithm never sees actors, replay or transports.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch
from torch import nn

from distributed_o2o.algorithms.policies import Policy


@dataclass
class Batch:
    """Transitions on the learner's device. `terminals` is 1.0 only for true termination:
    a time-limit truncation never zeroes the bootstrap target."""

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_obs: torch.Tensor
    terminals: torch.Tensor

    @classmethod
    def from_numpy(cls, arrays: dict, device: torch.device | str) -> "Batch":
        def t(name: str) -> torch.Tensor:
            return torch.as_tensor(arrays[name], dtype=torch.float32, device=device)

        return cls(t("observations"), t("actions"), t("rewards"), t("next_observations"), t("terminals"))


@dataclass(frozen=True)
class ActingSpec:
    """How rollout workers choose actions right now.

    uniform: every action uniform in [-1, 1] (random start steps).
    Otherwise the broadcast policy acts: its mode if `deterministic`, else a sample; plus
    N(0, gaussian_sigma²) noise on the action, and with probability `epsilon` a uniform action.
    `store_raw_actions`: keep the unclipped sample in the replay (on-policy log-probs).
    """

    uniform: bool = False
    deterministic: bool = False
    gaussian_sigma: float = 0.0
    epsilon: float = 0.0
    store_raw_actions: bool = False


class OfflineData:
    """D_off as tensors on the learner's device, sampled uniformly without a host round trip."""

    def __init__(self, arrays: dict, device: torch.device | str, generator: torch.Generator | None = None):
        def t(name: str, dtype=torch.float32) -> torch.Tensor:
            return torch.as_tensor(arrays[name], dtype=dtype, device=device)

        self.obs, self.actions, self.rewards = t("observations"), t("actions"), t("rewards")
        self.next_obs, self.terminals = t("next_observations"), t("terminals")
        self.timeouts = t("timeouts")
        self.generator = generator

    def __len__(self) -> int:
        return self.obs.shape[0]

    def sample(self, batch_size: int) -> Batch:
        idx = torch.randint(len(self), (batch_size,), device=self.obs.device, generator=self.generator)
        return Batch(self.obs[idx], self.actions[idx], self.rewards[idx], self.next_obs[idx], self.terminals[idx])


@dataclass
class OfflineStage:
    """A stage run on D_off before interaction (re-evaluation, alignment, value regression).

    `step()` does one gradient step (sampling `Algorithm.offline_data` itself) and returns
    scalar metrics. The driver runs it `steps` times with progress, then caches the
    algorithm's state so a resumed or repeated run does not pay the stage twice.
    `phase`: where `step()` is `update_tensors(batch of D_off, phase)`, so the graphed learner
    can run the stage in CUDA graphs instead; None where the stage has no such form.
    """

    name: str
    steps: int
    step: Callable[[], dict[str, float]]
    phase: Hashable | None = None


@dataclass
class Rollout:
    """A whole on-policy fragment in time order (for O2PPO): arrays of shape (T, num_envs, ...)."""

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_obs: torch.Tensor
    terminals: torch.Tensor
    dones: torch.Tensor  # termination OR truncation: where the fragment's episodes end


class Algorithm(ABC):
    """An online fine-tuning method. Subclasses set `name` and implement the abstract methods."""

    name: str = ""
    policy_family: str = "tanh_gaussian"  # a pretrained policy is converted to this family
    # Checkpoint modules besides the policy that the method starts from, passed to the
    # constructor by name ("critic" is required where listed; others are used when present).
    pretrained_modules: tuple[str, ...] = ()
    on_policy: bool = False

    def __init__(self, config, obs_dim: int, act_dim: int, device: torch.device,
                 policy: Policy | None = None, critic: nn.Module | None = None):
        self.config, self.obs_dim, self.act_dim, self.device = config, obs_dim, act_dim, device
        self.offline_data: OfflineData | None = None

    def set_offline_data(self, data: OfflineData) -> None:
        """Called once, before `offline_stages`, when the run has a dataset."""
        self.offline_data = data

    # -- what the runtime asks
    def offline_stages(self) -> list[OfflineStage]:
        return []

    @abstractmethod
    def acting(self, env_step: int) -> ActingSpec:
        """How to act at online env step `env_step` (counted from 0, pre-sample steps included)."""

    @abstractmethod
    def acting_policy(self) -> Policy:
        """The policy whose weights the rollout workers act with."""

    def deployed_policy(self) -> Policy:
        """The policy the run delivers: evaluated, and checkpointed as "policy" (the acting one
        unless the method keeps another, e.g. a Polyak average)."""
        return self.acting_policy()

    def candidate_policy(self) -> Policy:
        """The learnt policy offered for deployment at each evaluation (`offer_candidate`); the
        deployed one itself where deployment is not validated."""
        return self.deployed_policy()

    def offer_candidate(self, score: float, scored: dict[str, torch.Tensor]) -> bool:
        """Called with the candidate's evaluation score where it is not the deployed policy, and
        its weights as scored (training may have gone on while the evaluation played); True when
        it became the deployed policy."""
        return False

    def evaluation_policies(self) -> tuple[dict[str, tuple[Policy, bool]], str | None]:
        """What an evaluation plays, by metric prefix: (policy, deterministic). The deployed
        policy's mode scores the run (""); the acting policy's samples (what the agent collects,
        "stochastic_"), the acting policy's mode where another is deployed ("online_") and a
        validated deployment's candidate ("candidate_") are logged beside it. Second: the prefix
        whose score `offer_candidate` takes (None without a validated deployment)."""
        acting, deployed, candidate = self.acting_policy(), self.deployed_policy(), self.candidate_policy()
        runs = {"": (deployed, True), "stochastic_": (acting, False)}
        if deployed is not acting:
            runs["online_"] = (acting, True)
        if candidate is deployed:
            return runs, None
        if candidate is not acting:
            runs["candidate_"] = (candidate, True)
        return runs, "online_" if candidate is acting else "candidate_"

    def updates_due(self, env_step: int) -> int:
        """Gradient steps owed per env step once `env_step` steps were collected (the UTD)."""
        return 0

    def offline_ratio(self, env_step: int) -> float:
        """Fraction of each batch drawn from D_off."""
        return 0.0

    def handover_step(self) -> int:
        """The online env step from which the learnt policy acts (before it the starting policy
        acts frozen: PORL's pre-sample, WSRL's warm-up); 0 where it acts from the start.
        Reports measure the dip after hand-over from here."""
        return 0

    def update(self, batch: Batch, env_step: int) -> dict[str, float]:
        """One gradient step on an off-policy batch; returns scalar metrics."""
        raise NotImplementedError

    def update_rollout(self, rollout: Rollout, env_step: int) -> dict[str, float]:
        """On-policy methods: all epochs on one rollout fragment."""
        raise NotImplementedError

    def on_evaluation(self, score: float, env_step: int, scored: dict[str, torch.Tensor]) -> None:
        """Called with each evaluation's mean return and the deployed policy's weights as scored
        (training may have gone on while the evaluation played; O2O keeps the best as π_ref)."""

    def handover(self, evaluate: Callable[[Policy], float]) -> dict[str, float]:
        """Called once after the offline stages, before interaction; `evaluate` scores a policy."""
        return {}

    # -- what the runtime saves
    @abstractmethod
    def modules(self) -> dict[str, nn.Module]:
        """Networks for the run's checkpoints; must include "policy"."""

    def state_dict(self) -> dict:
        """Everything needed to resume: networks, targets, optimisers, multipliers, counters."""
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> None:
        raise NotImplementedError
