"""The Ray mode: the same components as the local mode, each in an actor, behind `RayTransport`.

    o2o/<run-id>/learner-0       the Learner (GPU if the cluster has one); pulls its batches
                                 from the replay shards itself, the next pull always in flight
    o2o/<run-id>/replay-<j>      ReplayService shards, on the learner's node
    o2o/<run-id>/rollout-<i>     RolloutWorkers (vectorised envs, CPU inference); restarted by
                                 Ray when they die
    o2o/<run-id>/evaluator-0     the Evaluator (its own envs), restarted and retried if it dies

All live in the `o2o` namespace (`o2o status RUN` lists a run's). Placement follows
custom resources when the cluster declares them: `learner` (the learner's node) and `rollout`
(one unit per rollout actor); otherwise Ray places actors by CPU share.
"""

from __future__ import annotations

import copy
import logging
import os
import socket
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray._private import ray_constants
from ray.exceptions import ActorDiedError, RayActorError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from distributed_o2o.algorithms.registry import algorithm_class
from distributed_o2o.errors import UserError, first_line
from distributed_o2o.runtime.driver import Components
from distributed_o2o.runtime.evaluator import Evaluator
from distributed_o2o.runtime.finetune import MAX_UPDATES_PER_CALL, RunInputs, run_id
from distributed_o2o.runtime.graphed import check_learner_backend
from distributed_o2o.runtime.learner import Learner, concat_batches
from distributed_o2o.runtime.replay import ReplayService, shard_offline
from distributed_o2o.runtime.rollout import RolloutWorker
from distributed_o2o.runtime.transport import ComponentFailed

NAMESPACE = "o2o"
# Transitions per rollout chunk at most (while updates are due, a chunk also holds no more than
# one learner call's worth of updates): large enough that a call's overhead (about 1 ms) is
# small against stepping the envs.
CHUNK_TRANSITIONS = 256
COLLECTS_PER_WORKER = 2  # one chunk being collected, the next queued behind it
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

    def checkpoint_modules(self) -> dict[str, torch.nn.Module]:
        return {name: copy.deepcopy(module).cpu() for name, module in super().checkpoint_modules().items()}

    def state(self) -> dict:
        return _to_cpu(super().state())


class RolloutActor(RolloutWorker):
    """A rollout worker that takes weight offers on a thread of its own (`offer_weights` runs
    while a chunk is being collected) and, when Ray restarts it, seeds its envs afresh (not
    repeating the episodes of its first life)."""

    def __init__(self, env_id: str, num_envs: int, seed: int, policy_arch: dict, env_kwargs: dict | None, worker_index: int):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            restarted = ray.get_runtime_context().was_current_actor_reconstructed
        if restarted:
            seed = int(np.random.SeedSequence().entropy % 2**31)
        torch.set_num_threads(1)  # one core's share: batched inference of a small MLP
        super().__init__(env_id, num_envs, seed, policy_arch, env_kwargs, worker_index)

    @ray.method(concurrency_group="weights")
    def offer_weights(self, version: int, state_dict: dict) -> None:
        super().offer_weights(version, state_dict)


class EvaluatorActor(Evaluator):
    """The evaluator in a process of its own, sharing the learner's node: one torch thread."""

    def __init__(self, *args: Any, **kwargs: Any):
        torch.set_num_threads(1)
        super().__init__(*args, **kwargs)


def actor_class(cls: type) -> Any:
    """`cls` as a Ray actor class."""
    if cls is RolloutActor:  # its weight offers get a thread of their own
        return ray.remote(concurrency_groups={"weights": 1})(cls)
    return ray.remote(cls)


