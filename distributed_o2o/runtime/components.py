"""The boxes of a run and the one set of factories that makes them, for both modes.

    RunInputs     everything the boxes are built from (env spaces, policy, D_off, references)
    make_learner, make_rollout_workers, make_replays, make_evaluator
                  one factory per box: which arguments it is built from
    build_components
                  the boxes in their order, wired together (the learner pulls from the shards)

A mode says only *how* a box is created, through a `Builder`: `LocalBuilder` (below) makes
plain objects in this process; `ray_runtime.RayBuilder` makes actors with their placement.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from distributed_o2o.algorithms.registry import algorithm_class
from distributed_o2o.checkpoint import load_checkpoint, load_policy, read_metadata
from distributed_o2o.config import FinetuneConfig
from distributed_o2o.data.scores import reference_scores
from distributed_o2o.envs import env_spaces
from distributed_o2o.errors import UserError
from distributed_o2o.runtime.evaluator import Evaluator
from distributed_o2o.runtime.learner import Learner
from distributed_o2o.runtime.population import PopulationLearner, PopulationReplay, PopulationRollout
from distributed_o2o.runtime.replay import ReplayService, shard_offline
from distributed_o2o.runtime.rollout import RolloutWorker
from distributed_o2o.runtime.transport import LocalTransport

# A learner call runs at most this many updates, so weights can be published and the driver
# can start other work between calls (a few ms of overhead per call against tens of ms of work).
MAX_UPDATES_PER_CALL = 64


@dataclass
class Components:
    """Handles to the parts of a run (plain objects or actor handles, per the transport)."""

    transport: Any
    learner: Any
    workers: list[Any]
    replays: list[Any]  # the replay shards
    evaluator: Any
    envs_per_worker: int
    chunk_transitions: int  # transitions per collect call at most (off-policy; at least one vector step)
    collects_per_worker: int  # collect calls queued per worker, so it never waits for the driver
    update_calls_in_flight: int  # update calls queued at the learner, so it never waits for the driver
    max_updates_per_call: int  # updates the learner runs per call at most
    shard_capacity: int
    # A population run's seeds, one agent each (None: one agent, `config.seed`); `evaluator` is
    # then one evaluator per agent.
    seeds: list[int] | None = None
    # Normalised-score references ({"ref_min_score", "ref_max_score"}), recorded in checkpoints.
    references: dict = field(default_factory=dict)


@dataclass
class RunInputs:
    """Everything the components are built from, loaded and checked once."""

    obs_dim: int
    act_dim: int
    policy: Any
    pretrained: dict[str, Any]  # the checkpoint's other modules the method starts from (critic, value)
    offline: dict[str, np.ndarray] | None  # D_off for the learner (offline stages, OfflineData)
    replay_offline: dict[str, np.ndarray] | None  # D_off mixed into replay batches (off-policy methods)
    ref_min: float | None
    ref_max: float | None

    @property
    def references(self) -> dict[str, float | None]:
        """The references as checkpoints record them (`extra`)."""
        return {"ref_min_score": self.ref_min, "ref_max_score": self.ref_max}

    def shard_capacity(self, config: FinetuneConfig) -> int:
        return -(-config.replay_capacity // config.runtime.replay_shards)


def _check_inputs(config: FinetuneConfig) -> None:
    if config.env is None:
        raise UserError("no env given: pass --env (e.g. --env Hopper-v5)")
    if config.needs_policy() and config.policy is None:
        raise UserError(f"{config.algo} fine-tunes a pretrained policy: pass --policy CHECKPOINT_DIR (see `o2o pretrain`)")
    if config.needs_dataset() and config.dataset is None:
        raise UserError(f"{config.algo} needs the offline dataset: pass --dataset SPEC (e.g. d4rl:hopper-medium-v2 or a file)")


def _reference_scores(config: FinetuneConfig, dataset) -> tuple[float | None, float | None]:
    """The normalisation references: explicit config, else the dataset's, else the policy
    checkpoint's, else the zoo's for the env."""
    extra = read_metadata(config.policy).get("extra", {}) if config.policy is not None else {}
    return reference_scores(config.env, (config.ref_min_score, config.ref_max_score),
                            None if dataset is None else (dataset.ref_min_score, dataset.ref_max_score),
                            (extra.get("ref_min_score"), extra.get("ref_max_score")))


def load_inputs(config: FinetuneConfig) -> RunInputs:
    _check_inputs(config)
    spaces = env_spaces(config.env, config.env_kwargs)
    cls = algorithm_class(config.algo)
    policy = dataset = None
    pretrained: dict[str, Any] = {}
    if config.policy is not None:
        policy = load_policy(config.policy, config.env, family=cls.policy_family, env_kwargs=config.env_kwargs,
                             init_std=config.init_std)
        available = set(read_metadata(config.policy)["modules"])
        if "critic" in cls.pretrained_modules and "critic" not in available:
            raise UserError(f"{config.algo} loads the offline critic too, but '{config.policy}' holds only a policy: "
                            "pretrain with a method that has a critic (td3bc, iql, cql)")
        wanted = [name for name in cls.pretrained_modules if name in available]
        if wanted:
            pretrained = load_checkpoint(config.policy, names=wanted).modules
    if config.dataset is not None:
        from distributed_o2o.data import load_dataset

        dataset = load_dataset(config.dataset, config.env, config.allow_other_env_dataset)
    offline = None if dataset is None else {k: getattr(dataset, k) for k in
                                             ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")}
    ref_min, ref_max = _reference_scores(config, dataset)
    # Off-policy methods with a dataset mix D_off into batches at their offline_ratio.
    return RunInputs(spaces.obs_dim, spaces.act_dim, policy, pretrained, offline, None if cls.on_policy else offline, ref_min, ref_max)


class Builder(Protocol):
    """How a mode creates the boxes: `create(role, index, *args)` returns a handle to a box
    built from those arguments; `ready()` returns once every box created is up."""

    transport: Any
    chunk_transitions: int
    collects_per_worker: int
    update_calls_in_flight: int

    def create(self, role: str, index: int, *args: Any, **kwargs: Any) -> Any: ...

    def policy_arch(self, learner: Any) -> Any:
        """The learner's policy shape as the rollout workers' constructors take it."""

    def ready(self) -> None: ...


# ---------------------------------------------------------------------- one factory per box
# With `seeds` (a population run) each box holds every agent's share: its role is then
# "population-<role>" and its seed argument the agents' seeds (population.py).
def make_learner(builder: Builder, config: FinetuneConfig, inputs: RunInputs, seeds: list[int] | None = None) -> Any:
    population = {} if seeds is None else {"seeds": seeds}
    return builder.create(_role("learner", seeds), 0, config, inputs.obs_dim, inputs.act_dim, policy=inputs.policy,
                          pretrained=inputs.pretrained, offline=inputs.offline, **population)


def make_rollout_workers(builder: Builder, config: FinetuneConfig, policy_arch: Any, seeds: list[int] | None = None) -> list[Any]:
    seed = config.seed if seeds is None else seeds
    return [builder.create(_role("rollout", seeds), i, config.env, config.runtime.envs_per_worker, seed, policy_arch, config.env_kwargs, i)
            for i in range(config.runtime.num_rollout_workers)]


def make_replays(builder: Builder, config: FinetuneConfig, inputs: RunInputs, seeds: list[int] | None = None) -> list[Any]:
    capacity = inputs.shard_capacity(config)
    return [builder.create(_role("replay", seeds), j, inputs.obs_dim, inputs.act_dim, capacity, part,
                           config.seed + j if seeds is None else [seed + j for seed in seeds])
            for j, part in enumerate(shard_offline(inputs.replay_offline, config.runtime.replay_shards))]


def make_evaluator(builder: Builder, config: FinetuneConfig, inputs: RunInputs, index: int = 0) -> Any:
    return builder.create("evaluator", index, config.env, config.eval_episodes, config.seed + 10_000, config.env_kwargs,
                          inputs.ref_min, inputs.ref_max)


def _role(role: str, seeds: list[int] | None) -> str:
    return role if seeds is None else f"population-{role}"


def build_components(builder: Builder, config: FinetuneConfig, inputs: RunInputs, seeds: list[int] | None = None) -> Components:
    """Every box, in this order: the learner first (in local mode the rollout workers' torch
    seed is then the one the shared generator keeps), the workers with its policy's shape (in
    Ray, an answer still to come: their start overlaps the learner's).
    A population (`seeds`) has one evaluator per agent, each seeded as the agent's own run's."""
    transport = builder.transport
    learner = make_learner(builder, config, inputs, seeds)
    workers = make_rollout_workers(builder, config, builder.policy_arch(learner), seeds)
    replays = make_replays(builder, config, inputs, seeds)
    if seeds is None:
        evaluator = make_evaluator(builder, config, inputs)
    else:
        evaluator = [make_evaluator(builder, config.model_copy(update={"seed": seed}), inputs, k) for k, seed in enumerate(seeds)]
    builder.ready()
    transport.call(learner, "attach_replay", replays)
    return Components(transport, learner, workers, replays, evaluator, envs_per_worker=config.runtime.envs_per_worker,
                      chunk_transitions=builder.chunk_transitions, collects_per_worker=builder.collects_per_worker,
                      update_calls_in_flight=builder.update_calls_in_flight,
                      max_updates_per_call=MAX_UPDATES_PER_CALL, shard_capacity=inputs.shard_capacity(config),
                      seeds=seeds, references=inputs.references)


class LocalBuilder:
    """Every box a plain object in this process (the pdb-able debug mode). One vector step per
    collect, updates right after it: the order of a single-process loop."""

    CLASSES = {"learner": Learner, "rollout": RolloutWorker, "replay": ReplayService, "evaluator": Evaluator,
               "population-learner": PopulationLearner, "population-rollout": PopulationRollout,
               "population-replay": PopulationReplay}

    def __init__(self, config: FinetuneConfig):
        self.transport = LocalTransport()
        self.chunk_transitions = config.runtime.envs_per_worker
        self.collects_per_worker = 1
        self.update_calls_in_flight = 1

    def create(self, role: str, index: int, *args: Any, **kwargs: Any) -> Any:
        return self.CLASSES[role](*args, **kwargs)

    def policy_arch(self, learner: Learner) -> dict:
        return learner.policy_arch()

    def ready(self) -> None:
        pass


def build_local_components(config: FinetuneConfig, inputs: RunInputs, seeds: list[int] | None = None) -> Components:
    return build_components(LocalBuilder(config), config, inputs, seeds)
