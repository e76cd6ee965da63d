"""The Ray mode: the same boxes as the local mode, each in an actor, behind `RayTransport`.

    o2o/<run-id>/learner-0       the Learner (GPU if the cluster has one); pulls its batches
                                 from the replay shards itself, the next pull always in flight
    o2o/<run-id>/replay-<j>      ReplayService shards, on the learner's node
    o2o/<run-id>/rollout-<i>     RolloutWorkers (vectorised envs, CPU inference); restarted by
                                 Ray when they die
    o2o/<run-id>/evaluator-0     the Evaluator (its own envs), restarted and retried if it dies

The boxes are made by the factories of components.py; `RayBuilder` creates each as a named
actor with its placement (ray_cluster.py plans it). All live in the `o2o` namespace (`o2o
status RUN` lists a run's). Placement follows custom resources when the cluster declares them:
`learner` (the learner's node) and `rollout` (one unit per rollout actor); otherwise Ray
places actors by CPU share.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray.exceptions import ActorDiedError, RayActorError, RayError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from distributed_o2o.algorithms.registry import algorithm_class
from distributed_o2o.errors import UserError, first_line
from distributed_o2o.runtime.components import Components, RunInputs, build_components
from distributed_o2o.runtime.evaluator import Evaluator
from distributed_o2o.runtime.graphed import check_learner_backend
from distributed_o2o.runtime.learner import Learner, concat_batches
from distributed_o2o.runtime.population import PopulationLearner, PopulationReplay, PopulationRollout
from distributed_o2o.runtime.ray_cluster import NAMESPACE, init_ray, learner_threads, plan_resources, run_id
from distributed_o2o.runtime.replay import ReplayService
from distributed_o2o.runtime.rollout import RolloutWorker
from distributed_o2o.runtime.timings import Timings
from distributed_o2o.runtime.transport import ComponentFailed

# Transitions per rollout chunk at most (while updates are due, a chunk also holds no more than
# one learner call's worth of updates): large enough that a call's overhead (about 1 ms) is
# small against stepping the envs.
CHUNK_TRANSITIONS = 256
COLLECTS_PER_WORKER = 2  # one chunk being collected, the next queued behind it
# The same for the learner's update calls: it runs them in order, the next starting as the one
# before ends, without waiting for the driver to see that one's result.
UPDATE_CALLS_IN_FLIGHT = 2
PLACEMENT_TIMEOUT_S = 120.0


class RayTransport:
    """Futures are ObjectRefs; a dead actor surfaces as `ComponentFailed` with its name."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}  # actor id (hex) -> actor name

    def register(self, handle: Any, name: str) -> None:
        self.names[handle._actor_id.hex()] = name

    def call(self, component: Any, method: str, *args: Any) -> Any:
        return self.get(self.submit(component, method, *args))

    def call_all(self, calls: Sequence[tuple[Any, str, tuple]]) -> list[Any]:
        futures = [self.submit(component, method, *args) for component, method, args in calls]
        return [self.get(f) for f in futures]

    def submit(self, component: Any, method: str, *args: Any) -> ray.ObjectRef:
        return getattr(component, method).remote(*args)

    def wait(self, futures: Sequence[ray.ObjectRef], num_returns: int = 1, timeout: float | None = None) -> list[ray.ObjectRef]:
        """Every future that is done (at least `num_returns` unless `timeout` passes first)."""
        ready, rest = ray.wait(list(futures), num_returns=min(num_returns, len(futures)), timeout=timeout)
        if ready and rest:
            more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
            ready += more
        return ready

    def get(self, future: ray.ObjectRef) -> Any:
        try:
            return ray.get(future)
        except RayActorError as exc:  # also a task whose argument came from a dead actor
            if isinstance(exc, ActorDiedError) and exc.actor_init_failed:
                _raise_user_error(str(exc.error_msg))  # bad input found by a constructor: one line
            kind = next(c.__name__ for c in type(exc).__mro__ if c.__module__ == "ray.exceptions" and "Task" not in c.__name__)
            name = self.names.get(exc.actor_id or "", f"actor {exc.actor_id}")
            raise ComponentFailed(name, f"{kind}: {first_line(str(exc.error_msg))}",
                                  permanent=isinstance(exc, ActorDiedError)) from None
        except RayTaskError as exc:
            if isinstance(exc.cause, UserError):  # bad input found inside an actor: still one line
                raise exc.cause from None
            raise