def plan_resources(nodes: list[dict], config, gpu_wanted: bool, in_placement_group: bool = False) -> dict[str, dict[str, Any]]:
    """Actor options per role from the cluster's alive nodes (`ray.nodes()`).

    CPUs: the learner and each rollout actor get `actor_cpus`, or an equal share of at most one
    CPU; rollout actors take none where a `rollout` resource decides their placement. Replay
    shards and the evaluator go to the learner's node (by affinity, see `ray_components`) and
    reserve no CPU, so they always fit there. The learner gets `learner_gpus` (default one GPU)
    if the cluster has them and the device allows it. Inside a placement group (a Tune trial:
    the actors are captured by it) the group decides placement, so the `learner` and `rollout`
    resources are not asked for.
    """
    alive = [n["Resources"] for n in nodes if n.get("Alive")]
    total = lambda key: sum(r.get(key, 0.0) for r in alive)  # noqa: E731
    workers = config.num_rollout_workers
    if config.device == "cuda" and total("GPU") < 1:
        raise UserError("device 'cuda' was asked for, but the Ray cluster has no GPU: use --set device=auto or a cluster with a GPU")
    share = config.actor_cpus or min(1.0, total("CPU") / (1 + workers))
    gpus = 1 if config.learner_gpus is None else config.learner_gpus
    learner: dict[str, Any] = {"num_cpus": share, "num_gpus": gpus if gpu_wanted and total("GPU") >= gpus > 0 else 0}
    rollout: dict[str, Any] = {"num_cpus": share}
    if in_placement_group:
        return {"learner": learner, "replay": {"num_cpus": 0}, "rollout": rollout, "evaluator": {"num_cpus": 0}}
    if total("learner") > 0:
        learner["resources"] = {"learner": 1}
    if total("rollout") > 0:
        slots = sum(int(r.get("rollout", 0)) for r in alive)
        if slots < workers:
            raise UserError(f"the cluster's nodes offer {slots} `rollout` slots for {workers} rollout workers: "
                            "lower --num-rollout-workers or add rollout nodes")
        rollout = {"num_cpus": 0, "resources": {"rollout": 1}}
    return {"learner": learner, "replay": {"num_cpus": 0}, "rollout": rollout, "evaluator": {"num_cpus": 0}}


def learner_threads(nodes: list[dict], config) -> int:
    """Torch threads of a CPU learner: the CPUs its node leaves to it (the `learner` node's, less
    the replay shards; else the cluster's, less rollout workers and shards)."""
    alive = [n["Resources"] for n in nodes if n.get("Alive")]
    learner_nodes = [r for r in alive if r.get("learner", 0) > 0]
    if learner_nodes:
        return max(1, int(learner_nodes[0].get("CPU", 0)) - config.replay_shards)
    return max(1, int(sum(r.get("CPU", 0) for r in alive)) - config.num_rollout_workers - config.replay_shards)


def init_ray(address: str | None, **kwargs: Any) -> None:
    """`ray.init` in the project's namespace; an `address` that does not answer is one line at
    once (Ray itself retries for minutes)."""
    if address not in (None, "auto", "local"):
        host, _, port = address.removeprefix("ray://").rpartition(":")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
        except (OSError, ValueError) as exc:
            raise UserError(f"no Ray cluster answers at '{address}' ({exc}): start one with `ray start --head`, "
                            "or leave --address out to run on a local instance") from None
    try:
        with _loopback_only(_on_loopback(address)):
            ray.init(address=address, namespace=NAMESPACE, logging_level=logging.WARNING, **kwargs)
    except ConnectionError as exc:  # `auto` with no cluster running
        raise UserError(f"no Ray cluster found for --address {address} ({first_line(str(exc))}): start one with "
                        "`ray start --head`, or leave --address out to run on a local instance") from None


def _on_loopback(address: str | None) -> bool:
    """Whether `ray.init(address)` starts a local instance, or joins one at a loopback address (a
    driver joining a loopback-only instance must take a loopback node address too). `auto` is
    taken as another machine's cluster: Ray's own lookup turns a loopback address into this
    machine's, which a loopback-only instance does not answer on."""
    given = os.environ.get("RAY_ADDRESS") or None if address in (None, "auto") else address
    if given is None:
        return address is None
    return given.rpartition(":")[0] in ("127.0.0.1", "localhost", "::1", "[::1]")


@contextmanager
def _loopback_only(starts_local_instance: bool) -> Iterator[None]:
    """A local instance started here listens on 127.0.0.1 alone (docs/cluster.md, "Security").

    Ray binds its servers (GCS, raylet, workers' gRPC, agents) to loopback only when the node's
    IP is loopback, and on Linux it replaces a loopback `_node_ip_address` by the machine's
    address unless its single-machine switch (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, read into
    `ray_constants.ENABLE_RAY_CLUSTER` at import) is off; it is turned off while the instance starts."""
    if not starts_local_instance:
        yield
        return
    previous = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = previous


RAY_ADDRESS_FILE = "ray_address"  # in the run directory: the cluster its actors are on, for `o2o status`


