"""SAC-family baselines: SAC from scratch, naive fine-tuning, RLPD and WSRL.

Each is `SACCore` with its config's schedule; what differs is stated per class.
"""

from __future__ import annotations

import torch

from distributed_o2o.algorithms.networks import CriticEnsemble
from distributed_o2o.algorithms.policies import Policy
from distributed_o2o.algorithms.sac import SACCore
from distributed_o2o.errors import UserError


class SAC(SACCore):
    """SAC from scratch: uniform actions for `random_start_steps`, updates from `learning_starts`."""

    name = "sac"


class NaiveFinetune(SACCore):
    """Naive fine-tuning: the offline actor AND critic are loaded, then plain SAC."""

    name = "naive"
    pretrained_modules = ("critic",)

    def __init__(self, config, obs_dim: int, act_dim: int, device: torch.device,
                 policy: Policy | None = None, critic: CriticEnsemble | None = None):
        if critic is None:
            raise UserError("naive fine-tuning loads the offline critic too, but the checkpoint has none: "
                            "pretrain with a critic-based method (e.g. cql) or use porl/wsrl")
        super().__init__(config, obs_dim, act_dim, device, policy, critic)


class RLPD(SACCore):
    """RLPD: no pretraining, symmetric D_off/D_on batches, UTD 20, 10 LayerNorm critics with a
    min over 2 random members, uniform random start steps (all from `RLPDConfig`)."""

    name = "rlpd"


class WSRL(SACCore):
    """WSRL: the frozen π_pre acts (samples) for `warmup_steps` with no updates; then SAC with a
    fresh LayerNorm ensemble at high UTD on online data only."""

    name = "wsrl"

    def updates_due(self, env_step: int) -> int:
        return 0 if env_step < self.config.warmup_steps else super().updates_due(env_step)

    def handover_step(self) -> int:
        return self.config.warmup_steps
