"""TD3's delayed policy updates (TD3, O2TD3's stage C, TD3+BC) without a host-device sync.

The actor step (and the Polyak step of the targets) comes after every `delay`-th critic step.
The count of critic steps is a device scalar. Eager updates decide on the host which steps
take the actor step (the phases ACTOR and CRITIC, one read of the count); a captured update
cannot, so in the phase MASKED every update takes the actor step and keeps its result only
where the count says it is due: the tensors it changes (parameters, targets, optimiser state)
are copied before and put back after where it is not. The kept steps are the eager ones,
exactly; only the metrics differ (the actor's are those of every update, applied or not).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

ACTOR, CRITIC, MASKED = "actor", "critic", "masked"


def copies(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return [t.clone() for t in tensors]


def keep_where(condition: torch.Tensor, tensors: list[torch.Tensor], before: list[torch.Tensor]) -> None:
    """Each tensor back to its value `before` where `condition` (a device bool scalar) is false."""
    for tensor, old in zip(tensors, before, strict=True):
        tensor.copy_(torch.where(condition, tensor, old))


def changed_tensors(modules: list[nn.Module], optimizers: list[torch.optim.Optimizer]) -> dict[tuple, torch.Tensor]:
    """The modules' parameters and the optimisers' state tensors, by a stable key."""
    tensors: dict[tuple, torch.Tensor] = {}
    for module in modules:
        for p in module.parameters():
            tensors[("param", id(p))] = p
    for i, opt in enumerate(optimizers):
        for group in opt.param_groups:
            for p in group["params"]:
                for name, value in opt.state.get(p, {}).items():
                    if isinstance(value, torch.Tensor):
                        tensors[("state", i, id(p), name)] = value
    return tensors


class PolicyDelay:
    def __init__(self, delay: int, device: torch.device):
        self.delay = delay
        self.count = torch.zeros((), dtype=torch.int64, device=device)  # critic steps taken
        self.copies, self.keep_where = copies, keep_where

    def compile(self) -> None:
        """The masked phase's copies and selections as a few fused kernels."""
        self.copies, self.keep_where = torch.compile(copies), torch.compile(keep_where)

    def eager_phase(self) -> str:
        """The phase of the next update decided on the host: ACTOR where its actor step is due."""
        return ACTOR if (int(self.count) + 1) % self.delay == 0 else CRITIC

    def after_critic_step(self, phase: str, actor_step: Callable[[], dict[str, torch.Tensor]],
                          modules: list[nn.Module], optimizers: list[torch.optim.Optimizer]) -> dict[str, torch.Tensor]:
        """Count the critic step just taken, then `actor_step()` as `phase` says; its metrics.
        `modules` and `optimizers`: what `actor_step` changes (for MASKED)."""
        self.count.add_(1)
        if phase == CRITIC:
            return {}
        if phase == ACTOR:
            return actor_step()
        with self.kept_if(self.count.remainder(self.delay) == 0, modules, optimizers):
            return actor_step()

    @contextmanager
    def kept_if(self, condition: torch.Tensor, modules: list[nn.Module],
                optimizers: list[torch.optim.Optimizer]) -> Iterator[None]:
        """What the block changes in `modules`' parameters and `optimizers`' state is kept only
        where `condition` holds. State an optimiser creates inside (its first step) was zeros
        before, as Adam's fresh state is."""
        before = changed_tensors(modules, optimizers)
        saved = dict(zip(before, self.copies(list(before.values()))))
        yield
        after = changed_tensors(modules, optimizers)
        with torch.no_grad():
            self.keep_where(condition, list(after.values()),
                            [saved[key] if key in saved else torch.zeros_like(t) for key, t in after.items()])

    def state_dict(self) -> int:
        return int(self.count)

    def load_state_dict(self, count: int) -> None:
        self.count.fill_(count)