def record_address(run_path: str | Path) -> None:
    """Write the connected cluster's address into the run directory (a run's own local
    instance listens on a port nobody else knows)."""
    (Path(run_path) / RAY_ADDRESS_FILE).write_text(ray.get_runtime_context().gcs_address + "\n")


def recorded_address(run_path: str | Path) -> str | None:
    file = Path(run_path) / RAY_ADDRESS_FILE
    if not file.is_file():
        return None
    return file.read_text().strip() or None


def run_actors(run_path: str | Path, address: str) -> list[str]:
    """The names of a run's actors alive (or restarting) on the Ray cluster at `address`, asked
    from a driver connected to it (works with token auth and without the dashboard)."""
    prefix = f"{NAMESPACE}/{run_id(run_path)}/"
    try:
        init_ray(address)
    except UserError:
        raise UserError(f"no Ray cluster answers at --address {address}: the run is not running on Ray here; pass the "
                        "--address of the cluster it runs on") from None
    try:
        named = ray.util.list_named_actors(all_namespaces=True)
    finally:
        ray.shutdown()
    return sorted(a["name"] for a in named if a["namespace"] == NAMESPACE and a["name"].startswith(prefix))


@contextmanager
def ray_components(config, inputs: RunInputs, run_id: str, address: str | None) -> Iterator[Components]:
    """Start (or join) Ray, create the run's actors, and remove them (and a Ray we started) after."""
    started = not ray.is_initialized()
    if started:
        init_ray(address)
    transport = RayTransport()
    actors: list[Any] = []

    def create(cls: type, role: str, index: int, options: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        name = f"{NAMESPACE}/{run_id}/{role}-{index}"
        try:
            handle = actor_class(cls).options(name=name, namespace=NAMESPACE, **options).remote(*args, **kwargs)
        except ValueError as exc:  # the name is taken
            raise UserError(f"actor {name} already exists: this run directory is being run on the cluster already ({exc})") from None
        transport.register(handle, name)
        actors.append(handle)
        return handle

    try:
        in_group = ray.util.get_current_placement_group() is not None
        plan = plan_resources(ray.nodes(), config, gpu_wanted=config.device != "cpu", in_placement_group=in_group)
        check_learner_backend(config, algorithm_class(config.algo), on_gpu=plan["learner"]["num_gpus"] > 0)
        # In a placement group a CPU learner has its bundle's share, not the node's CPUs.
        threads = config.learner_threads or (max(1, int(plan["learner"]["num_cpus"])) if in_group else learner_threads(ray.nodes(), config))
        learner = create(LearnerActor, "learner", 0, {**plan["learner"], "max_restarts": 0}, threads, config,
                         inputs.obs_dim, inputs.act_dim, policy=inputs.policy, pretrained=inputs.pretrained, offline=inputs.offline)
        node = transport.get(learner.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()))
        near_learner = {"scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=False)}
        capacity = inputs.shard_capacity(config)
        replays = [create(ReplayService, "replay", j, {**plan["replay"], **near_learner, "max_restarts": 0},
                          inputs.obs_dim, inputs.act_dim, capacity, part, config.seed + j)
                   for j, part in enumerate(shard_offline(inputs.replay_offline, config.replay_shards))]
        evaluator = create(EvaluatorActor, "evaluator", 0, {**plan["evaluator"], **near_learner, "max_restarts": -1, "max_task_retries": 2},
                           config.env, config.eval_episodes, config.seed + 10_000, config.env_kwargs, inputs.ref_min, inputs.ref_max)
        arch = transport.call(learner, "policy_arch")
        workers = [create(RolloutActor, "rollout", i, {**plan["rollout"], "max_restarts": -1, "max_task_retries": 0},
                          config.env, config.envs_per_worker, config.seed, arch, config.env_kwargs, i)
                   for i in range(config.num_rollout_workers)]
        _wait_placed(transport, actors, plan)
        transport.call(learner, "attach_replay", replays)
        yield Components(transport, learner, workers, replays, evaluator, envs_per_worker=config.envs_per_worker,
                         chunk_transitions=CHUNK_TRANSITIONS,
                         collects_per_worker=COLLECTS_PER_WORKER, max_updates_per_call=MAX_UPDATES_PER_CALL,
                         shard_capacity=capacity, references=inputs.references)
    finally:
        for handle in actors:
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
