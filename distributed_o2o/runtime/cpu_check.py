"""Before a run starts without a GPU: how long its gradient updates would take on a CPU.

The estimate is the run's planned updates times a per-update cost that grows with the batch
times the networks' weights. The cost model is fitted to measurements on the 2-core development
machine (Intel Xeon VM, torch 2.13 CPU): the eager learner ran 2-critic SAC at ~150 and
10-critic PORL-sized updates at ~63 updates/s in isolation (docs/performance.md), and a whole
`--mode local` PORL run with the specification's defaults at ~20 updates/s (rollouts,
evaluation and other jobs on the machine included; issue #15). The model keeps the isolated
ratio of fixed to size-dependent cost and is scaled to the whole-run figure.
"""

from __future__ import annotations

from pathlib import Path

from distributed_o2o.config import FinetuneConfig, O2PPOConfig

FIXED_S_PER_UPDATE = 0.010
S_PER_MULTIPLY_ADD = 2.0e-10  # per batch row x network weight
# Runs estimated to take longer than this on a CPU get a note before they start.
NOTE_AFTER_S = 30 * 60
CPU_CONFIG_DIR = Path("configs") / "cpu"


def _mlp_weights(inputs: int, hidden: list[int], outputs: int) -> int:
    widths = [inputs, *hidden, outputs]
    return sum(a * b for a, b in zip(widths[:-1], widths[1:]))


def planned_updates(config: FinetuneConfig) -> int:
    """Gradient updates the run will make: offline stages plus the online UTD schedule."""
    stages = sum(getattr(config, name, 0) for name in ("reevaluate_steps", "align_steps"))
    if isinstance(config, O2PPOConfig):  # `epochs` passes over each fragment in minibatches
        return stages + config.online_steps * config.epochs // config.minibatch_size
    utd = getattr(config, "utd", 1)
    online = max(0, config.online_steps - getattr(config, "learning_starts", 0)) * utd
    presample = min(getattr(config, "presample_steps", 0), config.online_steps)  # PORL's pre-sample UTD
    return stages + online + presample * (getattr(config, "presample_utd", utd) - utd)


def seconds_per_update(config: FinetuneConfig, obs_dim: int, act_dim: int) -> float:
    batch = config.minibatch_size if isinstance(config, O2PPOConfig) else config.batch_size
    critics = 1 if isinstance(config, O2PPOConfig) else getattr(config, "num_critics", 2)
    weights = critics * _mlp_weights(obs_dim + act_dim, config.hidden, 1) + _mlp_weights(obs_dim, config.hidden, 2 * act_dim)
    return FIXED_S_PER_UPDATE + S_PER_MULTIPLY_ADD * batch * weights


def cpu_note(config: FinetuneConfig, obs_dim: int, act_dim: int) -> str | None:
    """One line when the run would take long on a CPU: the estimate and the CPU-sized preset."""
    updates = planned_updates(config)
    seconds = updates * seconds_per_update(config, obs_dim, act_dim)
    if seconds <= NOTE_AFTER_S:
        return None
    return (f"note: no GPU: {updates:,} gradient updates at the rate measured on 2 CPU cores take about "
            f"{seconds / 3600:.1f} h; for a CPU-sized run pass --config {cpu_preset(config.algo)} (or fewer --online-steps)")


def cpu_preset(algo: str) -> Path:
    """The shipped CPU-sized config of `algo` (one per method, in the repository's configs/cpu/)."""
    return CPU_CONFIG_DIR / f"{algo}.yaml"
