"""The graphed learner path for the TD3 family (TD3, O2TD3 stages A-C) and the offline pretrainers.

As for the SAC family (test_graphed.py): on CPU `GraphedUpdater` runs its steps eagerly, and
they must be exactly the algorithm's own eager step on the same batches. The TD3 family's
policy delay is a cycle of update phases (critic, critic+actor): the same steps must take the
actor step on both paths, and the graphs must follow the cycle. The CUDA tests (skipped without a GPU) check graph
replays against eager steps, the IQL schedule on the device and that `o2o pretrain`'s graphed
path learns what the eager one learns.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_graphed import ACT, B, CPU, HIDDEN, OBS, cuda, normalised
from test_pretrain import synthetic_dataset

from distributed_o2o.algorithms.capturable import Capturable
from distributed_o2o.algorithms.iql_online import IQLFinetune
from distributed_o2o.algorithms.o2ppo import O2PPO
from distributed_o2o.algorithms.o2td3 import O2TD3
from distributed_o2o.algorithms.offline import PRETRAINERS, run_pretraining
from distributed_o2o.algorithms.optim import to_floats
from distributed_o2o.algorithms.policies import DeterministicPolicy
from distributed_o2o.algorithms.td3 import TD3
from distributed_o2o.checkpoint import load_checkpoint, load_policy
from distributed_o2o.config import O2TD3Config, PretrainConfig
from distributed_o2o.errors import UserError
from distributed_o2o.runtime.graphed import DeviceReplay, GraphedUpdater, graph_supported


def pretrainer(algo: str, seed: int = 0, device: torch.device = CPU, **overrides):
    torch.manual_seed(seed)
    config = PretrainConfig(algo=algo, hidden=HIDDEN, cql_q_hidden=HIDDEN, batch_size=B, cql_num_actions=3, steps=50,
                            **overrides)
    return PRETRAINERS[algo](config, OBS, ACT, device)


def td3(cls: type[TD3], seed: int = 0, device: torch.device = CPU, **overrides) -> TD3:
    """TD3 core or O2TD3 (its stage C: π_ref attached at construction) from the same policy."""
    torch.manual_seed(seed)
    policy = DeterministicPolicy(OBS, ACT, HIDDEN)
    return cls(O2TD3Config(hidden=HIDDEN, batch_size=B, **overrides), OBS, ACT, device, policy=policy.to(device))


def state(algo: Capturable) -> list[torch.Tensor]:
    """Every parameter, target network and optimiser state tensor of `algo`."""
    modules = algo.networks() if hasattr(algo, "networks") else [algo.policy_target, algo.critic_target]
    tensors = [t for module in modules for t in module.state_dict().values()]
    for opt in algo.optimizers():
        tensors += [p for group in opt.param_groups for p in group["params"]]
        tensors += [v for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    return [t.detach().clone() for t in tensors]


def assert_same(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def assert_means(metrics: dict[str, float], history: list[dict[str, float]]) -> None:
    """`metrics` are the means of `history`'s, each over the steps that report it (a delayed
    update's actor metrics over the steps that took the actor step)."""
    assert metrics == pytest.approx({k: np.mean([m[k] for m in history if k in m]) for k in set().union(*history)},
                                    rel=1e-6)


def policy_params(algo) -> list[torch.Tensor]:
    policy = algo.modules()["policy"] if hasattr(algo, "networks") else algo.policy
    return [p.detach().clone() for p in policy.parameters()]


# ---------------------------------------------------------------- which algorithms
@pytest.mark.parametrize("cls, supported", [(O2TD3, True), (TD3, True), *((cls, True) for cls in PRETRAINERS.values()),
                                            (O2PPO, False), (IQLFinetune, False)])
def test_graph_supported_admits_the_capturable_updates(cls, supported):
    assert graph_supported(cls, on_gpu=True) == supported and not graph_supported(cls, on_gpu=False)


# ---------------------------------------------------------------- run == the eager step
def eager_step(algo, batch, when) -> dict[str, float]:
    """The eager path's step: a pretrainer's `step` (`when` None), an online `update` at env step
    `when`, or an offline stage's phase `when`."""
    if when is None:
        return algo.step(batch)
    if isinstance(when, int):
        return algo.update(batch, when)
    return to_floats(algo.update_tensors(batch, when))


OFFLINE_CASES = [*(pytest.param(algo, overrides, None, id=f"{algo}{overrides or ''}") for algo, overrides in (
                     ("bc", {}), ("bc-det", {}), ("td3bc", {}), ("td3bc", {"policy_delay": 3}), ("iql", {}), ("cql", {}),
                     ("cql", {"cql_importance_sampling": False}))),
                 pytest.param("o2td3", {}, "reevaluate", id="o2td3-A"), pytest.param("o2td3", {}, "align", id="o2td3-B")]


