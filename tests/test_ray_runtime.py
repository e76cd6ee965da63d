"""The Ray mode: the same driver over actors counts, schedules and checkpoints as the local
mode does; the transport, the rate limiter and the replay shards on their own.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import latest_save, make_weak_bc
import ray
import torch

from distributed_o2o.checkpoint import load_policy
from distributed_o2o.config import finetune_config
from distributed_o2o.errors import UserError
from distributed_o2o.runtime import learner as learner_module
from distributed_o2o.runtime.evaluator import Evaluator
from distributed_o2o.runtime.finetune import resume_finetune, run_finetune
from distributed_o2o.runtime.graphed import GraphedUpdater
from distributed_o2o.runtime.ray_cluster import plan_resources, run_id
from distributed_o2o.runtime.ray_runtime import Answer, LearnerActor, RayTransport
from distributed_o2o.runtime.replay import RateLimiter, ReplayService, check_rate_limits, shard_offline, split_rows
from distributed_o2o.runtime.rollout import RolloutWorker
from distributed_o2o.runtime.transport import Done, LocalTransport

ENV = "Pendulum-v1"
SMALL = {"env": ENV, "hidden": [32, 32], "batch_size": 64, "eval_episodes": 2, "log_every": 200}


@pytest.fixture(scope="module")
def ray_instance():
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def _chunk(start: int, n: int) -> dict[str, np.ndarray]:
    ids = np.arange(start, start + n, dtype=np.float32)
    return {"observations": np.repeat(ids[:, None], 3, 1), "actions": np.zeros((n, 1), np.float32), "rewards": ids,
            "next_observations": np.repeat(ids[:, None], 3, 1), "terminals": np.zeros(n, np.float32),
            "timeouts": np.zeros(n, np.float32), "policy_version": np.zeros(n, np.int32)}


# ---------------------------------------------------------------- transport, limiter, shards
def test_local_transport_runs_each_call_at_submit_and_passes_futures_as_values():
    calls = []
    replay = ReplayService(3, 1, 100)

    class Source:
        def chunk(self, n):
            calls.append(n)
            return _chunk(0, n)

    t = LocalTransport()
    produced = t.submit(Source(), "chunk", 5)
    assert calls == [5] and isinstance(produced, Done)  # ran before anyone waited
    t.submit(replay, "add", produced)  # the future arrives as its value
    assert t.wait([produced], num_returns=1) == [produced]
    assert replay.size() == 5 and t.get(produced)["rewards"].tolist() == [0, 1, 2, 3, 4]


def test_rate_limiter_holds_the_learner_inside_the_band():
    limiter = RateLimiter(max_lag=10)
    assert limiter.start(cap=64) == 0  # nothing earned: the learner never runs ahead of the data
    assert limiter.try_reserve(6)  # a chunk in flight that will earn 6 updates
    assert not limiter.try_reserve(6)  # a second would put the learner 12 behind
    limiter.settle(reserved=6, earned=6)  # the chunk arrived
    assert limiter.start(cap=4) == 4 and limiter.lag() == 6
    assert not limiter.try_reserve(6)  # 4 running + 2 owed + 6 > 10
    limiter.finish(4)
    assert limiter.try_reserve(6) and limiter.lag() == 8
    limiter.settle(reserved=6, earned=0)  # that chunk was lost with its worker: nothing earned
    assert limiter.owed == 2 and limiter.lag() == 2


def test_limits_that_would_stall_are_refused_before_any_work(tmp_path):
    fields = {**SMALL, "online_steps": 5000, "runtime": {"envs_per_worker": 16, "samples_per_insert_tolerance": 64 * 10},
              "learning_starts": 0}
    config = finetune_config("sac", None, fields)
    with pytest.raises(UserError, match="narrower than one rollout chunk"):
        run_finetune(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # refused before the first evaluation


def test_the_band_must_hold_one_chunk_and_one_update():
    check_rate_limits(chunk=256, utd=2, batch_size=64, tolerance=(256 * 2 + 1) * 64)
    with pytest.raises(UserError, match="set it to at least 32832"):
        check_rate_limits(chunk=256, utd=2, batch_size=64, tolerance=(256 * 2 + 1) * 64 - 1)


def test_shards_split_batches_by_size_and_serve_fragments_once():
    assert split_rows(10, [3, 1, 0]) == [8, 2, 0] and sum(split_rows(7, [1, 1, 1])) == 7
    offline = shard_offline(_chunk(1000, 9), 2)
    assert [len(part["rewards"]) for part in offline] == [5, 4]
    shard = ReplayService(3, 1, 100, offline=offline[0], seed=0)
    shard.add(_chunk(0, 20))
    batches = shard.sample_many(4, 6, 2)
    assert batches["rewards"].shape == (4, 8) and batches["observations"].shape == (4, 8, 3)
    assert (batches["rewards"][:, :6] < 1000).all() and (batches["rewards"][:, 6:] >= 1000).all()
    worker = RolloutWorker(ENV, num_envs=2, seed=0, policy_arch={"family": "tanh_gaussian", "obs_dim": 3, "act_dim": 1, "hidden": [8]})
    first, second = worker.collect(3), worker.collect(3)
    assert shard.put_fragment(first).transitions == 6 and shard.put_fragment(second).version == -1
    taken = shard.take_fragments()
    assert [f["rewards"].shape for f in taken] == [(3, 2), (3, 2)]
    np.testing.assert_array_equal(taken[0]["observations"], first.arrays["observations"])  # oldest first
    assert shard.take_fragments() == [] and shard.size() == 20  # served once; the online table is untouched


def test_a_shard_hands_out_the_rows_inserted_since_a_cursor():
    shard = ReplayService(3, 1, 8)
    cursor, rows = shard.rows_since(0)
    assert cursor == 0 and len(rows["rewards"]) == 0
    shard.add(_chunk(0, 5))
    cursor, rows = shard.rows_since(cursor)
    assert cursor == 5 and rows["rewards"].tolist() == [0, 1, 2, 3, 4]
    shard.add(_chunk(5, 6))  # wraps the ring: rows 3..10 remain
    cursor, rows = shard.rows_since(cursor)
    assert cursor == 11 and rows["rewards"].tolist() == [5, 6, 7, 8, 9, 10]
    assert shard.rows_since(1)[1]["rewards"].tolist() == list(range(3, 11))  # older than the ring: all it holds
    shard.add(_chunk(11, 20))  # more than the capacity at once
    cursor, rows = shard.rows_since(cursor)
    assert cursor == 31 and rows["rewards"].tolist() == list(range(23, 31))
    assert shard.rows_since(cursor)[1]["rewards"].tolist() == []


def test_placement_follows_custom_resources_and_refuses_too_few_rollout_slots():
    config = finetune_config("sac", None, {**SMALL, "runtime": {"num_rollout_workers": 3}})
    nodes = [{"Alive": True, "Resources": {"CPU": 4.0, "GPU": 1.0, "learner": 1.0}},
             {"Alive": True, "Resources": {"CPU": 8.0, "rollout": 2.0}},
             {"Alive": False, "Resources": {"CPU": 8.0, "rollout": 8.0}}]
    with pytest.raises(UserError, match="offer 2 `rollout` slots for 3 rollout workers"):
        plan_resources(nodes, config, gpu_wanted=True)
    nodes[1]["Resources"]["rollout"] = 3.0
    plan = plan_resources(nodes, config, gpu_wanted=True)
    assert plan["learner"]["num_gpus"] == 1 and plan["learner"]["resources"] == {"learner": 1}
    assert plan["rollout"]["resources"] == {"rollout": 1}
    assert plan_resources(nodes[:1], finetune_config("sac", None, SMALL), gpu_wanted=False)["learner"]["num_gpus"] == 0
    # In a trial's placement group (a sweep, Tune) the group places the actors: no custom resources,
    # and the trial's shares (learner_gpus, actor_cpus) are what is asked for.
    packed = finetune_config("sac", None, {**SMALL, "runtime": {"num_rollout_workers": 3, "learner_gpus": 0.5, "actor_cpus": 0.8}})
    plan = plan_resources(nodes, packed, gpu_wanted=True, in_placement_group=True)
    assert plan["learner"] == {"num_cpus": 0.8, "num_gpus": 0.5} and plan["rollout"] == {"num_cpus": 0.8}


def test_mode_and_address_are_checked(tmp_path):
    config = finetune_config("sac", None, SMALL)
    with pytest.raises(UserError, match="unknown mode 'threads'"):
        run_finetune(config, tmp_path / "a", mode="threads", progress=False)
    with pytest.raises(UserError, match="--address joins a Ray cluster: it needs --mode ray"):
        run_finetune(config, tmp_path / "b", mode="local", address="auto", progress=False)


def test_resume_may_change_the_shard_count_and_ignores_an_interrupted_save(tmp_path, monkeypatch):
    out = tmp_path / "run"
    config = finetune_config("sac", None, {**SMALL, "online_steps": 600, "eval_every": 300, "random_start_steps": 100,
                                           "learning_starts": 100, "runtime": {"replay_shards": 2, "envs_per_worker": 2}})
    original = learner_module.Learner.update_from_replay

    def failing(self, count, env_step, sizes):
        if env_step > 400:
            raise RuntimeError("injected failure")
        return original(self, count, env_step, sizes)

    monkeypatch.setattr(learner_module.Learner, "update_from_replay", failing)
    with pytest.raises(RuntimeError, match="injected"):
        run_finetune(config, out, progress=False)
    monkeypatch.undo()
    assert sorted(p.name for p in latest_save(out).glob("replay*.npz")) == ["replay-0.npz", "replay-1.npz"]
    # A save cut short while its replay files were being written.
    incoming = out / "resume" / "incoming"
    incoming.mkdir()
    (incoming / "replay-0.npz").write_bytes((latest_save(out) / "replay-0.npz").read_bytes()[:100])
    with pytest.raises(UserError, match="'utd' cannot change"):
        resume_finetune(out, progress=False, changes={"utd": 2})
    summary = resume_finetune(out, progress=False, changes={"runtime": {"replay_shards": 1}})
    assert summary["env_steps"] == 600 and summary["updates"] == 600 - 100 + 1
    assert sorted(p.name for p in latest_save(out).iterdir()) == ["manifest.json", "replay.npz", "state.json", "state.safetensors"]
    saved = np.load(latest_save(out) / "replay.npz")
    assert int(saved["inserted"]) == len(saved["rewards"]) == 600
    assert not incoming.exists()


# ---------------------------------------------------------------- with Ray
def test_the_learner_actor_pulls_from_every_shard_and_keeps_the_next_pull_in_flight(ray_instance):
    config = finetune_config("sac", None, {**SMALL, "learning_starts": 0, "random_start_steps": 0})
    shards = [ray.remote(ReplayService).remote(3, 1, 1000, part, j) for j, part in enumerate(shard_offline(_chunk(5000, 100), 2))]
    ray.get([shards[0].add.remote(_chunk(0, 300)), shards[1].add.remote(_chunk(1000, 100))])
    learner = LearnerActor(1, config, 3, 1)  # the actor class, here in the test process
    learner.attach_replay(shards)
    sizes = [300, 100]
    plan = [(48, 0), (16, 0)]  # online rows in proportion to the shard sizes
    batches = learner._sample(5, plan)
    rewards = batches["rewards"]
    assert rewards.shape == (5, 64)
    assert ((rewards < 1000).sum(axis=1) == 48).all() and (((rewards >= 1000) & (rewards < 5000)).sum(axis=1) == 16).all()
    in_flight = learner._next[1]
    assert len(in_flight) == 2 and all(isinstance(ref, ray.ObjectRef) for ref in in_flight)
    version, metrics = learner.update_from_replay(5, 0, sizes)  # takes the pull in flight, sends the next
    assert version == 5 and "critic_loss" in metrics and learner._next[1] != in_flight


def test_the_learner_actor_mirrors_every_shard_on_the_graphed_path(ray_instance):
    config = finetune_config("sac", None, {**SMALL, "learning_starts": 0, "random_start_steps": 0})
    shards = [ray.remote(ReplayService).remote(3, 1, 1000, None, j) for j in range(2)]
    ray.get([shards[0].add.remote(_chunk(0, 300)), shards[1].add.remote(_chunk(1000, 100))])
    learner = LearnerActor(1, config, 3, 1)  # the actor class, here in the test process
    learner.attach_replay(shards)
    # What `graphed_updater` builds on CUDA, here running the same steps eagerly.
    learner.graphed = GraphedUpdater(learner.algorithm, 3, 1, capacity=1000, device=torch.device("cpu"))
    version, metrics = learner.update_from_replay(2, 0, [300, 100])
    mirror = learner.graphed.replay
    assert version == 2 and metrics == {} and learner._next is None  # no batch pulled from the shards
    assert "critic_loss" in learner.settle_updates()  # the call's metrics, read back later
    assert sorted(mirror.storage[:mirror.count, 4].tolist()) == [*range(300), *range(1000, 1100)]
    assert learner.cursors == [300, 100]


def _named_actors_while(run) -> tuple[set[str], dict]:
    """Names of the `o2o` actors seen while `run()` goes on, and its result."""
    seen: set[str] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.update(a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == "o2o")
            time.sleep(0.2)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        result = run()
    finally:
        done.set()
        thread.join()
    return seen, result


def _train_scalars(run: Path, tag: str) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    return [e.value for e in events.Scalars(tag)] if tag in events.Tags()["scalars"] else []


@pytest.mark.slow
def test_ray_mode_counts_evaluates_and_checkpoints_like_the_local_mode(tmp_path, ray_instance):
    fields = {**SMALL, "online_steps": 1200, "eval_every": 600, "random_start_steps": 150, "learning_starts": 300,
              "runtime": {"num_rollout_workers": 2, "envs_per_worker": 2, "replay_shards": 2}}
    config = finetune_config("sac", None, fields)
    local = run_finetune(config, tmp_path / "local", mode="local", progress=False)
    out = tmp_path / "ray"
    names, summary = _named_actors_while(lambda: run_finetune(config, out, mode="ray", progress=False))
    prefix = f"o2o/{run_id(out)}/"
    assert {prefix + n for n in ("learner-0", "replay-0", "replay-1", "rollout-0", "rollout-1", "evaluator-0")} <= names
    for key in ("env_steps", "updates", "eval_env_steps"):
        assert summary[key] == local[key]
    assert summary["updates"] == 1200 - 300 + 1  # the UTD (1) from learning_starts on, exactly
    assert [json.loads(line)["env_steps"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [0, 600, 1200]
    assert (out / "checkpoints" / "step_000001200" / "metadata.json").exists()
    saved = [np.load(latest_save(out) / f"replay-{j}.npz") for j in range(2)]
    assert sum(int(s["inserted"]) for s in saved) == sum(len(s["rewards"]) for s in saved) == 1200
    versions = np.concatenate([s["policy_version"] for s in saved])
    assert len(np.unique(versions)) > 3  # rollouts picked up newer weights during the run
    staleness = _train_scalars(out, "train/staleness")
    assert staleness and min(staleness) >= 0
    assert _train_scalars(out, "train/update_lag")
    # Evaluations play beside the training: each line and checkpoint are still of the weights
    # at its point (played again here with that point's start states, the evaluator's seeding).
    evaluator = Evaluator(ENV, config.eval_episodes, config.seed + 10_000)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the evaluator actor
    try:
        for line in (out / "metrics.jsonl").read_text().splitlines():
            record = json.loads(line)
            policy = load_policy(out / "checkpoints" / f"step_{record['env_steps']:09d}")
            replayed = evaluator.evaluate(policy.arch(), policy.state_dict(), True, record["env_steps"])
            assert replayed["return_mean"] == pytest.approx(record["return_mean"], rel=1e-5)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def weak_bc(tmp_path_factory):
    return make_weak_bc(tmp_path_factory.mktemp("weak_bc_ray"), transitions=1000, bc_steps=200, hidden=[32, 32])


@pytest.mark.slow
def test_o2ppo_trains_on_whole_fragments_from_the_same_actors(tmp_path, ray_instance, weak_bc):
    config = finetune_config("o2ppo", None, {**SMALL, **weak_bc, "online_steps": 1200, "eval_every": 600, "reevaluate_steps": 50,
                                             "rollout_steps": 200, "minibatch_size": 50, "epochs": 2,
                                             "runtime": {"num_rollout_workers": 2, "envs_per_worker": 2}})
    local = run_finetune(config, tmp_path / "local", mode="local", progress=False)
    summary = run_finetune(config, tmp_path / "ray", mode="ray", progress=False)
    # 2 workers x 2 envs x 50 steps = one 200-step fragment set per update.
    assert summary["env_steps"] == local["env_steps"] == 1200
    assert summary["updates"] == local["updates"] == 6
    assert len(np.load(latest_save(tmp_path / "ray") / "replay.npz")["rewards"]) == 0  # fragments never enter the table
    assert _train_scalars(tmp_path / "ray", "train/staleness") == [0.0] * 6  # strictly on-policy


@ray.remote(num_cpus=0)
class _RefusesItsInput:
    def __init__(self, problem: str):
        raise UserError(problem)


def test_bad_input_found_by_an_actor_constructor_is_a_user_error_on_the_driver(ray_instance):
    # Ray hands a failed constructor's exception back as text only; the transport finds the
    # UserError in it, so the CLI prints one line and exits 2 rather than showing a dead actor.
    actor = _RefusesItsInput.remote("the dataset has no 'rewards' key: rebuild it with o2o data make")
    with pytest.raises(UserError, match="^the dataset has no 'rewards' key: rebuild it with o2o data make$"):
        RayTransport().get(actor.__ray_call__.remote(lambda self: 1))


@ray.remote(num_cpus=0)
def _slow_answer(release: str) -> int:
    while not Path(release).exists():
        time.sleep(0.02)
    return 7


@ray.remote(num_cpus=0)
class _StartsThenReads:
    def __init__(self, started: str, answer):
        Path(started).touch()  # what a rollout worker does before it needs the learner's answer
        self.value = answer.get() if isinstance(answer, Answer) else answer


def _constructor_started(tmp_path: Path, wrap: bool, within_s: float) -> bool:
    """Whether the actor's constructor ran within `within_s` while its answer was still pending."""
    started, release = tmp_path / f"started-{wrap}", tmp_path / f"release-{wrap}"
    ref = _slow_answer.remote(str(release))
    actor = _StartsThenReads.remote(str(started), Answer(ref) if wrap else ref)
    deadline = time.monotonic() + within_s
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    seen = started.exists()
    release.touch()
    assert ray.get(actor.__ray_call__.remote(lambda self: self.value)) == 7
    return seen


