"""The graphed learner path: the device replay mirror, and updates identical to `Algorithm.update`.

On CPU `GraphedUpdater.run` executes the same steps as its CUDA graphs, eagerly: the tests check
that they are exactly the algorithm's own `update` on the same batches. The CUDA tests (skipped
without a GPU) check that graph replays compute what eager updates compute and that every
replay draws fresh batches and noise.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distributed_o2o.algorithms.baselines import SAC
from distributed_o2o.algorithms.o2sac import O2SAC
from distributed_o2o.algorithms.policies import TanhGaussianPolicy
from distributed_o2o.algorithms.porl import PORL
from distributed_o2o.config import O2SACConfig, PORLConfig, RuntimeConfig, SACConfig, finetune_config
from distributed_o2o.errors import UserError
from distributed_o2o.runtime.graphed import (INDUCTOR_SETTINGS, DeviceReplay, GraphedUpdater, graphed_updater,
                                             warm_compiler)
from distributed_o2o.runtime.learner import Learner, LearnerDiverged
from distributed_o2o.runtime.replay import ReplayService

OBS, ACT, HIDDEN, B = 3, 2, [32, 32], 32
CPU = torch.device("cpu")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def transitions(n: int, start: int = 0, seed: int = 0) -> dict[str, np.ndarray]:
    """Rows whose reward is their id (start, start+1, ...), repeated in obs[:, 0] and next_obs[:, 0]."""
    rng = np.random.default_rng(seed)
    ids = np.arange(start, start + n, dtype=np.float32)
    obs, next_obs = rng.normal(size=(n, OBS)), rng.normal(size=(n, OBS))
    obs[:, 0], next_obs[:, 0] = ids, ids + 0.5
    return {"observations": obs, "actions": rng.uniform(-1, 1, (n, ACT)), "rewards": ids,
            "next_observations": next_obs, "terminals": (rng.random(n) < 0.2).astype(np.float32)}


def normalised(n: int, seed: int) -> dict[str, np.ndarray]:
    """Transitions of ordinary scale, for learning."""
    arrays = transitions(n, seed=seed)
    arrays["observations"][:, 0] = arrays["next_observations"][:, 0] = 0.0
    arrays["rewards"] = arrays["observations"][:, 1] - (arrays["actions"] ** 2).sum(1)
    return arrays


def test_device_replay_keeps_the_newest_rows_and_mixes_offline_rows_at_the_ratio():
    replay = DeviceReplay(OBS, ACT, capacity=8, device=CPU)
    replay.set_offline(transitions(5, start=-100))
    for start in (0, 5, 10):  # 15 rows through a ring of 8: rows 7..14 remain
        replay.add(transitions(5, start=start))
    assert replay.count == 8 and int(replay.size) == 8

    torch.manual_seed(0)
    seen_online, seen_offline = set(), set()
    for _ in range(20):
        batch = replay.sample(64, 16)
        ids = batch.rewards.long().tolist()
        seen_online |= set(ids[:48])
        seen_offline |= set(ids[48:])
        # Every column comes from the same row.
        assert torch.equal(batch.obs[:, 0], batch.rewards) and torch.equal(batch.next_obs[:, 0], batch.rewards + 0.5)
    assert seen_online == set(range(7, 15))
    assert seen_offline == set(range(-100, -95))


def test_device_replay_online_rows_survive_setting_offline_data_later():
    replay = DeviceReplay(OBS, ACT, capacity=4, device=CPU)
    replay.add(transitions(3, start=0))
    replay.set_offline(transitions(2, start=-10))
    ids = set(replay.sample(200, 0).rewards.long().tolist())
    assert ids == {0, 1, 2}


# ---------------------------------------------------------------- run == update
def pretrained(seed: int) -> TanhGaussianPolicy:
    torch.manual_seed(seed)
    return TanhGaussianPolicy(OBS, ACT, HIDDEN)


def build_sac(seed: int):
    # 4 critics, min over 2 random ones: the randomly subsampled min is part of the step.
    return SAC(SACConfig(hidden=HIDDEN, batch_size=B, num_critics=4), OBS, ACT, CPU, policy=pretrained(seed))


def build_porl(seed: int):
    return PORL(PORLConfig(hidden=HIDDEN, batch_size=B, num_critics=4, presample_steps=100), OBS, ACT, CPU,
                policy=pretrained(seed))


def build_o2sac(seed: int):
    algo = O2SAC(O2SACConfig(hidden=HIDDEN, batch_size=B), OBS, ACT, CPU, policy=pretrained(seed))
    algo.handover(lambda policy: 1.0)
    return algo


def state(algo) -> list[torch.Tensor]:
    modules = [algo.policy, algo.critic, algo.target_critic]
    return [t.detach().clone() for m in modules for t in m.state_dict().values()] + [algo.log_alpha.detach().clone()]


@pytest.mark.parametrize("build, env_step, offline_ratio", [
    (build_sac, 10_000, 0.0),
    (build_porl, 50, 0.0),  # pre-sample: the critic alone
    (build_porl, 500, 0.0),
    (build_o2sac, 20_000, 0.5),
])
def test_run_is_update_on_the_same_batches(build, env_step, offline_ratio):
    online, offline = normalised(300, seed=1), normalised(200, seed=2)
    graphed, eager = build(0), build(0)
    updater = GraphedUpdater(graphed, OBS, ACT, capacity=256, device=CPU)
    replay = DeviceReplay(OBS, ACT, capacity=256, device=CPU)
    for target in (updater, replay):
        target.set_offline(offline)
        target.add(online)
    before = state(graphed)

    torch.manual_seed(7)
    metrics = updater.run(6, env_step, offline_ratio)
    torch.manual_seed(7)
    history = [eager.update(replay.sample(B, int(B * offline_ratio)), env_step) for _ in range(6)]

    assert all(torch.equal(a, b) for a, b in zip(state(graphed), state(eager), strict=True))
    assert metrics.keys() == history[0].keys()
    assert metrics == pytest.approx({k: np.mean([m[k] for m in history]) for k in metrics}, rel=1e-6)
    policy_moved = not all(torch.equal(a, b) for a, b in zip(state(graphed)[:4], before[:4]))
    assert policy_moved == (env_step >= getattr(graphed.config, "presample_steps", 0))


@pytest.mark.parametrize("autotune", [False, True])
def test_inductor_settings_hold_while_the_updater_compiles_and_captures_with_autotuned_products_only_when_asked(autotune):
    import logging

    import torch._inductor.config as inductor

    candidates_log = logging.getLogger("torch._inductor.select_algorithm")
    updater = GraphedUpdater(build_sac(0), OBS, ACT, capacity=64, device=CPU, compile=True, autotune=True)
    assert updater.compiled is False and updater.autotune is False  # nothing is compiled without CUDA
    with updater._kernel_settings():
        assert inductor.combo_kernels is False
    updater.compiled, updater.autotune = True, autotune  # as the constructor sets them on CUDA
    with updater._kernel_settings():
        assert inductor.max_autotune_gemm is autotune and inductor.max_autotune is False  # products only
        assert all(getattr(inductor, key) == value for key, value in INDUCTOR_SETTINGS.items())
        # the skipped candidates' error records are dropped while autotuning, and only then
        assert candidates_log.isEnabledFor(logging.ERROR) is not autotune
    assert inductor.max_autotune_gemm is False and inductor.combo_kernels is False
    assert candidates_log.isEnabledFor(logging.ERROR)


def test_run_refuses_to_sample_an_empty_replay():
    updater = GraphedUpdater(build_sac(0), OBS, ACT, capacity=16, device=CPU)
    with pytest.raises(RuntimeError, match="online transition"):
        updater.run(1, 10_000, 0.0)


@pytest.mark.parametrize("backend, expected", [("eager", None), ("auto", None), ("graph", UserError)])
def test_backend_choice_on_cpu(backend, expected):
    config = SACConfig(hidden=HIDDEN, batch_size=B, runtime=RuntimeConfig(learner_backend=backend))
    algo = SAC(config, OBS, ACT, CPU)
    if expected is UserError:
        with pytest.raises(UserError, match="CUDA"):
            graphed_updater(config, algo, OBS, ACT, CPU)
    else:
        assert graphed_updater(config, algo, OBS, ACT, CPU) is None


# ---------------------------------------------------------------- the learner's graphed path
def mirrored_ids(updater: GraphedUpdater) -> list[int]:
    """The reward (= row id) of every online row in the device mirror, sorted."""
    replay = updater.replay
    online = replay.storage[replay.num_offline:replay.num_offline + replay.count]
    return sorted(online[:, OBS + ACT].long().tolist())


def test_learner_mirrors_every_shard_row_once_and_refills_after_a_restore():
    config = finetune_config("sac", None, {"env": "Pendulum-v1", "hidden": HIDDEN, "batch_size": B, "runtime": {"device": "cpu"}})
    learner = Learner(config, OBS, ACT)
    assert learner.graphed is None  # on the CPU: the eager path
    shards = [ReplayService(OBS, ACT, capacity=16, seed=j) for j in range(2)]
    learner.attach_replay(shards)
    # What `graphed_updater` builds on CUDA, here running the same steps eagerly.
    learner.graphed = GraphedUpdater(learner.algorithm, OBS, ACT, capacity=64, device=CPU)
    shards[0].add(transitions(10, start=0))
    shards[1].add(transitions(20, start=100))  # wraps its ring: rows 104..119 remain
    before = state(learner.algorithm)

    version, metrics = learner.update_from_replay(3, 10_000, [10, 16])
    assert version == 3 and metrics == {} and "critic_loss" in learner.settle_updates()  # read back later
    assert not all(torch.equal(a, b) for a, b in zip(state(learner.algorithm), before))
    assert mirrored_ids(learner.graphed) == [*range(10), *range(104, 120)]

    shards[0].add(transitions(4, start=10))
    learner.update_from_replay(1, 10_000, [14, 16])
    assert mirrored_ids(learner.graphed) == [*range(14), *range(104, 120)]  # only the new rows came

    learner.load(learner.state())  # as on resume: the mirror is rebuilt from the shards' contents
    assert mirrored_ids(learner.graphed) == []
    learner.update_from_replay(1, 10_000, [14, 16])
    assert mirrored_ids(learner.graphed) == [*range(14), *range(104, 120)]


DEVICES = ["cpu", pytest.param("cuda", marks=cuda)]


def learner_on_rows(device: str) -> Learner:
    """A learner on the graphed path over one shard of 16 rows (on the CPU running its steps
    eagerly, as `GraphedUpdater` does there; on CUDA in graphs, uncompiled)."""
    runtime = {"device": device, "graph_compile": False}
    config = finetune_config("sac", None, {"env": "Pendulum-v1", "hidden": HIDDEN, "batch_size": B, "runtime": runtime})
    learner = Learner(config, OBS, ACT)
    shard = ReplayService(OBS, ACT, capacity=16, seed=0)
    learner.attach_replay([shard])
    if learner.graphed is None:  # on the CPU: what `graphed_updater` builds on CUDA
        learner.graphed = GraphedUpdater(learner.algorithm, OBS, ACT, capacity=64, device=CPU)
    shard.add(transitions(16, start=0))
    return learner


@pytest.mark.parametrize("device", DEVICES)
def test_a_graphed_update_call_returns_the_metrics_of_the_call_before_it_and_settle_updates_the_last(device):
    lagging, direct = learner_on_rows(device), learner_on_rows(device)
    assert all(torch.equal(a, b) for a, b in zip(state(lagging.algorithm), state(direct.algorithm)))
    torch.manual_seed(1)
    returned = [lagging.update_from_replay(n, 10_000, [16])[1] for n in (4, 20)] + [lagging.settle_updates()]
    torch.manual_seed(1)
    direct.pull_new_rows()
    expected = [direct.graphed.run(n, 10_000, 0.0) for n in (4, 20)]  # warm-up, then graphs on CUDA
    assert returned[0] == {} and "critic_loss" in expected[1]
    assert returned[1:] == [pytest.approx(metrics, rel=1e-6) for metrics in expected]
    assert lagging.settle_updates() == {}  # nothing left to read


@pytest.mark.parametrize("device", DEVICES)
def test_settle_updates_stops_the_run_when_the_last_update_call_diverged(device):
    learner = learner_on_rows(device)
    learner.update_from_replay(2, 10_000, [16])  # pulls the rows into the mirror
    learner.graphed.replay.storage[:, OBS + ACT] = float("nan")  # every reward
    _, metrics = learner.update_from_replay(2, 10_001, [16])
    assert math.isfinite(metrics["critic_loss"])  # the first call's
    with pytest.raises(LearnerDiverged, match="at env step 10001: .*critic_loss"):
        learner.settle_updates()


@pytest.mark.parametrize("device", DEVICES)
def test_while_updates_are_queued_the_learner_publishes_the_weights_from_before_them(device):
    learner = learner_on_rows(device)
    learner.update_from_replay(4, 10_000, [16])
    before = {name: value.cpu().clone() for name, value in learner.algorithm.policy.state_dict().items()}
    version_before = learner.version
    learner.update_from_replay(20, 10_000, [16])  # queued; the policy moves as they run

    version, published = learner.weights()
    assert version == version_before and version < learner.version
    assert published.keys() == before.keys()
    assert all(torch.equal(published[name], before[name]) for name in before)

    learner.settle_updates()
    version, published = learner.weights()
    after = learner.algorithm.policy.state_dict()
    assert version == learner.version
    assert not torch.equal(published["net.0.weight"], before["net.0.weight"])
    assert all(torch.equal(published[name], after[name].cpu()) for name in after)


# ---------------------------------------------------------------- CUDA graphs
def on_cuda(build, seed: int = 0, **overrides):
    algo = build(seed)
    device = torch.device("cuda")
    fresh = type(algo)(algo.config.model_copy(update=overrides), OBS, ACT, device, policy=algo.policy.to(device))
    if isinstance(fresh, O2SAC):
        fresh.handover(lambda policy: 1.0)
    return fresh


@cuda
@pytest.mark.parametrize("build", [build_sac, build_o2sac])
def test_graph_replays_compute_the_eager_updates(build):
    device = torch.device("cuda")
    graphed, eager = on_cuda(build), on_cuda(build)
    updater = GraphedUpdater(graphed, OBS, ACT, capacity=512, device=device, steps_per_graph=4, compile=False)
    updater.set_offline(normalised(200, seed=2))
    updater.add(normalised(300, seed=1))
    ratio = graphed.offline_ratio(0)
    torch.manual_seed(3)
    updater.run(3 + 4 * 3 + 2, 20_000, ratio)  # warm-up, 4-step graphs, 1-step graphs
    torch.manual_seed(3)
    for _ in range(3 + 4 * 3 + 2):
        eager.update_tensors(updater.replay.sample(B, int(B * ratio)), eager.prepare(20_000))
    for a, b in zip(state(graphed), state(eager), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@cuda
@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_compiling_updater_warms_the_compiler_on_a_side_thread_and_joins_it_before_its_first_compile():
    updater = GraphedUpdater(on_cuda(build_sac), OBS, ACT, capacity=512, device=torch.device("cuda"), steps_per_graph=2)
    assert updater.compiler_warming is not None  # started with the updater, on its own
    updater.add(normalised(300, seed=1))
    metrics = updater.run(5, 10_000, 0.0)  # warm-up (compiles), then a graph
    assert updater.compiler_warming is None and math.isfinite(metrics["critic_loss"])
    assert warm_compiler(torch.device("cuda")) is warm_compiler(torch.device("cuda"))  # once per process


@cuda
def test_every_replay_draws_fresh_batches_and_noise():
    # Learning rates 0: the networks stay put, so metrics differ only through the random draws.
    algo = on_cuda(build_sac, actor_lr=0.0, critic_lr=0.0, alpha_lr=0.0)
    updater = GraphedUpdater(algo, OBS, ACT, capacity=512, device=torch.device("cuda"), steps_per_graph=2, compile=False)
    updater.add(normalised(300, seed=1))
    updater.run(3, 10_000, 0.0)  # warm-up
    first, second = updater.run(2, 10_000, 0.0), updater.run(2, 10_000, 0.0)
    assert first["q_mean"] != second["q_mean"] and first["actor_loss"] != second["actor_loss"]


@cuda
def test_captured_updates_follow_the_actor_warmup_rate():
    algo = on_cuda(build_porl, actor_warmup_steps=1000)
    updater = GraphedUpdater(algo, OBS, ACT, capacity=512, device=torch.device("cuda"), steps_per_graph=2, compile=False)
    updater.add(normalised(300, seed=1))
    policy0 = [t.clone() for t in algo.policy.state_dict().values()]
    updater.run(3 + 2 * 2, 100, 0.0)  # the hand-over: warm-up and graphs at rate 0
    assert all(torch.equal(a, b) for a, b in zip(policy0, algo.policy.state_dict().values()))
    updater.run(2 * 2, 600, 0.0)  # the same graphs, now at half the rate
    assert not all(torch.equal(a, b) for a, b in zip(policy0, algo.policy.state_dict().values()))


def one_step_task(n: int, seed: int) -> dict[str, np.ndarray]:
    """Single-step episodes whose best action is tanh(obs[:, :ACT]): Q(s, a) is the reward."""
    arrays = transitions(n, seed=seed)
    arrays["observations"][:, 0] = 0.0
    arrays["rewards"] = -((arrays["actions"] - np.tanh(arrays["observations"][:, :ACT])) ** 2).sum(1)
    arrays["terminals"] = np.ones(n, np.float32)
    return arrays


def action_error(algo, seed: int = 5) -> float:
    obs = torch.as_tensor(one_step_task(1000, seed)["observations"], dtype=torch.float32, device=algo.device)
    with torch.no_grad():
        return float((algo.policy.mode(obs) - torch.tanh(obs[:, :ACT])).abs().mean())


@cuda
@pytest.mark.parametrize("autotune", [False, True])
def test_the_compiled_graphs_learn_what_eager_updates_learn(autotune):
    # The fast path as the runtime builds it (compiled losses, optimisers and batch draws, TF32,
    # 16 updates per graph; with autotuned matrix products or not) against plain eager updates: same
    # task and seed, same result within noise.
    torch._dynamo.reset()  # else the other case's compiled code is reused, whatever Inductor is asked for
    device, updates = torch.device("cuda"), 3000
    config = SACConfig(hidden=[64, 64], batch_size=256, num_critics=2)
    data = one_step_task(20_000, seed=1)
    errors = {}
    for backend in ("graph", "eager"):
        algo = SAC(config, OBS, ACT, device, policy=pretrained(0).to(device))
        start = action_error(algo)
        updater = GraphedUpdater(algo, OBS, ACT, capacity=len(data["rewards"]), device=device, compile=backend == "graph",
                                 tf32=backend == "graph", autotune=autotune and backend == "graph")
        updater.add(data)
        torch.manual_seed(3)
        if backend == "graph":
            updater.run(updates, 10_000, 0.0)
        else:
            for _ in range(updates):
                algo.update_tensors(updater.replay.sample(256, 0), algo.prepare(10_000))
        errors[backend] = action_error(algo)
    assert errors["eager"] < 0.3 * start  # the task is learned at all ...
    assert abs(errors["graph"] - errors["eager"]) < 0.1 * start  # ... and equally well by both paths


@pytest.mark.parametrize("phase", ["reevaluate", "align"])
def test_offline_stage_phases_run_as_their_eager_steps(phase):
    # O2SAC's stages A and B as `run_phase` on D_off alone (how a graphed learner runs them).
    offline = normalised(300, seed=2)
    graphed, eager = (O2SAC(O2SACConfig(hidden=HIDDEN, batch_size=B), OBS, ACT, CPU, policy=pretrained(0)) for _ in range(2))
    updater = GraphedUpdater(graphed, OBS, ACT, capacity=64, device=CPU)
    replay = DeviceReplay(OBS, ACT, capacity=64, device=CPU)
    updater.set_offline(offline)
    replay.set_offline(offline)
    before = state(graphed)

    torch.manual_seed(7)
    metrics = updater.run_phase(5, phase, offline_ratio=1.0)
    torch.manual_seed(7)
    history = [eager.update_tensors(replay.sample(B, B), phase) for _ in range(5)]

    after = state(graphed)
    assert all(torch.equal(a, b) for a, b in zip(after, state(eager), strict=True))
    assert metrics == pytest.approx({k: np.mean([float(m[k]) for m in history]) for k in metrics}, rel=1e-6)
    moved = [not torch.equal(a, b) for a, b in zip(after, before)]
    n_policy = len(graphed.policy.state_dict())
    assert any(moved[n_policy:]) and any(moved[:n_policy]) == (phase == "align")  # only B moves π_θ
