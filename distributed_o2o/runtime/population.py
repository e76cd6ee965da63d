"""A population run's boxes: each holds K agents' worth of its single-agent box.

    PopulationLearner   K agents (each built as a run with its seed builds it) updated by one
                        `algorithms.population.Population`; the graphed path mirrors each
                        agent's replay into its own ring of one `DeviceReplay`
    PopulationRollout   one `RolloutWorker` per agent, seeded from the agent's seed, acting
                        with that agent's weights; the agents step in lockstep (one collect
                        steps every agent's envs), so they share the env-step count
    PopulationReplay    one `ReplayService` per agent (an agent never samples another's data),
                        D_off held once

Every call the driver and the online loop make on a single box has the same name here; where
its value is per agent it is a list (weights, metrics, episode returns), and the calls about one
agent take its index last (`checkpoint_modules(k)`). Counts (env steps, shard sizes) are per
agent, which all agents share.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distributed_o2o.algorithms.base import Algorithm, Batch, OfflineData
from distributed_o2o.algorithms.population import Population, require_population_support
from distributed_o2o.algorithms.registry import algorithm_class
from distributed_o2o.durable import sync_file
from distributed_o2o.runtime.graphed import graphed_updater
from distributed_o2o.runtime.learner import BATCH_KEYS, Learner, build_agent, mean_metrics, pick_device
from distributed_o2o.runtime.replay import COLUMNS, ReplayService
from distributed_o2o.runtime.rollout import Fragment, Receipt, RolloutWorker
from distributed_o2o.runtime.streams import stream_seed


class PopulationLearner(Learner):
    """The learner of K agents, agent k built as a run with `seeds[k]` builds its learner."""

    def __init__(self, config, obs_dim: int, act_dim: int, policy=None, pretrained: dict | None = None,
                 offline: dict[str, np.ndarray] | None = None, seeds: list[int] = ()):
        require_population_support(algorithm_class(config.algo))
        self.seeds = list(seeds)
        self.seed = self.seeds[0]
        self.device = pick_device(config.runtime.device)
        data = None if offline is None else OfflineData(offline, self.device)  # D_off on the device once
        self.agents = [build_agent(config, seed, obs_dim, act_dim, self.device, copy.deepcopy(policy),
                                   {k: copy.deepcopy(m) for k, m in (pretrained or {}).items()}, data) for seed in self.seeds]
        self.population = Population(self.agents)
        # Schedules, phases, offline ratio and hand-over step are functions of the config and the
        # env step alone: agent 0 answers for all.
        self.algorithm = self.agents[0]
        self.graphed = graphed_updater(config, self.population, obs_dim, act_dim, self.device, algorithm_cls=type(self.algorithm))
        self._init_runtime(config, offline)
        self.agent_stages = [{stage.name: stage for stage in agent.offline_stages()} for agent in self.agents]

    def _acting_policies(self) -> list[torch.nn.Module]:
        return [agent.acting_policy() for agent in self.agents]

    def _finite(self, metrics, where: str, weights_finite: bool | None = None) -> list[dict[str, float]]:
        """Each agent's metrics (the graphed path's lists per name become one dict per agent)."""
        if isinstance(metrics, dict):
            metrics = [dict(zip(metrics, values)) for values in zip(*metrics.values())] if metrics else [{}] * len(self.agents)
        # One check of every agent's metrics and weights (one host sync), naming the agent's seed.
        Learner._finite(self, {f"{name} (seed {seed})": value for seed, agent_metrics in zip(self.seeds, metrics, strict=True)
                               for name, value in agent_metrics.items()}, where, weights_finite)
        return metrics

    def _mirror(self, rows: list[dict[str, np.ndarray]]) -> None:
        for k, agent_rows in enumerate(rows):
            if len(agent_rows["rewards"]):
                self.graphed.add(agent_rows, agent=k)

    # -- offline stages, hand-over
    def run_stage(self, name: str, count: int) -> list[dict[str, float]]:
        stage = self.stages[name]
        self.version += 1
        if count and self.graphed is not None and stage.phase is not None:
            return self._finite(self.graphed.run_phase(count, stage.phase, offline_ratio=1.0), f"offline stage {name}")
        histories = [[stages[name].step() for _ in range(count)] for stages in self.agent_stages]
        return self._finite([mean_metrics(h) if h else {} for h in histories], f"offline stage {name}")

    def handover(self, evaluators: list[Any]) -> tuple[list[dict[str, float]], list[int]]:
        """Each agent's hand-over, scored on its own evaluator; their metrics and evaluation env steps."""
        spent = [0] * len(self.agents)

        def evaluate_on(k: int):
            def evaluate(policy) -> float:
                record = self._ask(evaluators[k], "evaluate", policy.arch(),
                                   {n: v.detach().cpu() for n, v in policy.state_dict().items()})
                spent[k] += record["env_steps"]
                return record["return_mean"]
            return evaluate

        metrics = self.population.handover([evaluate_on(k) for k in range(len(self.agents))])
        self.version += 1
        return metrics, spent

    # -- online
    def update(self, batches: dict[str, np.ndarray], env_step: int) -> list[dict[str, float]]:
        """Gradient steps on `count` population batches stacked as arrays (count, batch, K, ...)."""
        stacked = [torch.as_tensor(np.require(batches[k], np.float32, "W"), device=self.device) for k in BATCH_KEYS]
        history = [self.population.update(Batch(*(column[i].movedim(1, 0) for column in stacked)), env_step)
                   for i in range(len(stacked[0]))]
        self.version += len(history)
        return self._finite([mean_metrics(list(per_agent)) for per_agent in zip(*history)], f"env step {env_step}")

    def _agent(self, agent: int = 0) -> Algorithm:
        return self.agents[agent]

    # -- weights and state
    def _published(self, weights: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
        return weights

    def state(self, *agent: int) -> dict | list[dict]:
        """Agent k's learner state (`state(k)`), in a single run's format; without k, every agent's."""
        if not agent:
            return [self.state(k) for k in range(len(self.agents))]
        return {"algorithm": self.population.agent_state_dict(agent[0]), "version": self.version}

    def reseed(self, env_step: int) -> None:
        """A resumed run's torch stream (from the first seed) and each agent's D_off stream (from its own)."""
        torch.manual_seed(stream_seed(self.seed, env_step))
        for agent, seed in zip(self.agents, self.seeds, strict=True):
            if agent.offline_data is not None:
                agent.offline_data.generator.manual_seed(stream_seed(seed, env_step))

    def load(self, states: list[dict]) -> None:
        """Every agent's state at once (their optimisers' steps must agree)."""
        self.population.load_agent_states([state["algorithm"] for state in states])
        if self.graphed is not None:
            self.graphed.clear()
            self.cursors = [0] * len(self.shards)
        self.version = max(int(state["version"]) for state in states) + 1


@dataclass
class PopulationFragment:
    """One fragment per agent, collected in the same call."""

    fragments: list[Fragment]


def population_receipt(receipts: list[Receipt]) -> Receipt:
    """What the driver books of one lockstep chunk: the env steps every agent took, the mean
    acting version, and each agent's finished episodes (a list per agent)."""
    version = float(np.mean([r.version for r in receipts]))
    return Receipt(receipts[0].transitions, version, [r.episode_returns for r in receipts])


class PopulationRollout:
    """Agent k's envs are those of worker `worker_index` of a run seeded `seeds[k]`."""

    worker_class = RolloutWorker

    def __init__(self, env_id: str, num_envs: int, seeds: list[int], policy_arch: dict, env_kwargs: dict | None = None,
                 worker_index: int = 0):
        self.workers = [self.worker_class(env_id, num_envs, seed, policy_arch, env_kwargs, worker_index) for seed in seeds]

    def set_weights(self, version: int, state_dicts: list[dict] | None, spec) -> None:
        for k, worker in enumerate(self.workers):
            worker.set_weights(version, None if state_dicts is None else state_dicts[k], spec)

    def offer_weights(self, version: int, state_dicts: list[dict]) -> None:
        for worker, state_dict in zip(self.workers, state_dicts, strict=True):
            worker.offer_weights(version, state_dict)

    def reseed(self, env_step: int) -> None:
        for worker in self.workers:
            worker.reseed(env_step)

    def collect(self, steps: int) -> PopulationFragment:
        return PopulationFragment([worker.collect(steps) for worker in self.workers])

    def close(self) -> None:
        for worker in self.workers:
            worker.close()


class PopulationReplay:
    """Agent k's tables are shard j's of a run seeded `seeds[k]` (sampled from seed `seeds[k] + j`)."""

    def __init__(self, obs_dim: int, act_dim: int, capacity: int, offline: dict[str, np.ndarray] | None, seeds: list[int]):
        self.services = [ReplayService(obs_dim, act_dim, capacity, offline if k == 0 else None, seed)
                         for k, seed in enumerate(seeds)]
        for service in self.services[1:]:  # D_off is read only: one copy, each agent samples it with its own generator
            service.offline = self.services[0].offline

    def add_fragment(self, fragment: PopulationFragment) -> Receipt:
        return population_receipt([s.add_fragment(f) for s, f in zip(self.services, fragment.fragments, strict=True)])

    def size(self) -> int:
        return self.services[0].size()

    def offline_size(self) -> int:
        return self.services[0].offline_size()

    def rows_since(self, cursor: int) -> tuple[int, list[dict[str, np.ndarray]]]:
        replies = [service.rows_since(cursor) for service in self.services]
        return replies[0][0], [rows for _, rows in replies]

    def reseed(self, env_step: int) -> None:
        for service in self.services:
            service.reseed(env_step)

    def save(self, path: str | Path, save_id: str) -> None:
        """Every agent's online table, oldest first, in one file (columns `agent<k>_<name>`) tagged
        with the resume save; `inserted` is one agent's count, which all share."""
        arrays = {f"agent{k}_{name}": column for k, service in enumerate(self.services)
                  for name, column in service.online.ordered().items()}
        np.savez(path, save_id=np.str_(save_id), inserted=np.int64(self.services[0].online.inserted), **arrays)
        sync_file(path)

    def load(self, path: str | Path) -> None:
        with np.load(path, allow_pickle=False) as saved:
            inserted = int(saved["inserted"])
            chunks = [{name: saved[f"agent{k}_{name}"] for name in COLUMNS if f"agent{k}_{name}" in saved}
                      for k in range(len(self.services))]
        for service, chunk in zip(self.services, chunks, strict=True):
            service.load_rows(chunk, inserted)

    def sample_many(self, count: int, n_online: int, n_offline: int = 0) -> dict[str, np.ndarray]:
        """Every agent's `count` batches from its own tables, as arrays (count, batch, K, ...):
        the agent axis after the batch axis, so shards' parts join along the batch axis as a
        single run's do."""
        parts = [service.sample_many(count, n_online, n_offline) for service in self.services]
        return {name: np.stack([p[name] for p in parts], axis=2) for name in parts[0]}
