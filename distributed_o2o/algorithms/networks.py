"""Building blocks shared by every algorithm: observation normalisation, MLPs, critic ensembles."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import nn


class ObsNormalizer(nn.Module):
    """(obs - mean) / std with frozen statistics, so a network takes raw observations.

    The statistics travel inside every policy and critic state dict, which is how they are
    "stored with the checkpoint and applied identically online".
    """

    def __init__(self, obs_dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(obs_dim))
        self.register_buffer("std", torch.ones(obs_dim))

    def set_stats(self, mean, std, eps: float = 1e-3) -> None:
        self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.std.copy_(torch.as_tensor(std, dtype=torch.float32) + eps)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.mean) / self.std


# Hidden-layer activations; ReLU is the project's, tanh is RLlib's default (converted policies).
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}


def mlp(in_dim: int, out_dim: int, hidden: Sequence[int], layer_norm: bool = False, activation: str = "relu") -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers.append(nn.Linear(in_dim, width))
        if layer_norm:
            layers.append(nn.LayerNorm(width))
        layers.append(ACTIVATIONS[activation]())
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


# Batches of at least SPLIT_MIN_ROWS rows (CQL's critic sees 31 actions per state: 7,936 rows) go
# through EnsembleLinear as ROW_CHUNKS chunks. The weight's gradient is a product whose output is
# small (in × out per member) and whose reduction runs over every row; cuBLAS gives such a product
# few thread blocks that each walk all the rows. Chunked, autograd computes it as K·ROW_CHUNKS
# products over a chunk each, then sums them: CQL's graphed update on an H200 went from 1,441 to
# 2,046 updates/s (docs/performance.md).
SPLIT_MIN_ROWS, ROW_CHUNKS = 4096, 8


class EnsembleLinear(nn.Module):
    """K independent linear layers applied in one batched matmul: (K, B, in) -> (K, B, out)."""

    def __init__(self, num_members: int, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_members, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(num_members, 1, out_dim))
        # Same init as nn.Linear, per member.
        bound = 1.0 / math.sqrt(in_dim)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, members: torch.Tensor | None = None) -> torch.Tensor:
        weight, bias = (self.weight, self.bias) if members is None else (self.weight.index_select(0, members),
                                                                         self.bias.index_select(0, members))
        if weight.shape[-1] == 1 and torch.compiler.is_compiling():
            # A one-output layer (a critic's readout) as products summed over the features, which
            # Inductor computes inside the kernels around it; as `bmm` it was a matrix-vector
            # kernel and a copy forward and two products backward. Eager keeps `bmm` (faster there).
            return (x * weight.transpose(1, 2)).sum(-1, keepdim=True) + bias
        num_members, rows, width = x.shape
        if rows >= SPLIT_MIN_ROWS and rows % ROW_CHUNKS == 0:
            chunks = x.reshape(num_members, ROW_CHUNKS, rows // ROW_CHUNKS, width)
            return (torch.matmul(chunks, weight.unsqueeze(1)) + bias.unsqueeze(1)).reshape(num_members, rows, -1)
        # Not baddbmm: Inductor leaves that to aten, which copies the bias into the output first
        # (one more kernel per layer); added after bmm, the bias joins the next fused kernel.
        return torch.bmm(x, weight) + bias


class EnsembleMLP(nn.Module):
    """K MLPs evaluated in one batched call (never a Python loop over members)."""

    def __init__(self, num_members: int, in_dim: int, out_dim: int, hidden: Sequence[int], layer_norm: bool):
        super().__init__()
        self.num_members = num_members
        layers: list[nn.Module] = []
        for width in hidden:
            layers.append(EnsembleLinear(num_members, in_dim, width))
            if layer_norm:
                # Normalises each member's features; the affine parameters are shared in shape
                # (width,) but the statistics are per member and sample.
                layers.append(nn.LayerNorm(width))
            layers.append(nn.ReLU())
            in_dim = width
        layers.append(EnsembleLinear(num_members, in_dim, out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, members: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, in) shared by all members, or (K, B, in) per member. Returns (K, B, out);
        with `members` only those (k, B, out)."""
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.num_members if members is None else len(members), -1, -1)
        if members is None:
            return self.net(x)
        for layer in self.net:
            x = layer(x, members) if isinstance(layer, EnsembleLinear) else layer(x)
        return x