def test_an_answer_lets_the_actor_start_before_the_answer_is_there(ray_instance, tmp_path):
    # The rollout workers take the learner's policy shape so: they start while the learner is built.
    # A worker process's start on a busy 2-core machine can take several seconds: the first waits
    # up to a minute (it returns as soon as the actor starts), the second watches for 5 s.
    assert _constructor_started(tmp_path, wrap=True, within_s=60)
    assert not _constructor_started(tmp_path, wrap=False, within_s=5)  # a bare reference holds the start back


@ray.remote(num_cpus=0)
def _failing_answer() -> int:
    raise UserError("the learner refuses its input")


def test_an_actor_whose_answer_failed_leaves_without_an_error_of_its_own(ray_instance, tmp_path):
    # The learner's own error is the one the driver reports; the rollout workers waiting on its
    # answer exit on purpose rather than raise a second one.
    actor = _StartsThenReads.remote(str(tmp_path / "started"), Answer(_failing_answer.remote()))
    with pytest.raises(ray.exceptions.ActorDiedError) as died:
        ray.get(actor.__ray_ready__.remote())
    assert "exit_actor" in str(died.value) and "learner refuses" not in str(died.value)


def test_learner_threads_sets_the_cpu_learner_actors_torch_threads(ray_instance, tmp_path):
    # On 2 CPUs with one rollout actor and one shard the automatic share would be 1 thread.
    out = tmp_path / "run"
    config = finetune_config("sac", None, {**SMALL, "online_steps": 400, "eval_every": 400, "random_start_steps": 100,
                                           "learning_starts": 100, "runtime": {"learner_threads": 2}})
    seen: list[int] = []

    def probe() -> None:
        name = f"o2o/{run_id(out)}/learner-0"
        while not seen:
            try:
                learner = ray.get_actor(name, namespace="o2o")
                seen.append(ray.get(learner.__ray_call__.remote(lambda self: torch.get_num_threads())))
            except ValueError:  # not created yet
                time.sleep(0.05)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    run_finetune(config, out, mode="ray", progress=False)
    thread.join(timeout=5)
    assert seen == [2]


