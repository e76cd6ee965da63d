"""What the graphed learner (runtime/graphed.py) needs of an algorithm: an update it can capture.

A `Capturable` splits one gradient step in two:
- `prepare(step)`, on the host: writes what depends on the step (env step, or a pretrainer's
  step) into device scalars and returns the phase (updates of one phase run the same kernels,
  so one captured graph serves them all), or a `PhaseCycle` where consecutive updates take
  several phases in turn (TD3's policy delay);
- `update_tensors(batch, phase)`: the step itself with no host-device sync (no `.item()`, no
  branching on tensor values); metrics stay device tensors.
`compiled` names the pure loss functions `compile_losses` hands to `torch.compile` (and that a
population maps over its agents, so none of them calls another), `compiled_steps` the in-place
steps it compiles as well (Polyak); `optimizers()` lists every optimiser the step uses (made capturable, compiled).
The config has a `batch_size`. The SAC family, the TD3 family and the offline pretrainers are
Capturable; the eager paths run the same `update_tensors`.
"""

from __future__ import annotations

from collections.abc import Hashable

import torch

from distributed_o2o.algorithms.base import Batch, OfflineStage
from distributed_o2o.algorithms.optim import to_floats


class PhaseCycle:
    """Phases that consecutive updates take in turn, e.g. TD3's policy delay: ("critic",
    "critic+actor") for an actor step every second update. `count` updates were taken so far
    (a host integer: no update reads it, so the graphs need no mask and no device counter);
    the next one's phase is `phases[position]`."""

    def __init__(self, phases: tuple[Hashable, ...]):
        self.phases = tuple(phases)
        self.count = 0

    @property
    def position(self) -> int:
        return self.count % len(self.phases)

    def advance(self, updates: int) -> None:
        """Count `updates` updates taken (the graphed learner, after running them)."""
        self.count += updates

    def take(self) -> Hashable:
        """The next update's phase, counted as taken (the eager path: one update at a time)."""
        phase = self.phases[self.position]
        self.advance(1)
        return phase


def next_phase(phase: Hashable | PhaseCycle) -> Hashable:
    """The phase one eager update runs (decided on the host, where a captured update cannot): a
    `PhaseCycle`'s next one, counted as taken; any other phase as it is."""
    return phase.take() if isinstance(phase, PhaseCycle) else phase


class Capturable:
    """Mixin of an update split into `prepare` (host) and `update_tensors` (device)."""

    compiled: tuple[str, ...] = ()
    compiled_steps: tuple[str, ...] = ()

    def prepare(self, step: int) -> Hashable | PhaseCycle:
        return None

    def update_tensors(self, batch: Batch, phase: Hashable) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def optimizers(self) -> list[torch.optim.Optimizer]:
        raise NotImplementedError

    def compile_losses(self) -> None:
        """Replace the methods named in `compiled` and `compiled_steps` by `torch.compile`d
        versions: their many small kernels fused (the graphed learner captures them afterwards)."""
        for name in (*self.compiled, *self.compiled_steps):
            setattr(self, name, torch.compile(getattr(self, name)))

    def compile_optimizers(self) -> None:
        """`torch.compile` every optimiser step (inductor fuses Adam's foreach implementation
        into a few wide kernels; see `graphed.prepare_optimizers`)."""
        for opt in self.optimizers():
            opt.step = torch.compile(opt.step)


def phase_stage(algorithm, phase: str, steps: int) -> OfflineStage:
    """An offline stage named `phase` whose step is `update_tensors(batch of D_off, phase)`, so
    the graphed learner can run it in its graphs (`OfflineStage.phase`)."""

    def step() -> dict[str, float]:
        batch = algorithm.offline_data.sample(algorithm.config.batch_size)
        return to_floats(algorithm.update_tensors(batch, phase))

    return OfflineStage(phase, steps, step, phase=phase)
