"""The learner component: hosts an `Algorithm` on a device and speaks numpy to the runtime.

Everything that crosses a transport (batches, weights, metrics) is numpy or plain Python, so
the same class runs in-process (local mode) or as a Ray actor. The learner pulls its batches
from the replay shards itself (`update_from_replay`): many batches per call, one gather per
shard; the Ray subclass keeps the next pull in flight while it updates. On the graphed path
(`runtime/graphed.py`: on CUDA, for a capturable update) the learner instead mirrors the shards on its device,
pulling the rows each shard took in since the last call, and samples there. A graphed update call
returns once its updates are queued on the GPU, with the metrics of the call before it (read
back meanwhile, and checked then); `settle_updates` hands over the last call's, at each
evaluation boundary and at the end, so nothing is evaluated or saved before a divergence shows.
Weights published meanwhile are those from before the queued updates (copied to the host behind
the previous call's), so a publish never waits for the GPU to drain.
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict
from typing import Any, NamedTuple

import numpy as np
import torch

from distributed_o2o.algorithms.base import ActingSpec, Algorithm, Batch, OfflineData, Rollout
from distributed_o2o.algorithms.registry import algorithm_class
from distributed_o2o.errors import UserError
from distributed_o2o.runtime.broadcast import policy_weights
from distributed_o2o.runtime.graphed import PendingMeans, Readback, graphed_updater
from distributed_o2o.runtime.replay import split_rows
from distributed_o2o.runtime.streams import stream_seed
from distributed_o2o.runtime.timings import LEARNER_PARTS, Timings

BATCH_KEYS = ("observations", "actions", "rewards", "next_observations", "terminals")


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' was asked for, but torch sees no CUDA GPU here: use device auto or cpu "
                        "(o2o finetune: --set runtime.device=..., o2o pretrain: --set device=...)")
    return torch.device(requested)


class UnsettledCall(NamedTuple):
    """A graphed update call whose updates may still be running on the GPU."""

    means: PendingMeans  # its metrics' means, on their way back
    weights_finite: Readback  # whether the acting weights were finite after it
    env_step: int
    # The acting weights as they stood when it was queued: their version, each policy's names and
    # their copy on its way to the host (what `weights` publishes meanwhile).
    weights_before: tuple[int, list[list[str]], Readback]


class LearnerDiverged(UserError):
    """The learner's losses or weights became non-finite: nothing it computes after that counts."""


def mean_metrics(history: list[dict[str, float]]) -> dict[str, float]:
    """Each metric's mean over the updates that logged it (an actor's metrics come from the
    updates that stepped it: TD3's policy delay, SAC's `actor_every`)."""
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for metrics in history:
        for key, value in metrics.items():
            sums[key] += float(value)
            counts[key] += 1
    return {key: total / counts[key] for key, total in sums.items()}


def build_agent(config, seed: int, obs_dim: int, act_dim: int, device: torch.device, policy=None,
                pretrained: dict | None = None, offline: OfflineData | None = None) -> Algorithm:
    """One agent of `config`'s method as a run with `seed` builds it: networks initialised from
    the seed, D_off (`offline`, whose tensors it shares) sampled with its own generator."""
    torch.manual_seed(seed)
    if policy is not None:
        policy = policy.to(device)
    modules = {name: module.to(device) for name, module in (pretrained or {}).items()}
    algorithm = algorithm_class(config.algo)(config, obs_dim, act_dim, device, policy=policy, **modules)
    if offline is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
        algorithm.set_offline_data(copy.copy(offline))
        algorithm.offline_data.generator = generator
    return algorithm


