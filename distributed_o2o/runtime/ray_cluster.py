"""The Ray cluster a run's actors live on: joining or starting it, the actors' names, their
placement, and the address a run records for `o2o status`.

Every actor of a run is named `o2o/<run-id>/<role>-<index>` in the `o2o` namespace; the
run id is the run directory's name plus a hash of its absolute path.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ray
from ray._private import ray_constants

from distributed_o2o.errors import UserError, first_line

NAMESPACE = "o2o"


def run_id(path: str | Path) -> str:
    """The run's name in actor names: the directory name plus a hash of its absolute path."""
    path = Path(path).resolve()
    return f"{path.name}-{hashlib.sha256(str(path).encode()).hexdigest()[:6]}"


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
    workers = config.runtime.num_rollout_workers
    if config.runtime.device == "cuda" and total("GPU") < 1:
        raise UserError("device 'cuda' was asked for, but the Ray cluster has no GPU: use --set runtime.device=auto or a cluster with a GPU")
    share = config.runtime.actor_cpus or min(1.0, total("CPU") / (1 + workers))
    gpus = 1 if config.runtime.learner_gpus is None else config.runtime.learner_gpus
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
        return max(1, int(learner_nodes[0].get("CPU", 0)) - config.runtime.replay_shards)
    return max(1, int(sum(r.get("CPU", 0) for r in alive)) - config.runtime.num_rollout_workers - config.runtime.replay_shards)


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

