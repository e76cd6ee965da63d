"""Behaviour cloning, and the `Pretrainer` interface every offline method implements.

- bc: TanhGaussian policy by Gaussian NLL (maximise log π(a|s) of dataset actions).
- bc-det: Deterministic policy by MSE to dataset actions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable

import torch
from torch import nn

from distributed_o2o.algorithms.base import Batch
from distributed_o2o.algorithms.capturable import Capturable, next_phase
from distributed_o2o.algorithms.optim import adam, optimizer_step, to_floats
from distributed_o2o.algorithms.policies import DeterministicPolicy, Policy, TanhGaussianPolicy


class Pretrainer(Capturable, ABC):
    """One offline method: its networks, optimisers and one gradient step on a D_off batch.

    The step is `Capturable` (`prepare` + `update_tensors`), so on a GPU the graphed learner
    runs it (`offline/train.py`); `step` runs it eagerly.
    """

    def __init__(self, config, obs_dim: int, act_dim: int, device: torch.device | str):
        self.config, self.obs_dim, self.act_dim, self.device = config, obs_dim, act_dim, device

    def step(self, batch: Batch) -> dict[str, float]:
        """One gradient step; returns scalar metrics."""
        return to_floats(self.update_tensors(batch, self.eager_phase()))

    def eager_phase(self) -> Hashable:
        """The phase `step` runs (decided on the host, where a captured update cannot): a
        `PhaseCycle`'s next one, counted as taken."""
        return next_phase(self.prepare(0))

    @abstractmethod
    def update_tensors(self, batch: Batch, phase: Hashable) -> dict[str, torch.Tensor]:
        """One gradient step with no host-device sync; metric tensors."""

    @abstractmethod
    def optimizers(self) -> list[torch.optim.Optimizer]:
        """Every optimiser the step uses."""

    @abstractmethod
    def modules(self) -> dict[str, nn.Module]:
        """The networks a checkpoint keeps: "policy", and "critic" / "value" where there are."""

    def networks(self) -> list[nn.Module]:
        """Every network that reads observations, targets included: all get the dataset's statistics."""
        return list(self.modules().values())


class _CloningPretrainer(Pretrainer):
    """Supervised regression of a `policy_class` policy onto the dataset actions."""

    policy_class: type[Policy]
    compiled = ("loss",)

    def __init__(self, config, obs_dim, act_dim, device):
        super().__init__(config, obs_dim, act_dim, device)
        self.policy = self.policy_class(obs_dim, act_dim, config.hidden).to(device)
        self.optimizer = adam(self.policy.parameters(), config.lr, device)

    @abstractmethod
    def loss(self, batch: Batch) -> torch.Tensor:
        """The cloning loss on one batch."""

    def update_tensors(self, batch: Batch, phase: Hashable) -> dict[str, torch.Tensor]:
        loss = self.loss(batch)
        optimizer_step(self.optimizer, loss, self.policy.parameters())
        return {"actor_loss": loss.detach()}

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer]

    def modules(self) -> dict[str, nn.Module]:
        return {"policy": self.policy}


class BCPretrainer(_CloningPretrainer):
    policy_class = TanhGaussianPolicy

    def loss(self, batch: Batch) -> torch.Tensor:
        # log_prob clips actions to ±(1 - 1e-6), so dataset actions at the bounds stay finite.
        return -self.policy.log_prob(batch.obs, batch.actions).mean()


class BCDetPretrainer(_CloningPretrainer):
    policy_class = DeterministicPolicy

    def loss(self, batch: Batch) -> torch.Tensor:
        return (self.policy.mode(batch.obs) - batch.actions).pow(2).mean()