class Learner:
    def __init__(self, config, obs_dim: int, act_dim: int, policy=None, pretrained: dict | None = None,
                 offline: dict[str, np.ndarray] | None = None):
        self.seed = config.seed
        self.device = pick_device(config.runtime.device)
        data = None if offline is None else OfflineData(offline, self.device)
        self.algorithm: Algorithm = build_agent(config, config.seed, obs_dim, act_dim, self.device, policy, pretrained, data)
        self.offline_generator: torch.Generator | None = None if data is None else self.algorithm.offline_data.generator
        # The graphed path (None: eager). Its device mirror of the replay holds D_off and the rows
        # pulled from the shards; `cursors[j]`: rows of shard j ever inserted that it has seen.
        self.graphed = graphed_updater(config, self.algorithm, obs_dim, act_dim, self.device)
        self._init_runtime(config, offline)

    def _init_runtime(self, config, offline: dict[str, np.ndarray] | None) -> None:
        if self.graphed is not None and offline is not None:
            self.graphed.set_offline(offline)
        # Seconds in online update calls ("learner") and compiling ("compile": the graphed
        # updater's, whose Timings this is, so that "learner" leaves it out).
        self.timings = Timings() if self.graphed is None else self.graphed.timings
        self.cursors: list[int] = []
        self.stages = {stage.name: stage for stage in self.algorithm.offline_stages()}
        self.batch_size = config.batch_size
        # Bumped whenever the acting policy may have changed: by one per stage chunk or hand-over,
        # by the number of gradient steps per update, so staleness reads in gradient steps.
        self.version = 0
        self.shards: list[Any] = []
        self.offline_sizes: list[int] = []
        self.last_finite: dict[str, float] = {}  # the newest metrics before any non-finite one
        self.unsettled: UnsettledCall | None = None  # the graphed path's last update call, not yet read back

    def _weights_finite(self) -> torch.Tensor:
        """Whether every acting policy's weights are finite, as a device scalar (no sync)."""
        weights = torch.stack([p.detach().sum() for policy in self._acting_policies() for p in policy.parameters()])
        return torch.isfinite(weights).all()

    def _finite(self, metrics: dict[str, float], where: str, weights_finite: bool | None = None) -> dict[str, float]:
        """`metrics` if they and the acting policy's weights are finite (`weights_finite`: as read
        back; None: look now); else stop the run (no checkpoint or resume state is written after
        this point, so the last ones stay good)."""
        bad = sorted(key for key, value in metrics.items() if not math.isfinite(value))
        if weights_finite is None:
            weights_finite = bool(self._weights_finite())
        if not bad and weights_finite:
            self.last_finite = metrics or self.last_finite
            return metrics
        what = ", ".join(bad) if bad else "the policy's weights"
        last = " ".join(f"{k}={v:.3g}" for k, v in list(self.last_finite.items())[:6]) or "none yet"
        raise LearnerDiverged(f"the learner diverged at {where}: {what} became non-finite (last finite metrics: {last}); "
                              "lower the learning rates or check the data (the checkpoints written before it are kept)")

    def _acting_policies(self) -> list[torch.nn.Module]:
        return [self.algorithm.acting_policy()]

    def _ask(self, component: Any, method: str, *args: Any) -> Any:
        """Call another component (the replay shards, the evaluator); Ray overrides this."""
        return getattr(component, method)(*args)

    def _ask_all(self, calls: list[tuple[Any, str, tuple]]) -> list[Any]:
        """Several calls at once; Ray overrides this to run them concurrently."""
        return [self._ask(component, method, *args) for component, method, args in calls]

    def attach_replay(self, shards: list[Any]) -> None:
        self.shards = list(shards)
        self.offline_sizes = [self._ask(shard, "offline_size") for shard in self.shards]
        self.cursors = [0] * len(self.shards)

    # -- offline stages
    def stage_plan(self) -> list[tuple[str, int]]:
        return [(name, stage.steps) for name, stage in self.stages.items()]

    def run_stage(self, name: str, count: int) -> dict[str, float]:
        stage = self.stages[name]
        self.version += 1
        if count and self.graphed is not None and stage.phase is not None:  # batches of D_off alone
            return self._finite(self.graphed.run_phase(count, stage.phase, offline_ratio=1.0), f"offline stage {name}")
        history = [stage.step() for _ in range(count)]
        return self._finite(mean_metrics(history) if history else {}, f"offline stage {name}")

    def handover(self, evaluator: Any) -> tuple[dict[str, float], int]:
        """The algorithm's hand-over, scoring candidates on `evaluator`; returns its metrics and
        the evaluation env steps it spent."""
        spent = 0

        def evaluate(policy) -> float:
            nonlocal spent
            record = self._ask(evaluator, "evaluate", policy.arch(), {k: v.detach().cpu() for k, v in policy.state_dict().items()})
            spent += record["env_steps"]
            return record["return_mean"]

        metrics = self.algorithm.handover(evaluate)
        self.version += 1
        return metrics, spent

    # -- online
    def is_on_policy(self) -> bool:
        return self.algorithm.on_policy

    def offline_ratio(self, env_step: int) -> float:
        return self.algorithm.offline_ratio(env_step)

    def handover_step(self) -> int:
        return self.algorithm.handover_step()

    def rollout_steps(self) -> int:
        return int(getattr(self.algorithm, "rollout_steps", 1))

    def schedule(self, start: int, stop: int) -> list[tuple[int, ActingSpec, float]]:
        """`acting(t)` and `updates_due(t)` for t in [start, stop) as runs: (first t, spec, utd)
        wherever either changes. The driver plans collection and owed updates from it without a
        call per env step (both are functions of the env step alone)."""
        runs: list[tuple[int, ActingSpec, float]] = []
        for t in range(start, stop):
            spec, utd = self.algorithm.acting(t), float(self.algorithm.updates_due(t))
            if not runs or runs[-1][1] != spec or runs[-1][2] != utd:
                runs.append((t, spec, utd))
        return runs

    def update(self, batches: list[dict[str, np.ndarray]] | dict[str, np.ndarray], env_step: int) -> dict[str, float]:
        """Gradient steps on a list of batches, or on `count` batches stacked as arrays
        (count, batch, ...), which reach the device in one copy per column."""
        if isinstance(batches, dict):
            stacked = [torch.as_tensor(np.require(batches[k], np.float32, "W"), device=self.device) for k in BATCH_KEYS]
            items = [Batch(*(column[i] for column in stacked)) for i in range(len(stacked[0]))]
        else:
            items = [Batch.from_numpy(b, self.device) for b in batches]
        history = [self.algorithm.update(batch, env_step) for batch in items]
        self.version += len(items)
        return self._finite(mean_metrics(history), f"env step {env_step}")

    def update_from_replay(self, count: int, env_step: int, online_sizes: list[int]) -> tuple[int, dict[str, float]]:
        """`count` updates on batches pulled from the replay shards (rows split over the shards
        in proportion to their sizes, D_off rows at the algorithm's offline ratio); returns the
        new version and the mean metrics. The graphed path samples its device mirror instead,
        after pulling the shards' new rows into it."""
        with self.timings.part("learner"):
            return self._update_from_replay(count, env_step, online_sizes)

    def _update_from_replay(self, count: int, env_step: int, online_sizes: list[int]) -> tuple[int, dict[str, float]]:
        if self.graphed is not None:
            self.pull_new_rows()
            weights_before = self._copy_acting_weights()
            queued = self.graphed.start(count, env_step, self.offline_ratio(env_step))
            previous, self.unsettled = self.unsettled, UnsettledCall(queued, Readback([self._weights_finite()]), env_step,
                                                                     weights_before)
            self.version += count
            return self.version, self._settle(previous)
        n_off = int(round(self.batch_size * self.offline_ratio(env_step))) if sum(self.offline_sizes) else 0
        plan = list(zip(split_rows(self.batch_size - n_off, online_sizes), split_rows(n_off, self.offline_sizes)))
        metrics = self.update(self._sample(count, plan), env_step)
        return self.version, metrics

    def settle_updates(self) -> dict[str, float]:
        """The last graphed update call's metrics (waiting for its updates), checked; {} where
        there is none."""
        previous, self.unsettled = self.unsettled, None
        return self._settle(previous)

    def _settle(self, call: UnsettledCall | None) -> dict[str, float]:
        if call is None:
            return self._finite({}, "no update", weights_finite=True)
        return self._finite(call.means.result(), f"env step {call.env_step}", bool(call.weights_finite.values()[0]))

    def pull_new_rows(self) -> None:
        """Copy the rows every shard took in since the last pull into the device mirror (all of
        a shard's rows after a resume, when the cursors start again from 0)."""
        replies = self._ask_all([(shard, "rows_since", (cursor,)) for shard, cursor in zip(self.shards, self.cursors)])
        for j, (cursor, rows) in enumerate(replies):
            self._mirror(rows)
            self.cursors[j] = cursor

    def _mirror(self, rows: dict[str, np.ndarray]) -> None:
        if len(rows["rewards"]):
            self.graphed.add(rows)

    def _sample(self, count: int, plan: list[tuple[int, int]]) -> dict[str, np.ndarray]:
        """`count` stacked batches; `plan` holds (online rows, offline rows) per shard."""
        parts = [self._ask(shard, "sample_many", count, n_on, n_off) for shard, (n_on, n_off) in zip(self.shards, plan) if n_on + n_off]
        return concat_batches(parts)

    def update_on_policy(self, count: int, env_step: int) -> tuple[int, dict[str, float]]:
        """One on-policy update on the `count` fragments queued in the shards (served once)."""
        with self.timings.part("learner"):
            return self._update_on_policy(count, env_step)

    def _update_on_policy(self, count: int, env_step: int) -> tuple[int, dict[str, float]]:
        fragments = [f for shard in self.shards for f in self._ask(shard, "take_fragments")]
        if len(fragments) != count:
            raise RuntimeError(f"expected {count} queued fragments, found {len(fragments)}")
        # Fragments side by side along the env axis: (T, sum of envs, ...).
        arrays = {k: np.concatenate([f[k] for f in fragments], axis=1) for k in fragments[0]}
        metrics = self.update_rollout(arrays, env_step)
        return self.version, metrics

    def update_rollout(self, arrays: dict[str, np.ndarray], env_step: int) -> dict[str, float]:
        def t(name: str) -> torch.Tensor:
            return torch.as_tensor(arrays[name], dtype=torch.float32, device=self.device)

        rollout = Rollout(t("observations"), t("actions"), t("rewards"), t("next_observations"), t("terminals"),
                          torch.clamp(t("terminals") + t("timeouts"), max=1.0))
        metrics = self._finite(self.algorithm.update_rollout(rollout, env_step), f"env step {env_step}")
        self.version += 1
        return metrics

    def time_spent(self) -> dict[str, float]:
        """Seconds of each of LEARNER_PARTS so far (timings.py)."""
        return {name: self.timings.seconds.get(name, 0.0) for name in LEARNER_PARTS}

    # -- one agent's calls (`agent`: its index in a population; a single run has agent 0 only)
    def _agent(self, agent: int = 0) -> Algorithm:
        return self.algorithm

    def on_evaluation(self, score: float, env_step: int, scored: dict[str, torch.Tensor], agent: int = 0) -> None:
        self._agent(agent).on_evaluation(score, env_step, scored)

    def offer_candidate(self, score: float, scored: dict[str, torch.Tensor], agent: int = 0) -> bool:
        return self._agent(agent).offer_candidate(score, scored)

    # -- weights and state
    def policy_arch(self) -> dict:
        return self.algorithm.acting_policy().arch()

    def weights(self) -> tuple[int, dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]]:
        """The acting policy's weights, published with their version (broadcast.py). While a
        graphed call's updates are queued, the weights from before them: a copy now would wait
        for the GPU to finish them and leave it idle until the next call arrives."""
        if self.unsettled is None:
            return self.version, self._published([policy_weights(p) for p in self._acting_policies()])
        version, names, host = self.unsettled.weights_before
        values = iter(host.values())
        return version, self._published([{name: torch.from_numpy(next(values).copy()) for name in policy}
                                         for policy in names])

    def _published(self, weights: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """What `weights` publishes, of each acting policy's weights (a single run has one)."""
        return weights[0]

    def _copy_acting_weights(self) -> tuple[int, list[list[str]], Readback]:
        """The acting weights' copy to the host, queued behind the updates already queued."""
        states = [policy.state_dict() for policy in self._acting_policies()]
        return self.version, [list(state) for state in states], Readback([t.detach() for s in states for t in s.values()])

    def evaluation_weights(self, agent: int = 0) -> tuple[dict[str, tuple[dict[str, torch.Tensor], bool]], str | None]:
        """`Algorithm.evaluation_policies` with each policy's weights."""
        runs, candidate = self._agent(agent).evaluation_policies()
        return {prefix: (policy_weights(policy), deterministic) for prefix, (policy, deterministic) in runs.items()}, candidate

    def checkpoint_modules(self, agent: int = 0) -> dict[str, torch.nn.Module]:
        return self._agent(agent).modules()

    def state(self) -> dict:
        return {"algorithm": self.algorithm.state_dict(), "version": self.version}

    def reseed(self, env_step: int) -> None:
        """A resumed run's torch and D_off sampling streams, from the seed and the env step it
        resumes at (streams.py)."""
        seed = stream_seed(self.seed, env_step)
        torch.manual_seed(seed)
        if self.offline_generator is not None:
            self.offline_generator.manual_seed(seed)

    def load(self, state: dict) -> None:
        self.algorithm.load_state_dict(state["algorithm"])
        if self.graphed is not None:  # refilled from the shards' contents at the next pull
            self.graphed.clear()
            self.cursors = [0] * len(self.shards)
            self.unsettled = None
        self.version = int(state["version"]) + 1


def concat_batches(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-shard stacked batches joined along the batch axis."""
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts], axis=1) for k in parts[0]}