@pytest.mark.parametrize("algo, overrides, phase", OFFLINE_CASES)
def test_updates_on_d_off_alone_are_the_eager_steps_on_the_same_batches(algo, overrides, phase):
    # A pretrainer as `o2o pretrain` runs it on a GPU, and O2TD3's stages A and B as the learner does.
    data = normalised(200, seed=2)
    graphed, eager = ((td3(O2TD3) if algo == "o2td3" else pretrainer(algo, **overrides)) for _ in range(2))
    updater, replay = GraphedUpdater(graphed, OBS, ACT, capacity=0, device=CPU), DeviceReplay(OBS, ACT, 0, CPU)
    for mirror in (updater, replay):  # D_off alone
        mirror.set_offline(data)
    before = policy_params(graphed)

    torch.manual_seed(7)
    metrics = updater.run_phase(7, graphed.prepare(0) if phase is None else phase, offline_ratio=1.0)
    torch.manual_seed(7)
    history = [eager_step(eager, replay.sample(B, B), phase) for _ in range(7)]

    assert_same(state(graphed), state(eager))
    assert_means(metrics, history)
    moved = any(not torch.equal(a, b) for a, b in zip(policy_params(graphed), before))
    assert moved == (phase != "reevaluate")  # stage A moves the critic alone


@pytest.mark.parametrize("cls, delay", [(TD3, 2), (O2TD3, 2), (O2TD3, 3)])
def test_graphed_td3_is_its_update_on_the_same_batches(cls, delay):
    online, offline = normalised(300, seed=1), normalised(200, seed=2)
    graphed, eager = td3(cls, policy_delay=delay), td3(cls, policy_delay=delay)
    updater = GraphedUpdater(graphed, OBS, ACT, capacity=256, device=CPU)
    replay = DeviceReplay(OBS, ACT, capacity=256, device=CPU)
    for target in (updater, replay):
        target.set_offline(offline)
        target.add(online)

    torch.manual_seed(7)
    metrics = updater.run(7, 20_000, 0.5)
    torch.manual_seed(7)
    history = [eager.update(replay.sample(B, B // 2), 20_000) for _ in range(7)]

    assert_same(state(graphed), state(eager))
    assert_means(metrics, history)
    assert graphed.state_dict()["critic_updates"] == eager.state_dict()["critic_updates"] == 7


@pytest.mark.parametrize("delay", [1, 2, 3])
@pytest.mark.parametrize("path", ["graphed", "eager"])
def test_td3_takes_its_actor_and_target_steps_every_delay_th_update(path, delay):
    algo = td3(O2TD3, policy_delay=delay)
    updater = GraphedUpdater(algo, OBS, ACT, capacity=256, device=CPU)
    updater.add(normalised(300, seed=1))
    moved = []
    for _ in range(7):
        policy, targets = policy_params(algo), [p.clone() for p in algo.critic_target.parameters()]
        if path == "graphed":
            updater.run(1, 20_000, 0.0)
        else:
            algo.update(updater.replay.sample(B, 0), 20_000)
        moved_policy = not all(torch.equal(a, b) for a, b in zip(policy_params(algo), policy))
        assert moved_policy == (not all(torch.equal(a, b) for a, b in zip(algo.critic_target.parameters(), targets)))
        moved.append(moved_policy)
    assert moved == [(k + 1) % delay == 0 for k in range(7)]  # after the k+1-th critic step, as ever


@pytest.mark.parametrize("delay, steps_per_graph", [(2, 4), (3, 4), (3, 2)])
def test_graphs_follow_the_policy_delay_cycle(monkeypatch, delay, steps_per_graph):
    # The graph schedule on CPU: a stand-in `_graph` runs its updates eagerly and records their
    # phases. After the warm-up, graphs of whole cycles start at the cycle's first position and
    # single updates fill the rest; the steps are the eager path's on the same batches.
    graphed, eager = td3(O2TD3, policy_delay=delay), td3(O2TD3, policy_delay=delay)
    updater = GraphedUpdater(graphed, OBS, ACT, capacity=256, device=CPU, steps_per_graph=steps_per_graph)
    updater.add(normalised(300, seed=1))
    replayed = []

    class Recorded:
        def __init__(self, phases, rows):
            self.phases, self.rows = phases, rows

        def replay(self):
            replayed.append(self.phases)
            for phase in self.phases:
                updater._step((phase, self.rows))

    monkeypatch.setattr(updater, "use_graphs", True)
    monkeypatch.setattr(updater, "_check_signature", lambda: None)
    monkeypatch.setattr(updater, "_eager_step", lambda key: (replayed.append("eager"), updater._step(key)))
    monkeypatch.setattr(updater, "_graph", Recorded)
    torch.manual_seed(7)
    updater.run(3 * delay + 1, 20_000, 0.0)  # warm-up, then one more: the cycle resumes at position 1
    updater.run(20, 20_000, 0.0)
    torch.manual_seed(7)
    for _ in range(3 * delay + 1 + 20):
        eager.update(updater.replay.sample(B, 0), 20_000)

    assert_same(state(graphed), state(eager))
    cycle = ("critic",) * (delay - 1) + ("critic+actor",)
    whole = cycle * (steps_per_graph // delay)
    expected, position = ["eager"] * 3 * delay, 0
    for left in (1, 20):  # the updates of each run after the warm-up
        while left:
            if position == 0 and whole and left >= len(whole):
                expected.append(whole)
                left -= len(whole)
            else:
                expected.append((cycle[position],))
                position, left = (position + 1) % delay, left - 1
    assert replayed == expected


def test_o2td3_offline_stages_are_update_phases():
    assert {stage.name: stage.phase for stage in td3(O2TD3).offline_stages()} == {"reevaluate": "reevaluate", "align": "align"}


# ---------------------------------------------------------------- o2o pretrain's choice
def test_pretraining_on_a_cpu_stays_eager_and_refuses_the_graph_backend(tmp_path):
    dataset = synthetic_dataset(200)
    dataset.env_id = "Synthetic-v0"
    config = PretrainConfig(algo="bc", hidden=HIDDEN, batch_size=B, steps=5, device="cpu", dataset="synthetic.hdf5")
    assert load_checkpoint(run_pretraining(config, dataset, tmp_path / "a", progress=False)).metadata["extra"]["graphed"] is False
    with pytest.raises(UserError, match="learner_backend 'graph' needs a CUDA device"):
        run_pretraining(config.model_copy(update={"learner_backend": "graph"}), dataset, tmp_path / "b", progress=False)


# ---------------------------------------------------------------- CUDA graphs
def on_cuda_cases() -> list:
    gpu = torch.device("cuda")
    cases = [pytest.param(lambda name=name: pretrainer(name, device=gpu), None, id=name) for name in sorted(PRETRAINERS)]
    cases += [pytest.param(lambda: td3(O2TD3, device=gpu), 20_000, id="o2td3-C"),
              pytest.param(lambda: td3(TD3, device=gpu, policy_delay=3), 20_000, id="td3-delay3"),
              pytest.param(lambda: td3(O2TD3, device=gpu), "reevaluate", id="o2td3-A"),
              pytest.param(lambda: td3(O2TD3, device=gpu), "align", id="o2td3-B")]
    return cases


@cuda
@pytest.mark.parametrize("build, when", on_cuda_cases())
def test_graph_replays_compute_the_eager_steps(build, when):
    graphed, eager = build(), build()
    updater = GraphedUpdater(graphed, OBS, ACT, capacity=512, device=torch.device("cuda"), steps_per_graph=4, compile=False)
    updater.set_offline(normalised(200, seed=2))
    updater.add(normalised(300, seed=1))
    ratio = 0.5 if isinstance(when, int) else 1.0
    count = 3 + 4 * 3 + 2  # warm-up, 4-step graphs, 1-step graphs
    torch.manual_seed(3)
    if isinstance(when, int):
        updater.run(count, when, ratio)
    else:
        updater.run_phase(count, graphed.prepare(0) if when is None else when, ratio)
    torch.manual_seed(3)
    for _ in range(count):
        eager_step(eager, updater.replay.sample(B, int(B * ratio)), when)
    for a, b in zip(state(graphed), state(eager), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@cuda
@pytest.mark.parametrize("build, phase", [(lambda: td3(O2TD3, device=torch.device("cuda")), "reevaluate"),
                                          (lambda: pretrainer("cql", device=torch.device("cuda")), None)],
                         ids=["o2td3", "cql"])
def test_every_replay_draws_fresh_batches_and_noise(build, phase):
    # Learning rates 0: the networks stay put, so metrics differ only through the random draws.
    algo = build()
    for opt in algo.optimizers():
        for group in opt.param_groups:
            group["lr"] = 0.0
    updater = GraphedUpdater(algo, OBS, ACT, capacity=512, device=torch.device("cuda"), steps_per_graph=2, compile=False)
    updater.set_offline(normalised(300, seed=1))
    phase = algo.prepare(0) if phase is None else phase
    updater.run_phase(3, phase, 1.0)  # warm-up
    first, second = updater.run_phase(2, phase, 1.0), updater.run_phase(2, phase, 1.0)
    assert first["q_mean"] != second["q_mean"] and first["critic_loss"] != second["critic_loss"]


@cuda
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")  # the reference steps no optimiser
def test_iql_actor_lr_follows_the_cosine_schedule_inside_the_graphs():
    algo = pretrainer("iql", device=torch.device("cuda"))
    updater = GraphedUpdater(algo, OBS, ACT, capacity=0, device=torch.device("cuda"), steps_per_graph=4, compile=False)
    updater.set_offline(normalised(200, seed=2))
    reference = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=algo.config.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(reference, algo.config.steps)
    for done in (3, 8, 13, 30):  # eager warm-up, then graph replays of 4 and of 1 update
        updater.run_phase(done - int(algo.update.policy_schedule.count), algo.prepare(0), 1.0)
        while schedule.last_epoch < done:
            schedule.step()
        lr = float(algo.update.policy_optimizer.param_groups[0]["lr"])
        assert lr == pytest.approx(schedule.get_last_lr()[0], rel=1e-5)


@cuda
@pytest.mark.parametrize("algo", ["bc", "td3bc", "iql", "cql"])
def test_graphed_pretraining_learns_what_eager_pretraining_learns(algo, tmp_path):
    # `o2o pretrain`'s two paths on a GPU, same data and seed: the policies' actions end as close
    # to the behaviour's mean action (the task's best) as each other, within noise.
    dataset = synthetic_dataset(5000)
    dataset.env_id = "Synthetic-v0"
    obs = torch.as_tensor(dataset.observations)
    unit = (dataset.observations - dataset.observations.mean(0)) / dataset.observations.std(0)
    best = torch.as_tensor(np.tanh(unit @ np.array([[0.8, -0.5], [0.1, 0.3], [-0.6, 0.9]])), dtype=torch.float32)
    config = PretrainConfig(algo=algo, hidden=[64, 64], cql_q_hidden=[64, 64], batch_size=256, steps=3000, device="cuda",
                            dataset="synthetic.hdf5", cql_policy_lr=3e-4)
    errors = {}
    for backend in ("auto", "eager"):
        out = run_pretraining(config.model_copy(update={"learner_backend": backend}), dataset, tmp_path / backend,
                              progress=False)
        assert load_checkpoint(out).metadata["extra"]["graphed"] == (backend == "auto")
        with torch.no_grad():
            errors[backend] = float((load_policy(out).mode(obs) - best).abs().mean())
    start = float(best.abs().mean())  # an untrained policy's actions are near 0
    assert errors["eager"] < 0.5 * start  # the task is learned at all ...
    assert abs(errors["auto"] - errors["eager"]) < 0.1 * start  # ... and equally well by both paths


def test_device_learning_rates_take_an_optimizer_back_after_a_restore():
    """A restored optimiser has the saved param groups, rates included: `install` puts the
    schedule's tensors back, so the schedule steers the rate again."""
    import copy

    from distributed_o2o.algorithms.optim import DeviceLearningRates

    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.Adam([param], lr=0.1)
    rates = DeviceLearningRates(optimizer, CPU)
    saved = copy.deepcopy(optimizer.state_dict())  # as a checkpoint round trip
    rates.scale(0.5)
    assert optimizer.param_groups[0]["lr"] is rates.rates[0] and float(optimizer.param_groups[0]["lr"]) == pytest.approx(0.05)
    optimizer.load_state_dict(saved)
    assert optimizer.param_groups[0]["lr"] is not rates.rates[0]  # the schedule no longer reaches it
    rates.install()
    rates.scale(torch.tensor(0.25))
    assert float(optimizer.param_groups[0]["lr"]) == pytest.approx(0.025)


@cuda
def test_a_restored_cosine_schedule_on_cuda_steers_the_restored_optimizer():
    from distributed_o2o.algorithms.optim import CosineLR, adam

    def build():
        param = torch.nn.Parameter(torch.zeros(3, device="cuda"))
        optimizer = adam([param], 1.0, torch.device("cuda"))
        return optimizer, CosineLR(optimizer, 10, torch.device("cuda"))

    optimizer, schedule = build()
    for _ in range(3):
        schedule.step()
    restored_optimizer, restored = build()
    restored_optimizer.load_state_dict(optimizer.state_dict())
    restored.load_state_dict(schedule.state_dict())
    restored.step()
    assert float(restored_optimizer.param_groups[0]["lr"]) == pytest.approx((1 + math.cos(4 * math.pi / 10)) / 2, rel=1e-5)