def _raise_user_error(traceback_text: str) -> None:
    """Raise the `UserError` a remote traceback ends in, if it ends in one. Ray passes a failed
    constructor's exception only as text (no cause object to re-raise)."""
    prefix = f"{UserError.__module__}.{UserError.__name__}: "
    lines = [line.strip() for line in traceback_text.splitlines() if line.strip().startswith(prefix)]
    if lines:
        raise UserError(lines[-1][len(prefix):]) from None


def _to_cpu(node: Any) -> Any:
    """A nested state with every tensor on the CPU (the driver may have no GPU)."""
    if isinstance(node, torch.Tensor):
        return node.detach().cpu()
    if isinstance(node, dict):
        return {k: _to_cpu(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return type(node)(_to_cpu(v) for v in node)
    return node


class LearnerActor(Learner):
    """The learner in an actor: asks the shards and the evaluator through Ray, keeps its next
    batch pull in flight while it updates, publishes weights with one `ray.put`."""

    def __init__(self, threads: int, *args: Any, offline: dict[str, np.ndarray] | None = None, **kwargs: Any):
        torch.set_num_threads(threads)
        if offline is not None:  # arrays from the object store are read-only; torch wants to own them
            offline = {k: np.array(v) for k, v in offline.items()}
        super().__init__(*args, offline=offline, **kwargs)
        self._next: tuple[tuple[int, int], list[ray.ObjectRef]] | None = None  # the pull in flight

    def _ask(self, component: Any, method: str, *args: Any) -> Any:
        return ray.get(getattr(component, method).remote(*args))

    def _ask_all(self, calls: list[tuple[Any, str, tuple]]) -> list[Any]:
        return ray.get([getattr(component, method).remote(*args) for component, method, args in calls])

    def _request(self, count: int, plan: list[tuple[int, int]]) -> list[ray.ObjectRef]:
        return [shard.sample_many.remote(count, n_on, n_off) for shard, (n_on, n_off) in zip(self.shards, plan) if n_on + n_off]

    def _sample(self, count: int, plan: list[tuple[int, int]]) -> dict[str, np.ndarray]:
        """The batches pulled ahead (same online/offline mix), topped up if too few; then the
        next pull goes out, the same size, to be sampled while these update."""
        key = (sum(p[0] for p in plan), sum(p[1] for p in plan))
        have = []
        if self._next is not None and self._next[0] == key:
            have.append(concat_batches(ray.get(self._next[1])))
        self._next = None
        got = sum(len(h["rewards"]) for h in have)
        if got < count:
            have.append(concat_batches(ray.get(self._request(count - got, plan))))
        batches = have[0] if len(have) == 1 else {k: np.concatenate([h[k] for h in have]) for k in have[0]}
        self._next = (key, self._request(count, plan))
        return {k: v[:count] for k, v in batches.items()}

    def weights(self) -> tuple[int, ray.ObjectRef]:
        version, state = super().weights()
        return version, ray.put(state)  # one copy in the object store; every worker gets the ref

    def checkpoint_modules(self, *agent: int) -> dict[str, torch.nn.Module]:
        return {name: copy.deepcopy(module).cpu() for name, module in super().checkpoint_modules(*agent).items()}

    def state(self, *agent: int) -> dict:
        return _to_cpu(super().state(*agent))


class PopulationLearnerActor(LearnerActor, PopulationLearner):
    """A population's learner in an actor (LearnerActor's transport over PopulationLearner)."""


def _seed_of_this_life(seed: int) -> int:
    """`seed`, or a fresh one when Ray restarted this actor (not repeating its first life's episodes)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        restarted = ray.get_runtime_context().was_current_actor_reconstructed
    return int(np.random.SeedSequence().entropy % 2**31) if restarted else seed


@dataclass(frozen=True)
class Answer:
    """A call's answer handed to an actor's constructor before it is there. Ray holds back the
    start of an actor whose arguments include a bare reference until the reference is ready;
    wrapped, the actor starts at once (its imports, its envs) and waits only where it reads it."""

    ref: ray.ObjectRef

    def get(self) -> Any:
        """The answer; where the call failed, this actor leaves quietly: the failing actor's own
        error is what the driver reports (`_wait_placed`), not a second traceback from here."""
        try:
            return ray.get(self.ref)
        except RayError:
            ray.actor.exit_actor()


class RolloutActor(RolloutWorker):
    """A rollout worker that takes weight offers on a thread of its own (`offer_weights` runs
    while a chunk is being collected) and, when Ray restarts it, seeds its envs afresh. Its
    policy's shape arrives as the learner's `Answer`: the workers start while the learner is built."""

    def __init__(self, env_id: str, num_envs: int, seed: int, policy_arch: Answer, env_kwargs: dict | None, worker_index: int):
        torch.set_num_threads(1)  # one core's share: batched inference of a small MLP
        super().__init__(env_id, num_envs, _seed_of_this_life(seed), policy_arch.get(), env_kwargs, worker_index)

    @ray.method(concurrency_group="weights")
    def offer_weights(self, version: int, state_dict: dict) -> None:
        super().offer_weights(version, state_dict)


class PopulationRolloutActor(PopulationRollout):
    """A population's rollout worker in an actor, as `RolloutActor` is a single agent's."""

    def __init__(self, env_id: str, num_envs: int, seeds: list[int], policy_arch: Answer, env_kwargs: dict | None,
                 worker_index: int):
        torch.set_num_threads(1)
        super().__init__(env_id, num_envs, [_seed_of_this_life(seed) for seed in seeds], policy_arch.get(), env_kwargs,
                         worker_index)

    @ray.method(concurrency_group="weights")
    def offer_weights(self, version: int, state_dicts: list[dict]) -> None:
        super().offer_weights(version, state_dicts)


class EvaluatorActor(Evaluator):
    """The evaluator in a process of its own, sharing the learner's node: one torch thread."""

    def __init__(self, *args: Any, **kwargs: Any):
        torch.set_num_threads(1)
        super().__init__(*args, **kwargs)


def actor_class(cls: type) -> Any:
    """`cls` as a Ray actor class."""
    if cls in (RolloutActor, PopulationRolloutActor):  # its weight offers get a thread of their own
        return ray.remote(concurrency_groups={"weights": 1})(cls)
    return ray.remote(cls)


class RayBuilder:
    """Creates each box as a named actor of the run, placed per `plan_resources`: the learner
    first (its node is where the replay shards and the evaluator go), rollout workers restarted
    by Ray, the evaluator restarted and its calls retried."""

    CLASSES = {"learner": LearnerActor, "rollout": RolloutActor, "replay": ReplayService, "evaluator": EvaluatorActor,
               "population-learner": PopulationLearnerActor, "population-rollout": PopulationRolloutActor,
               "population-replay": PopulationReplay}
    chunk_transitions = CHUNK_TRANSITIONS
    collects_per_worker = COLLECTS_PER_WORKER
    update_calls_in_flight = UPDATE_CALLS_IN_FLIGHT

    def __init__(self, config, run_path: str | Path):
        self.transport = RayTransport()
        self.run_id = run_id(run_path)
        self.actors: list[Any] = []
        in_group = ray.util.get_current_placement_group() is not None
        nodes = ray.nodes()
        self.plan = plan_resources(nodes, config, gpu_wanted=config.runtime.device != "cpu", in_placement_group=in_group)
        check_learner_backend(config, algorithm_class(config.algo), on_gpu=self.plan["learner"]["num_gpus"] > 0)
        # In a placement group a CPU learner has its bundle's share, not the node's CPUs.
        self.threads = config.runtime.learner_threads or (max(1, int(self.plan["learner"]["num_cpus"])) if in_group
                                                  else learner_threads(nodes, config))
        # Scheduling on the learner's node, asked of the learner when a replay shard or evaluator is
        # created; on a one-node cluster there is nowhere else to go, and nothing waits for the learner.
        self.near_learner: dict[str, Any] | None = {} if len([n for n in nodes if n["Alive"]]) == 1 else None
        self.learner: Any = None
        self.answers: list[Answer] = []

    def _options(self, role: str) -> dict[str, Any]:
        restarts = {"learner": {"max_restarts": 0}, "replay": {"max_restarts": 0},
                    "rollout": {"max_restarts": -1, "max_task_retries": 0},
                    "evaluator": {"max_restarts": -1, "max_task_retries": 2}}[role]
        near = self._near_learner() if role in ("replay", "evaluator") else {}
        return {**self.plan[role], **near, **restarts}

    def create(self, role: str, index: int, *args: Any, **kwargs: Any) -> Any:
        cls = self.CLASSES[role]
        role = role.removeprefix("population-")  # placed and named as the single agent's box
        name = f"{NAMESPACE}/{self.run_id}/{role}-{index}"
        if role == "learner":
            args = (self.threads, *args)
        try:
            handle = actor_class(cls).options(name=name, namespace=NAMESPACE, **self._options(role)).remote(*args, **kwargs)
        except ValueError as exc:  # the name is taken
            raise UserError(f"actor {name} already exists: this run directory is being run on the cluster already ({exc})") from None
        self.transport.register(handle, name)
        self.actors.append(handle)
        if role == "learner":
            self.learner = handle
        return handle

    def _near_learner(self) -> dict[str, Any]:
        """Options that place an actor on the learner's node (waits for the learner's constructor)."""
        if self.near_learner is None:
            node = self.transport.get(self.learner.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()))
            self.near_learner = {"scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=False)}
        return self.near_learner

    def policy_arch(self, learner: Any) -> Answer:
        # Kept for the run: a worker Ray restarts reads it again from its constructor's arguments.
        self.answers.append(Answer(learner.policy_arch.remote()))
        return self.answers[-1]

    def ready(self) -> None:
        _wait_placed(self.transport, self.actors, self.plan)


@contextmanager
def ray_components(config, inputs: RunInputs, run_path: str | Path, address: str | None, timings: Timings,
                   seeds: list[int] | None = None) -> Iterator[Components]:
    """Start (or join) Ray, create the run's actors, and remove them (and a Ray we started) after.
    Ray's start counts in `timings` as "ray_start"."""
    started = not ray.is_initialized()
    if started:
        with timings.part("ray_start"):
            init_ray(address)
    builder = None
    try:
        builder = RayBuilder(config, run_path)
        yield build_components(builder, config, inputs, seeds)
    finally:
        for handle in builder.actors if builder is not None else ():
            ray.kill(handle, no_restart=True)
        if started:
            ray.shutdown()


def _wait_placed(transport: RayTransport, actors: list[Any], plan: dict[str, dict[str, Any]]) -> None:
    """Fail with a clear message rather than wait forever for resources the cluster lacks."""
    ready = [a.__ray_ready__.remote() for a in actors]
    done, waiting = ray.wait(ready, num_returns=len(ready), timeout=PLACEMENT_TIMEOUT_S)
    for future in done:
        transport.get(future)  # an actor whose constructor failed
    if waiting:
        raise UserError(f"the run's actors could not all be placed within {PLACEMENT_TIMEOUT_S:.0f} s (asked for {plan}; "
                        f"the cluster has {ray.cluster_resources()}): lower --num-rollout-workers or add nodes")
