"""The three policy families and the conversions between them.

All families share one layout: observations are normalised, an MLP trunk produces the
pre-tanh mean u(s) (and, for a state-dependent TanhGaussian, the log-std), and the action is
in [-1, 1]. Because the mode is tanh(u(s)) in every family, converting between families
keeps the mode exactly: a conversion copies the trunk and only changes how noise is added.

- TanhGaussian (SAC, CQL): a = tanh(u), u ~ N(u(s), σ(s)).
- Deterministic (TD3, TD3+BC, BC-MSE): a = tanh(u(s)).
- Gaussian (IQL, PPO): a ~ N(tanh(u(s)), σ) with a state-independent σ; the env gets it clipped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distributed_o2o.algorithms.networks import ObsNormalizer, mlp

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0
# mean_output="action" (a converted policy whose MLP outputs the action mean itself, clipped to
# the bounds): u = atanh(clip(m)) with this clip, so tanh(u) gives the clipped mean back.
_ACTION_CLIP = 1.0 - 1e-6
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _normal_log_prob(x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """Sum over action dims of log N(x; mean, exp(log_std)^2)."""
    z = (x - mean) * torch.exp(-log_std)
    return (-0.5 * z.pow(2) - log_std - _HALF_LOG_2PI).sum(-1)


def _tanh_log_det(u: torch.Tensor) -> torch.Tensor:
    """Sum of log(1 - tanh(u)^2), in a form that stays finite for large |u|."""
    return (2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))).sum(-1)


class Policy(nn.Module):
    """Common layout of every family. Subclasses set `family` and the noise model."""

    family: str = ""
    stochastic: bool = True

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (256, 256), head_width: int | None = None,
                 activation: str = "relu", mean_output: str = "pre_tanh"):
        super().__init__()
        if mean_output not in ("pre_tanh", "action"):
            raise ValueError(f"mean_output must be 'pre_tanh' or 'action', not {mean_output!r}")
        self.obs_dim, self.act_dim, self.hidden, self.activation = obs_dim, act_dim, tuple(hidden), activation
        self.mean_output = mean_output
        self.normalizer = ObsNormalizer(obs_dim)
        self.net = mlp(obs_dim, head_width or act_dim, hidden, activation=activation)

    def arch(self) -> dict:
        """Constructor arguments, stored in checkpoint metadata to rebuild the module."""
        return {"family": self.family, "obs_dim": self.obs_dim, "act_dim": self.act_dim, "hidden": list(self.hidden),
                "activation": self.activation, "mean_output": self.mean_output}

    def _head(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalizer(obs))

    def _pre_tanh(self, mean: torch.Tensor) -> torch.Tensor:
        """u(s) from the head's mean outputs (see `_ACTION_CLIP`)."""
        return mean if self.mean_output == "pre_tanh" else torch.atanh(mean.clamp(-_ACTION_CLIP, _ACTION_CLIP))

    def pre_tanh_mean(self, obs: torch.Tensor) -> torch.Tensor:
        return self._pre_tanh(self._head(obs)[..., : self.act_dim])

    def mode(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.pre_tanh_mean(obs))

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterised action and its log-probability."""
        raise NotImplementedError(f"{self.family} policies have no sampling distribution")

    def explore(self, obs: torch.Tensor) -> torch.Tensor:
        """An action drawn as `sample` draws it, without its log-probability (acting)."""
        raise NotImplementedError(f"{self.family} policies have no sampling distribution")

    def mean_and_log_std(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The Gaussian's mean and log-std (before the tanh, where a family has one)."""
        raise NotImplementedError(f"{self.family} policies have no sampling distribution")

    def _draw(self, obs: torch.Tensor, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x, mean, log_std), x = mean + exp(log_std)·noise, noise ~ N(0, I) (drawn here unless given)."""
        mean, log_std = self.mean_and_log_std(obs)
        return mean + torch.exp(log_std) * (torch.randn_like(mean) if noise is None else noise), mean, log_std

    def log_prob(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{self.family} policies have no log-probability")

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """Numpy in, numpy out: (B, d_o) -> (B, d_a) in [-1, 1], or one observation (d_o,) -> (d_a,).
        Samples an action (as SB3's `predict` does by default); `deterministic=True`: the mode."""
        device = next(self.parameters()).device
        obs_t = torch.as_tensor(np.asarray(obs, dtype=np.float32), device=device)
        action = self.mode(obs_t) if deterministic or not self.stochastic else self.explore(obs_t)
        return action.clamp(-1.0, 1.0).cpu().numpy()


class TanhGaussianPolicy(Policy):
    family = "tanh_gaussian"

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (256, 256),
                 state_dependent_std: bool = True, init_log_std: float = 0.0, activation: str = "relu",
                 mean_output: str = "pre_tanh"):
        super().__init__(obs_dim, act_dim, hidden, head_width=2 * act_dim if state_dependent_std else act_dim,
                         activation=activation, mean_output=mean_output)
        self.state_dependent_std = state_dependent_std
        self.log_std_param = None if state_dependent_std else nn.Parameter(torch.full((act_dim,), float(init_log_std)))

    def arch(self) -> dict:
        return {**super().arch(), "state_dependent_std": self.state_dependent_std}

    def mean_and_log_std(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        head = self._head(obs)
        mean = self._pre_tanh(head[..., : self.act_dim])
        log_std = head[..., self.act_dim:] if self.state_dependent_std else self.log_std_param.expand_as(mean)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def sample(self, obs, noise: torch.Tensor | None = None):
        """`noise`: the standard normal draw, where the caller draws it (default: drawn here)."""
        u, mean, log_std = self._draw(obs, noise)
        return torch.tanh(u), _normal_log_prob(u, mean, log_std) - _tanh_log_det(u)

    def explore(self, obs):
        return torch.tanh(self._draw(obs)[0])

    def log_prob(self, obs, action):
        mean, log_std = self.mean_and_log_std(obs)
        u = torch.atanh(action.clamp(-1.0 + 1e-6, 1.0 - 1e-6))
        return _normal_log_prob(u, mean, log_std) - _tanh_log_det(u)


class DeterministicPolicy(Policy):
    family = "deterministic"
    stochastic = False


class GaussianPolicy(Policy):
    family = "gaussian"

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (256, 256), init_log_std: float = 0.0,
                 activation: str = "relu", mean_output: str = "pre_tanh"):
        super().__init__(obs_dim, act_dim, hidden, activation=activation, mean_output=mean_output)
        self.log_std = nn.Parameter(torch.full((act_dim,), float(init_log_std)))

    def mean_and_log_std(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.mode(obs)
        return mean, self.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX).expand_as(mean)

    def sample(self, obs):
        action, mean, log_std = self._draw(obs)
        return action, _normal_log_prob(action, mean, log_std)

    def explore(self, obs):
        return self._draw(obs)[0]

    def log_prob(self, obs, action):
        mean, log_std = self.mean_and_log_std(obs)
        return _normal_log_prob(action, mean, log_std)

    def entropy(self) -> torch.Tensor:
        log_std = self.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
        return (log_std + 0.5 + _HALF_LOG_2PI).sum()


