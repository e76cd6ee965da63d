"""Optimisation helpers shared by every family (SAC, TD3, PPO, the O2O constraint): optimiser
steps, the capturable Adam, freezing a module inside a loss, metric tensors to floats, a cosine
LR schedule stepped on the device."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn


def optimizer_step(optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer], loss: torch.Tensor,
                   params: Iterable[torch.Tensor]) -> None:
    """Backpropagate `loss` into `params` only (the critic takes no gradient from the actor
    loss), then step the optimiser(s). A population's loss is one per agent: their sum, whose
    gradient in each agent's parameters is that agent's own."""
    optimizers = list(optimizer) if isinstance(optimizer, Sequence) else [optimizer]
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    loss.backward(backward_seed(loss), inputs=list(params))
    for opt in optimizers:
        opt.step()


_SEEDS: dict[tuple, torch.Tensor] = {}


def backward_seed(loss: torch.Tensor) -> torch.Tensor:
    """Ones shaped as `loss`: the gradient of its sum, where a backward starts. Made once per shape
    and device (`backward()` fills a new one every time, and a population's `loss.sum()` adds a
    kernel: two kernels in each captured update); a fresh one while a CUDA graph is being captured,
    whose memory must not outlive the graph's pool."""
    key = (tuple(loss.shape), loss.dtype, loss.device)
    seed = _SEEDS.get(key)
    if seed is None:
        seed = torch.ones_like(loss)
        if not (loss.is_cuda and torch.cuda.is_current_stream_capturing()):
            _SEEDS[key] = seed
    return seed


def adam(params: Iterable[torch.Tensor], lr: float, device: torch.device) -> torch.optim.Adam:
    """Adam; on CUDA fused (one kernel per step) and capturable (its step count lives on the
    device), so a whole update can be captured in a CUDA graph. CPU keeps torch's default."""
    if torch.device(device).type != "cuda":
        return torch.optim.Adam(params, lr=lr)
    return torch.optim.Adam(params, lr=lr, fused=True, capturable=True)


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Inside, `module`'s parameters take no gradient: a loss built here treats it as a fixed
    function (the actor's Q), so its backward skips their weight gradients altogether."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


def optimizer_params(optimizers: Iterable[torch.optim.Optimizer]) -> list[torch.Tensor]:
    return [p for opt in optimizers for group in opt.param_groups for p in group["params"]]


def stack_scalars(values: Iterable[torch.Tensor], shape: Sequence[int] = ()) -> torch.Tensor:
    """Metric tensors of `shape` (scalars by default) stacked as one detached float tensor, in their order."""
    return torch.stack([v.detach().float().reshape(shape) for v in values])


def to_floats(metrics: dict[str, torch.Tensor | float]) -> dict[str, float]:
    """Tensor metrics to Python floats with a single device sync."""
    tensors = {k: v for k, v in metrics.items() if isinstance(v, torch.Tensor)}
    values = stack_scalars(tensors.values()).tolist() if tensors else []
    floats = dict(zip(tensors, values))
    return {k: floats[k] if k in floats else float(v) for k, v in metrics.items()}


class DeviceLearningRates:
    """An optimiser's learning rates as device tensors, which Adam reads on CUDA, so updates
    captured in CUDA graphs see each new value. Restoring the optimiser replaces its param groups
    (and their rates) with the saved ones: `install` puts these tensors back (on the host,
    outside any capture)."""

    def __init__(self, optimizer: torch.optim.Optimizer, device: torch.device):
        self.optimizer = optimizer
        self.base = [float(group["lr"]) for group in optimizer.param_groups]
        self.rates = [torch.tensor(rate, device=device) for rate in self.base]
        self.install()

    def install(self) -> None:
        for group, rate in zip(self.optimizer.param_groups, self.rates, strict=True):
            if group["lr"] is not rate:
                group["lr"] = rate

    def scale(self, factor: float | torch.Tensor) -> None:
        """Every rate := its configured value x `factor` (a device scalar inside a captured update)."""
        for rate, base in zip(self.rates, self.base):
            rate.copy_(base * factor) if isinstance(factor, torch.Tensor) else rate.fill_(base * factor)


class LinearWarmup:
    """The learning rate of `optimizer` rises linearly from 0 to its configured value over `steps`
    (counted by the caller), set on the host before an update (`set_progress`); on CUDA through
    `DeviceLearningRates`."""

    def __init__(self, optimizer: torch.optim.Optimizer, steps: int, device: torch.device):
        self.optimizer, self.steps = optimizer, steps
        self.base = [float(group["lr"]) for group in optimizer.param_groups]
        self.device_rates = DeviceLearningRates(optimizer, device) if torch.device(device).type == "cuda" else None
        self.fraction: float | None = None

    def set_progress(self, done: int) -> None:
        fraction = min(max(done / self.steps, 0.0), 1.0)
        if self.device_rates is None:
            for group, base in zip(self.optimizer.param_groups, self.base):
                group["lr"] = base * fraction
        else:
            self.device_rates.install()  # after a restore
            if fraction != self.fraction:
                self.device_rates.scale(fraction)
        self.fraction = fraction


class CosineLR:
    """torch's CosineAnnealingLR(optimizer, steps) (to 0), stepped inside an update with no host
    sync. On the CPU torch's scheduler steps the float LR, as ever; on CUDA the rates are
    `DeviceLearningRates` written from a device step count by the schedule's closed form, so a
    captured update advances them too (same LRs as torch's recursive form, to float32 rounding).
    Restore the optimiser before the schedule: the schedule's restore re-installs its rates."""

    def __init__(self, optimizer: torch.optim.Optimizer, steps: int, device: torch.device):
        self.steps = steps
        self.scheduler = self.device_rates = None
        if torch.device(device).type != "cuda":
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
            return
        self.count = torch.zeros((), device=device)
        self.device_rates = DeviceLearningRates(optimizer, device)

    def step(self) -> None:
        if self.scheduler is not None:
            self.scheduler.step()
            return
        self.count.add_(1)
        self.device_rates.scale((1.0 + torch.cos(self.count * (math.pi / self.steps))) / 2.0)

    def state_dict(self) -> dict:
        return self.scheduler.state_dict() if self.scheduler is not None else {"count": float(self.count)}

    def load_state_dict(self, state: dict) -> None:
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state)
            return
        self.count.fill_(state["count"])
        self.device_rates.install()
        self.device_rates.scale((1.0 + math.cos(state["count"] * math.pi / self.steps)) / 2.0)