class CriticEnsemble(nn.Module):
    """Q_1..Q_K(s, a) with LayerNorm, one batched forward. `forward` returns (K, B)."""

    def __init__(self, obs_dim: int, act_dim: int, num_critics: int = 2, hidden: Sequence[int] = (256, 256), layer_norm: bool = True):
        super().__init__()
        self.obs_dim, self.act_dim, self.num_critics = obs_dim, act_dim, num_critics
        self.hidden, self.layer_norm = tuple(hidden), layer_norm
        self.normalizer = ObsNormalizer(obs_dim)
        self.q = EnsembleMLP(num_critics, obs_dim + act_dim, 1, hidden, layer_norm)

    def arch(self) -> dict:
        return {"obs_dim": self.obs_dim, "act_dim": self.act_dim, "num_critics": self.num_critics,
                "hidden": list(self.hidden), "layer_norm": self.layer_norm}

    def forward(self, obs: torch.Tensor, act: torch.Tensor, members: torch.Tensor | None = None) -> torch.Tensor:
        x = torch.cat([self.normalizer(obs), act], dim=-1)
        return self.q(x, members).squeeze(-1)

    def min_q(self, obs: torch.Tensor, act: torch.Tensor, num_min: int) -> torch.Tensor:
        """min over `num_min` random members, evaluating only those (REDQ/RLPD subsampling)."""
        if num_min >= self.num_critics:
            return self(obs, act).min(dim=0).values
        return self(obs, act, random_members(self.num_critics, num_min, obs.device)).min(dim=0).values


def random_members(num_critics: int, num_min: int, device: torch.device) -> torch.Tensor:
    """A uniform random subset of `num_min` of `num_critics` member indices, drawn on `device`.
    A pair (REDQ's and RLPD's subset) is one index and another at a uniform offset from it, which
    the random draw's kernel computes; larger subsets take the `num_min` largest of K uniform
    draws (no randperm sort, but `topk` is a kernel of its own: 4% of a population's update)."""
    if num_min == 2:
        first = torch.randint(num_critics, (1,), device=device)
        return torch.cat([first, (first + 1 + torch.randint(num_critics - 1, (1,), device=device)) % num_critics])
    return torch.rand(num_critics, device=device).topk(num_min).indices


class ValueNetwork(nn.Module):
    """V(s): an MLP on normalised observations. `forward` returns (B,)."""

    def __init__(self, obs_dim: int, hidden: Sequence[int] = (256, 256), layer_norm: bool = False):
        super().__init__()
        self.obs_dim, self.hidden, self.layer_norm = obs_dim, tuple(hidden), layer_norm
        self.normalizer = ObsNormalizer(obs_dim)
        self.v = mlp(obs_dim, 1, hidden, layer_norm)

    def arch(self) -> dict:
        return {"obs_dim": self.obs_dim, "hidden": list(self.hidden), "layer_norm": self.layer_norm}

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.v(self.normalizer(obs)).squeeze(-1)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy that takes no gradients (targets, π_off, π_ref)."""
    return copy.deepcopy(module).requires_grad_(False)


@torch.no_grad()
def polyak_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """target <- (1 - tau) target + tau source, for parameters (buffers are copied)."""
    t_params, s_params = list(target.parameters()), list(source.parameters())
    torch._foreach_lerp_(t_params, s_params, tau)
    for t_buf, s_buf in zip(target.buffers(), source.buffers()):
        t_buf.copy_(s_buf)