FAMILIES: dict[str, type[Policy]] = {cls.family: cls for cls in (TanhGaussianPolicy, DeterministicPolicy, GaussianPolicy)}


def build_policy(arch: dict) -> Policy:
    """Rebuild a policy from `Policy.arch()`."""
    kwargs = dict(arch)
    family = kwargs.pop("family")
    if family not in FAMILIES:
        raise ValueError(f"unknown policy family '{family}'; known: {sorted(FAMILIES)}")
    return FAMILIES[family](**kwargs)


def convert_policy(source: Policy, family: str, init_std: float = 0.1) -> Policy:
    """The same trunk as `family`; the mode tanh(u(s)) is unchanged.

    Noise of the target: a state-independent std. It is the source's own std where the source
    has a state-independent one, else `init_std` (σ0 of ALGORITHMS.md, 0.1 by default).
    """
    if family == source.family:
        return source
    source_log_std = getattr(source, "log_std", None)
    if source_log_std is None:
        source_log_std = getattr(source, "log_std_param", None)
    log_std = float(math.log(init_std)) if source_log_std is None else source_log_std.detach().clone()
    kwargs: dict = {}
    if family == TanhGaussianPolicy.family:
        kwargs = {"state_dependent_std": False}
    target = FAMILIES[family](source.obs_dim, source.act_dim, source.hidden, activation=source.activation,
                              mean_output=source.mean_output, **kwargs)
    target.normalizer.load_state_dict(source.normalizer.state_dict())
    src_layers = [m for m in source.net if isinstance(m, nn.Linear)]
    dst_layers = [m for m in target.net if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for src, dst in zip(src_layers[:-1], dst_layers[:-1]):
            dst.load_state_dict(src.state_dict())
        # Last layer: keep the rows that produce the pre-tanh mean.
        dst_layers[-1].weight.copy_(src_layers[-1].weight[: source.act_dim])
        dst_layers[-1].bias.copy_(src_layers[-1].bias[: source.act_dim])
        std_param = getattr(target, "log_std", None)
        if std_param is None:
            std_param = getattr(target, "log_std_param", None)
        if std_param is not None:
            std_param.copy_(torch.as_tensor(log_std).expand_as(std_param))
    return target