def test_a_resumed_ray_run_starts_each_env_stream_anew(ray_instance, tmp_path):
    """After a resume the rollout actors' envs do not start again from the config seed: each
    stream's first observation after the resume is not its first observation of the run."""
    out = tmp_path / "run"
    config = finetune_config("sac", None, {**SMALL, "online_steps": 200, "eval_every": 200, "random_start_steps": 400,
                                           "learning_starts": 100, "runtime": {"envs_per_worker": 2}})
    run_finetune(config, out, mode="ray", progress=False)
    resume_finetune(out, mode="ray", progress=False, changes={"online_steps": 400})
    saved = np.load(latest_save(out) / "replay.npz")
    before, after = slice(0, 200), slice(200, 400)  # rows in insertion order; 200 inserted before the resume
    for stream in (0, 1):
        first = [saved["observations"][part][saved["stream"][part] == stream][0] for part in (before, after)]
        assert not np.array_equal(*first), stream


def test_a_ray_population_runs_each_seed_as_its_own_sub_run(tmp_path, ray_instance):
    fields = {**SMALL, "hidden": [16, 16], "online_steps": 200, "eval_every": 100, "eval_episodes": 1,
              "random_start_steps": 50, "learning_starts": 100, "batch_size": 16}
    out = tmp_path / "population"
    names, summary = _named_actors_while(lambda: run_finetune(finetune_config("sac", None, fields), out, mode="ray",
                                                              progress=False, seeds=[3, 4]))
    prefix = f"o2o/{run_id(out)}/"
    assert {prefix + n for n in ("learner-0", "replay-0", "rollout-0", "evaluator-0", "evaluator-1")} <= names
    for seed, run in zip((3, 4), summary["runs"], strict=True):
        sub = out / f"seed_{seed}"
        assert run["seed"] == seed and run["env_steps"] == 200 and run["updates"] == 200 - 100 + 1
        assert [json.loads(line)["env_steps"] for line in (sub / "metrics.jsonl").read_text().splitlines()] == [0, 100, 200]
        assert (sub / "checkpoints" / "step_000000200" / "metadata.json").exists()
        assert _train_scalars(sub, "train/critic_loss")
