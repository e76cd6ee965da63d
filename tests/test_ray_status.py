"""A local Ray instance started for a run listens on loopback only; `o2o status RUN` lists the
run's actors from another driver (the way the README gives, token auth on, no dashboard)."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil
import pytest
import ray

from distributed_o2o.runtime.ray_cluster import NAMESPACE, init_ray, run_id

LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


@pytest.fixture(scope="module")
def local_instance():
    """A local instance started as a run starts it; yields its address."""
    init_ray(None, num_cpus=1, include_dashboard=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@ray.remote(num_cpus=0)
class _Idle:
    def pid(self) -> int:
        return os.getpid()


def test_a_local_instance_listens_on_loopback_only(local_instance):
    actor = _Idle.remote()
    ray.get(actor.pid.remote())
    driver = psutil.Process()
    processes = [driver, *driver.children(recursive=True)]  # GCS, raylet, agents, workers
    assert any("raylet" in p.name() for p in processes) and any("gcs_server" in p.name() for p in processes)
    listening = {(p.name(), c.laddr.ip) for p in processes for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
    assert listening and {ip for _, ip in listening} <= LOOPBACK, listening


def _status(run, address=None):
    where = [] if address is None else ["--address", address]
    return subprocess.run([sys.executable, "-m", "distributed_o2o.cli.main", "status", str(run), *where],
                          capture_output=True, text=True, timeout=120)


def test_o2o_status_lists_the_actors_of_the_run_alone(local_instance, tmp_path):
    run, other = tmp_path / "run", tmp_path / "other"
    names = [f"{NAMESPACE}/{run_id(run)}/{role}" for role in ("learner-0", "rollout-0")]
    actors = [_Idle.options(name=name, namespace=NAMESPACE).remote() for name in names]
    actors.append(_Idle.options(name=f"{NAMESPACE}/{run_id(other)}/learner-0", namespace=NAMESPACE).remote())
    ray.get([a.pid.remote() for a in actors])
    listed = _status(run, local_instance)
    assert listed.returncode == 0 and listed.stdout.split() == names, listed.stderr
    idle = _status(tmp_path / "idle", local_instance)
    assert idle.returncode == 1 and "has no actors on the Ray cluster" in idle.stderr and not idle.stdout


def test_o2o_status_finds_a_run_s_own_instance_by_the_address_it_recorded(local_instance, tmp_path):
    from distributed_o2o.runtime.ray_cluster import record_address

    run = tmp_path / "run"
    run.mkdir()
    record_address(run)  # what a --mode ray run does once its instance is up
    name = f"{NAMESPACE}/{run_id(run)}/learner-0"
    actor = _Idle.options(name=name, namespace=NAMESPACE).remote()
    ray.get(actor.pid.remote())
    listed = _status(run)  # no --address: the run's own loopback instance, not `auto`
    assert listed.returncode == 0 and listed.stdout.split() == [name], listed.stderr
