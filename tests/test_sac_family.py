"""Loss-level tests of the SAC family: SAC, naive, RLPD, WSRL, PORL and O2SAC's three stages."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distributed_o2o.algorithms.base import Batch, OfflineData
from distributed_o2o.algorithms.baselines import RLPD, SAC, WSRL, NaiveFinetune
from distributed_o2o.algorithms.networks import CriticEnsemble
from distributed_o2o.algorithms.o2sac import O2SAC, alignment_target
from distributed_o2o.algorithms.policies import TanhGaussianPolicy
from distributed_o2o.algorithms.porl import PORL
from distributed_o2o.config import NaiveConfig, O2SACConfig, PORLConfig, RLPDConfig, SACConfig, WSRLConfig
from distributed_o2o.errors import UserError
from distributed_o2o.runtime.broadcast import policy_weights

OBS, ACT, HIDDEN, B = 3, 2, [32, 32], 32
CPU = torch.device("cpu")



def small(config_cls, **overrides):
    return config_cls(**{"hidden": HIDDEN, "batch_size": B, **overrides})


def pretrained(seed: int = 0, **kwargs) -> TanhGaussianPolicy:
    torch.manual_seed(seed)
    return TanhGaussianPolicy(OBS, ACT, HIDDEN, **kwargs)


def random_batch(seed: int = 0, size: int = B) -> Batch:
    g = torch.Generator().manual_seed(seed)
    terminals = torch.arange(size) % 2  # alternate true terminations with (truncated) non-terminal ones
    return Batch(torch.randn(size, OBS, generator=g), torch.rand(size, ACT, generator=g) * 2 - 1,
                 torch.randn(size, generator=g), torch.randn(size, OBS, generator=g), terminals.float())


def offline_data(size: int = 512, seed: int = 0) -> OfflineData:
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(size, OBS))
    actions = rng.uniform(-1, 1, size=(size, ACT))
    arrays = {"observations": obs, "actions": actions, "rewards": obs[:, 0] - (actions ** 2).sum(1),
              "next_observations": obs + 0.1 * rng.normal(size=obs.shape), "terminals": (rng.random(size) < 0.1) * 1.0,
              "timeouts": np.zeros(size)}
    return OfflineData(arrays, CPU, torch.Generator().manual_seed(seed))


def params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.state_dict().values()]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def o2sac(seed: int = 0, reevaluate: int = 0, align: int = 0, prefer_aligned: bool = True, **overrides) -> O2SAC:
    """An O2SAC after `reevaluate` stage-A and `align` stage-B steps and the hand-over."""
    algo = O2SAC(small(O2SACConfig, **overrides), OBS, ACT, CPU, policy=pretrained(seed))
    algo.set_offline_data(offline_data(seed=seed))
    stage_a, stage_b = algo.offline_stages()
    for _ in range(reevaluate):
        stage_a.step()
    for _ in range(align):
        stage_b.step()
    algo.handover(lambda policy: 2.0 if (policy is algo.policy) == prefer_aligned else 1.0)
    return algo


def shift_mean(policy: TanhGaussianPolicy, delta: float) -> None:
    """Move the pre-tanh mean of every state by `delta`: a policy far from its old self."""
    with torch.no_grad():
        policy.net[-1].bias[:ACT] += delta


# ---------------------------------------------------------------- targets and truncation
def _sac():
    return SAC(small(SACConfig), OBS, ACT, CPU), SAC.td_target


def _porl_presample():
    return PORL(small(PORLConfig), OBS, ACT, CPU, policy=pretrained()), PORL.evaluation_target


def _o2sac_reevaluation():
    return O2SAC(small(O2SACConfig), OBS, ACT, CPU, policy=pretrained()), O2SAC.reevaluation_target


def _o2sac_online():
    algo = o2sac(prefer_aligned=False)
    shift_mean(algo.policy, 0.5)  # a non-zero λ·divergence term in the target
    return algo, O2SAC.td_target


@pytest.mark.parametrize("build", [_sac, _porl_presample, _o2sac_reevaluation, _o2sac_online])
def test_target_bootstraps_through_truncation_but_not_termination(build):
    algo, target_fn = build()
    batch, shift = random_batch(), 3.0

    torch.manual_seed(1)
    target = target_fn(algo, batch)
    with torch.no_grad():
        algo.target_critic.q.net[-1].bias += shift  # every Q̄_j(s', a') rises by `shift`
    torch.manual_seed(1)
    shifted = target_fn(algo, batch)

    done = batch.terminals.bool()
    assert torch.equal(target[done], batch.rewards[done])
    assert torch.allclose(shifted - target, algo.config.gamma * shift * (1 - batch.terminals), atol=1e-4)


def test_alignment_target_never_exceeds_the_anchored_value():
    alpha0 = 0.5
    for seed in range(5):
        torch.manual_seed(seed)
        critic, policy_off = CriticEnsemble(OBS, ACT, 4, HIDDEN), TanhGaussianPolicy(OBS, ACT, HIDDEN)
        obs = 2 * torch.randn(256, OBS)
        anchor = policy_off.mode(obs).clamp(-0.9999, 0.9999).detach()
        actions = torch.rand(256, ACT) * 2 - 1
        target, q_anchor = alignment_target(critic, policy_off, obs, anchor, actions, alpha0)
        with torch.no_grad():
            q_actions = critic(obs, actions).min(0).values
            anchored = critic(obs, anchor).min(0).values - alpha0 * (policy_off.log_prob(obs, anchor) - policy_off.log_prob(obs, actions))
        assert torch.allclose(q_anchor, critic(obs, anchor).min(0).values.detach())
        assert (target <= q_actions + 1e-5).all() and (target <= anchored + 1e-5).all()
        assert (torch.isclose(target, q_actions) | torch.isclose(target, anchored)).all()


@pytest.mark.parametrize("build", [lambda: SAC(small(SACConfig), OBS, ACT, CPU, policy=pretrained()),
                                   lambda: o2sac(prefer_aligned=False)])
def test_one_policy_forward_for_s_and_next_s_is_the_same_update(build, monkeypatch):
    # The GPU path samples π at [s; s′] in one forward; without noise it must be the two-forward update.
    monkeypatch.setattr(torch, "randn_like", torch.zeros_like)
    shared, separate = build(), build()
    shared.shared_policy_forward, separate.shared_policy_forward = True, False
    for algo in (shared, separate):
        torch.manual_seed(0)  # the same critic subsets and batches
        for seed in range(3):
            algo.update(random_batch(seed), 10_000)
    for a, b in zip([*params(shared.policy), *params(shared.critic), shared.log_alpha],
                    [*params(separate.policy), *params(separate.critic), separate.log_alpha], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- PORL
def test_porl_presample_trains_only_the_critic_then_switches_to_sac():
    config = small(PORLConfig, presample_steps=100, presample_utd=10, utd=4, presample_epsilon=0.1)
    algo = PORL(config, OBS, ACT, CPU, policy=pretrained())
    policy0, critic0 = params(algo.policy), params(algo.critic)

    spec = algo.acting(0)
    assert spec.epsilon == 0.1 and not spec.uniform and not spec.deterministic
    assert algo.updates_due(0) == 10 and algo.updates_due(99) == 10 and algo.updates_due(100) == 4
    assert algo.acting(100).epsilon == 0.0

    for step in range(5):
        algo.update(random_batch(step), env_step=step * 20)
    assert same(params(algo.policy), policy0)
    assert not same(params(algo.critic), critic0)
    assert algo.alpha.item() == pytest.approx(config.alpha_init)

    algo.update(random_batch(9), env_step=100)
    assert not same(params(algo.policy), policy0)
    assert algo.alpha.item() != pytest.approx(config.alpha_init, rel=1e-6)


def test_porl_actor_warmup_holds_the_policy_at_hand_over_and_reaches_the_full_rate():
    config = small(PORLConfig, presample_steps=100, actor_warmup_steps=40)
    algo = PORL(config, OBS, ACT, CPU, policy=pretrained())
    policy0 = params(algo.policy)
    algo.update(random_batch(0), env_step=100)  # the hand-over: rate 0, the policy stays put
    assert same(params(algo.policy), policy0)
    assert algo.actor_optimizer.param_groups[0]["lr"] == 0.0
    algo.update(random_batch(1), env_step=120)
    assert not same(params(algo.policy), policy0)
    assert algo.actor_optimizer.param_groups[0]["lr"] == pytest.approx(config.actor_lr / 2)
    restored = PORL(config, OBS, ACT, CPU, policy=pretrained())
    restored.load_state_dict(algo.state_dict())
    restored.update(random_batch(2), env_step=500)
    assert restored.actor_optimizer.param_groups[0]["lr"] == config.actor_lr
    assert restored.critic_optimizer.param_groups[0]["lr"] == config.critic_lr


def _actor_loss_beside_its_members(**overrides):
    """PORL with 4 critics (the target's min over 2): its actor loss on a batch, and the same
    sample's α log π and every member's Q, to rebuild that loss from."""
    algo = PORL(small(PORLConfig, num_critics=4, num_min_critics=2, **overrides), OBS, ACT, CPU, policy=pretrained())
    obs = random_batch(0).obs
    torch.manual_seed(1)
    loss = algo.actor_loss(obs)[0]
    torch.manual_seed(1)
    actions, log_prob = algo.policy.sample(obs)
    return algo, loss, algo.alpha * log_prob, algo.critic(obs, actions)


def test_actor_num_min_critics_makes_the_actor_maximise_the_min_over_that_many_members():
    _, loss, entropy_term, q = _actor_loss_beside_its_members(actor_num_min_critics=4)
    torch.testing.assert_close(loss, (entropy_term - q.min(dim=0).values).mean())
    with pytest.raises(ValueError, match="actor_num_min_critics"):
        small(PORLConfig, num_critics=4, actor_num_min_critics=5)


def test_actor_q_mean_makes_the_actor_maximise_the_mean_of_all_members_while_the_target_keeps_its_minimum():
    algo, loss, entropy_term, q = _actor_loss_beside_its_members(actor_q_mean=True)
    torch.testing.assert_close(loss, (entropy_term - q.mean(dim=0)).mean())
    assert not torch.allclose(q.mean(dim=0), q.min(dim=0).values)  # the members differ: mean and min are told apart
    assert algo.num_min_critics == 2  # the target's subset is untouched
    with pytest.raises(ValueError, match="actor_q_mean and actor_num_min_critics"):
        small(PORLConfig, num_critics=4, actor_q_mean=True, actor_num_min_critics=2)


def test_actor_every_steps_the_actor_and_alpha_with_every_nth_critic_step_only():
    """RLPD's published schedule: several critic steps, then one actor and α step."""
    from distributed_o2o.runtime.learner import mean_metrics

    algo = RLPD(small(RLPDConfig, actor_every=3), OBS, ACT, CPU)
    actor, critic = (lambda: algo.policy.state_dict()["net.0.weight"].clone()), (lambda: algo.critic.q.net[0].weight.clone())
    moved, history = [], []
    for i in range(6):
        before_actor, before_critic, before_alpha = actor(), critic(), algo.log_alpha.item()
        history.append(algo.update(random_batch(i), env_step=10_000))
        assert not torch.equal(before_critic, critic())  # the critic steps every time
        moved.append((not torch.equal(before_actor, actor()), before_alpha != algo.log_alpha.item()))
    assert moved == [(False, False), (False, False), (True, True)] * 2
    assert ["actor_loss" in m for m in history] == [False, False, True] * 2
    # The learner's mean of an actor metric is over the updates that logged it.
    assert mean_metrics(history)["actor_loss"] == pytest.approx((history[2]["actor_loss"] + history[5]["actor_loss"]) / 2)
    assert mean_metrics(history)["critic_loss"] == pytest.approx(sum(m["critic_loss"] for m in history) / 6)


def test_porl_constraint_anchors_pi_ref_to_pi_pre_at_hand_over():
    """Optional (not in the PORL spec): from the first update after the pre-sample, the actor
    loss and the critic target carry λ·(log π_θ − log π_ref) with π_ref = π_pre."""
    plain = PORL(small(PORLConfig, presample_steps=100), OBS, ACT, CPU, policy=pretrained())
    assert plain.lagrange is None and "lagrange" not in plain.snapshot()
    config = small(PORLConfig, presample_steps=100, constraint={"lambda_init": 2.0})
    algo = PORL(config, OBS, ACT, CPU, policy=pretrained())
    pi_pre = params(algo.policy)
    algo.on_evaluation(-5.0, 0, algo.deployed_policy().state_dict())  # π_pre's score, before there is a π_ref
    algo.update(random_batch(0), env_step=50)
    assert algo.reference.policy is None and algo.penalty(*_sample(algo)) is None
    metrics = algo.update(random_batch(1), env_step=100)
    assert same(params(algo.reference.policy), pi_pre)
    assert metrics["lambda"] == pytest.approx(2.0, rel=1e-3) and "divergence" in metrics
    assert algo.lagrange.threshold.item() == pytest.approx(config.constraint.eps_start + (2.0 - 0.125) * 100 / 100_000)
    algo.on_evaluation(-10.0, 100, algo.deployed_policy().state_dict())  # worse than π_pre's: π_ref stays π_pre
    assert same(params(algo.reference.policy), pi_pre)
    algo.on_evaluation(0.0, 200, algo.deployed_policy().state_dict())  # better: π_ref follows the policy
    assert same(params(algo.reference.policy), params(algo.policy))

    restored = PORL(config, OBS, ACT, CPU, policy=pretrained(seed=1))
    restored.load_state_dict(algo.state_dict())
    assert same(params(restored.reference.policy), params(algo.reference.policy)) and restored.reference.best_score == 0.0


def test_policy_average_is_the_deployed_policy_and_follows_the_policy_by_polyak_steps():
    """π̄ ← (1−τ)π̄ + τπ after each update; π̄ is what is evaluated and checkpointed as "policy",
    π keeps acting; the average survives a save and restore."""
    tau = 0.25
    algo = SAC(small(SACConfig, policy_average_tau=tau), OBS, ACT, CPU)
    assert SAC(small(SACConfig), OBS, ACT, CPU).deployed_policy() is not None  # plain SAC: the policy itself
    before = params(algo.policy_average)
    algo.update(random_batch(0), env_step=0)
    expected = [(1 - tau) * b + tau * p for b, p in zip(before, params(algo.policy))]
    assert all(torch.allclose(a, e, atol=1e-6) for a, e in zip(params(algo.policy_average), expected))
    assert not same(params(algo.policy_average), params(algo.policy))
    assert algo.deployed_policy() is algo.policy_average and algo.acting_policy() is algo.policy
    modules = algo.modules()
    assert modules["policy"] is algo.policy_average and modules["online_policy"] is algo.policy
    restored = SAC(small(SACConfig, policy_average_tau=tau), OBS, ACT, CPU)
    restored.load_state_dict(algo.state_dict())
    assert same(params(restored.policy_average), params(algo.policy_average))


def test_validated_deployment_deploys_a_candidate_only_when_it_matches_the_best_candidate_score():
    """The deployed policy starts as π_pre; a candidate (π̄) is copied in when its score is at
    least the best so far, and a worse one leaves the deployed policy as it was; both survive a
    save and restore. Without π̄ the candidate is π, scored by the "online_" evaluation."""
    config = small(PORLConfig, presample_steps=0, policy_average_tau=0.5, validated_deployment=True)
    algo = PORL(config, OBS, ACT, CPU, policy=pretrained())
    pi_pre = params(algo.policy)
    runs, candidate = algo.evaluation_policies()
    assert candidate == "candidate_" and runs["candidate_"][0] is algo.policy_average
    assert runs[""][0] is algo.deployed_policy() is algo.validated and same(params(algo.validated), pi_pre)
    assert algo.offer_candidate(10.0, policy_weights(algo.candidate_policy()))
    algo.update(random_batch(0), env_step=0)
    moved, scored = params(algo.policy_average), policy_weights(algo.candidate_policy())
    assert not same(moved, pi_pre) and same(params(algo.validated), pi_pre)  # learning does not touch it
    assert not algo.offer_candidate(9.0, scored) and same(params(algo.validated), pi_pre)
    algo.update(random_batch(1), env_step=1)  # training goes on while the evaluation plays
    assert algo.offer_candidate(10.0, scored) and same(params(algo.validated), moved)  # deployed: what was scored
    assert not same(params(algo.policy_average), moved)
    restored = PORL(config, OBS, ACT, CPU, policy=pretrained(seed=1))
    restored.load_state_dict(algo.state_dict())
    assert same(params(restored.validated), moved) and not restored.offer_candidate(9.5, scored)
    assert algo.modules()["policy"] is algo.validated and algo.modules()["policy_average"] is algo.policy_average

    plain = PORL(small(PORLConfig, presample_steps=0, validated_deployment=True), OBS, ACT, CPU, policy=pretrained())
    runs, candidate = plain.evaluation_policies()
    assert candidate == "online_" and runs["online_"][0] is plain.policy and "candidate_" not in runs
    assert PORL(small(PORLConfig), OBS, ACT, CPU, policy=pretrained()).evaluation_policies()[1] is None


def test_porl_average_reference_is_the_policy_average_started_at_pi_pre():
    """constraint.reference average: at hand-over π_ref is π̄ (= π_pre then); it moves with π̄,
    and evaluations do not replace it."""
    config = small(PORLConfig, presample_steps=100, policy_average_tau=0.5, constraint={"reference": "average"})
    algo = PORL(config, OBS, ACT, CPU, policy=pretrained())
    pi_pre = params(algo.policy)
    algo.update(random_batch(0), env_step=50)  # pre-sample: π and π̄ stay π_pre
    assert same(params(algo.policy_average), pi_pre) and algo.reference.policy is None
    algo.update(random_batch(1), env_step=100)
    assert algo.reference.policy is algo.policy_average and not same(params(algo.policy_average), pi_pre)
    algo.on_evaluation(1e9, 100, algo.deployed_policy().state_dict())
    assert algo.reference.policy is algo.policy_average
    restored = PORL(config, OBS, ACT, CPU, policy=pretrained(seed=1))
    restored.load_state_dict(algo.state_dict())
    assert restored.reference.policy is restored.policy_average
    assert same(params(restored.policy_average), params(algo.policy_average))


def _sample(algo):
    obs = random_batch(0).obs
    actions, log_prob = algo.policy.sample(obs)
    return obs, actions, log_prob


# ---------------------------------------------------------------- O2SAC
def test_o2sac_stage_b_freezes_the_target_and_pi_off_while_training_critic_and_pi_theta():
    algo = O2SAC(small(O2SACConfig), OBS, ACT, CPU, policy=pretrained())
    algo.set_offline_data(offline_data())
    stage_a, stage_b = algo.offline_stages()
    assert [stage_a.name, stage_b.name] == ["reevaluate", "align"]
    target0, policy0 = params(algo.target_critic), params(algo.policy)
    for _ in range(10):
        stage_a.step()
    assert not same(params(algo.target_critic), target0)  # Polyak during A
    assert same(params(algo.policy), policy0)  # π_off (and π_θ) frozen during A

    target_a, critic_a = params(algo.target_critic), params(algo.critic)
    for _ in range(10):
        metrics = stage_b.step()
    assert same(params(algo.target_critic), target_a)
    assert not same(params(algo.critic), critic_a)
    assert not same(params(algo.policy), policy0)
    assert same(params(algo.policy_off), policy0)
    assert {"critic_loss", "actor_loss"} <= metrics.keys()


@pytest.mark.parametrize("prefer_aligned", [True, False])
def test_o2sac_handover_picks_the_better_policy_and_syncs_the_target(prefer_aligned):
    algo = o2sac(reevaluate=10, align=10, prefer_aligned=prefer_aligned)
    aligned, offline = params(algo.policy), params(algo.policy_off)
    assert not same(aligned, offline)
    assert same(params(algo.reference.policy), aligned if prefer_aligned else offline)
    assert algo.reference.policy is not algo.policy and algo.reference.policy is not algo.policy_off
    assert same(params(algo.target_critic), params(algo.critic))
    assert algo.acting_policy() is algo.policy  # online starts from the aligned π_θ

    scores = {"handover_score_offline": 3.0, "handover_score_aligned": 4.0}
    metrics = algo.handover(lambda policy: scores["handover_score_aligned" if policy is algo.policy else "handover_score_offline"])
    assert metrics == scores


def test_o2sac_pi_ref_is_replaced_only_on_a_better_evaluation():
    algo = o2sac(prefer_aligned=True)  # hand-over scores 1 and 2: best so far 2
    ref0 = params(algo.reference.policy)
    shift_mean(algo.policy, 0.3)
    algo.on_evaluation(1.5, 1000, algo.deployed_policy().state_dict())
    assert same(params(algo.reference.policy), ref0)

    algo.on_evaluation(2.5, 2000, algo.deployed_policy().state_dict())
    assert same(params(algo.reference.policy), params(algo.policy))
    shift_mean(algo.policy, 0.3)  # π_ref is a copy, not π_θ itself
    assert not same(params(algo.reference.policy), params(algo.policy))
    algo.on_evaluation(2.4, 3000, algo.deployed_policy().state_dict())
    assert not same(params(algo.reference.policy), params(algo.policy))


@pytest.mark.parametrize("far", [True, False])
def test_o2sac_lambda_rises_above_the_threshold_and_falls_below(far):
    algo = o2sac(prefer_aligned=True, constraint={"lambda_lr": 0.05})
    if far:
        shift_mean(algo.policy, 2.0)
    lambda0 = algo.lagrange.value.item()
    history = [algo.update(random_batch(i), env_step=2000) for i in range(10)]
    assert {"lambda", "divergence", "threshold", "alpha"} <= history[0].keys()
    for metrics in history:
        assert (metrics["divergence"] > metrics["threshold"]) == far
    lambdas = [lambda0] + [m["lambda"] for m in history]
    steps = np.diff(lambdas)
    assert (steps > 0).all() if far else (steps < 0).all()


def test_o2sac_schedule_and_update_before_handover():
    config = small(O2SACConfig)
    algo = O2SAC(config, OBS, ACT, CPU, policy=pretrained())
    assert algo.alpha.item() == pytest.approx(config.alpha0)
    assert algo.updates_due(999) == 0 and algo.updates_due(1000) == 10
    assert algo.offline_ratio(0) == 0.5
    assert not algo.acting(0).uniform and not algo.acting(0).deterministic
    with pytest.raises(RuntimeError, match="handover"):
        algo.update(random_batch(), env_step=1000)


# ---------------------------------------------------------------- α
# log_std −2.15: an entropy between −|A| and −|A|/2, so α falls toward SAC's target and rises
# toward half of it (`target_entropy_scale`) for the same policy.
@pytest.mark.parametrize("log_std, scale, rises", [(-4.0, 1.0, True), (0.5, 1.0, False), (-2.15, 1.0, False),
                                                   (-2.15, 0.5, True)])
def test_alpha_moves_toward_the_target_entropy(log_std, scale, rises):
    policy = pretrained(state_dependent_std=False, init_log_std=log_std)
    algo = SAC(small(SACConfig, alpha_lr=1e-2, actor_lr=1e-6, target_entropy_scale=scale), OBS, ACT, CPU, policy=policy)
    assert algo.target_entropy == -scale * ACT
    history = [algo.update(random_batch(i), env_step=10_000) for i in range(10)]
    assert all((m["entropy"] < algo.target_entropy) == rises for m in history)
    alphas = np.array([1.0] + [m["alpha"] for m in history])
    assert (np.diff(alphas) > 0).all() if rises else (np.diff(alphas) < 0).all()


def test_target_entropy_and_its_scale_are_not_both_set():
    with pytest.raises(ValueError, match="target_entropy and target_entropy_scale"):
        small(PORLConfig, target_entropy=-2.0, target_entropy_scale=0.5)


# ---------------------------------------------------------------- state round trip
def _round_trip_sac(seed):
    return SAC(small(SACConfig), OBS, ACT, CPU, policy=pretrained(seed)), 10_000


def _round_trip_porl(seed):
    return PORL(small(PORLConfig, presample_steps=3), OBS, ACT, CPU, policy=pretrained(seed)), 10_000


def _round_trip_o2sac(seed):
    algo = o2sac(seed, reevaluate=3, align=3)
    algo.on_evaluation(5.0, 0, algo.deployed_policy().state_dict())
    return algo, 10_000


@pytest.mark.parametrize("build", [_round_trip_sac, _round_trip_porl, _round_trip_o2sac])
def test_state_dict_round_trip_gives_identical_updates(build):
    source, env_step = build(0)
    for i in range(3):
        source.update(random_batch(i), env_step=i)  # PORL: pre-sample steps, then SAC
    restored, _ = build(1)
    restored.load_state_dict(source.state_dict())
    untouched, _ = build(1)

    for i in range(2):
        results = []
        for algo in (source, restored, untouched):
            torch.manual_seed(100 + i)
            results.append(algo.update(random_batch(10 + i), env_step))
        assert results[0] == results[1]
        assert results[0] != results[2]


# ---------------------------------------------------------------- schedules of the baselines
def test_sac_from_scratch_schedule():
    config = small(SACConfig, random_start_steps=50, learning_starts=40, utd=2)
    algo = SAC(config, OBS, ACT, CPU)
    assert algo.acting(49).uniform and not algo.acting(50).uniform
    assert algo.updates_due(39) == 0 and algo.updates_due(40) == 2
    assert algo.offline_ratio(0) == 0.0
    assert set(algo.modules()) == {"policy", "critic"}
    assert algo.alpha.item() == pytest.approx(config.alpha_init)
    assert algo.target_entropy == -ACT


def test_rlpd_defaults():
    algo = RLPD(small(RLPDConfig), OBS, ACT, CPU)
    assert algo.critic.num_critics == 10 and algo.critic.layer_norm and algo.num_min_critics == 2
    assert algo.updates_due(4999) == 0 and algo.updates_due(5000) == 20
    assert algo.offline_ratio(0) == 0.5
    assert algo.acting(4999).uniform and not algo.acting(5000).uniform


def test_wsrl_warmup_acts_with_the_frozen_policy_then_updates():
    # warmup_steps differs from learning_starts (both default to 5000): updates wait for WSRL's own gate.
    algo = WSRL(small(WSRLConfig, warmup_steps=3000, learning_starts=100), OBS, ACT, CPU, policy=pretrained())
    warmup = algo.acting(0)
    assert not warmup.uniform and not warmup.deterministic and warmup.epsilon == 0.0
    assert algo.updates_due(100) == 0 and algo.updates_due(2999) == 0 and algo.updates_due(3000) == 4
    assert algo.critic.num_critics == 10 and algo.offline_ratio(0) == 0.0
    # The later of the two gates holds: learning_starts still applies after a short warm-up.
    short_warmup = WSRL(small(WSRLConfig, warmup_steps=100, learning_starts=3000), OBS, ACT, CPU, policy=pretrained())
    assert short_warmup.updates_due(2999) == 0 and short_warmup.updates_due(3000) == 4


def test_naive_finetune_loads_the_critic_and_requires_one():
    config = small(NaiveConfig)
    with pytest.raises(UserError, match="critic"):
        NaiveFinetune(config, OBS, ACT, CPU, policy=pretrained())
    critic = CriticEnsemble(OBS, ACT, 2, [16, 16])
    saved = params(critic)
    algo = NaiveFinetune(config, OBS, ACT, CPU, policy=pretrained(), critic=critic)
    assert same(params(algo.modules()["critic"]), saved)
    assert same(params(algo.target_critic), saved)


def test_methods_that_need_a_policy_refuse_to_start_without_one():
    for cls, config_cls in ((PORL, PORLConfig), (WSRL, WSRLConfig), (O2SAC, O2SACConfig)):
        with pytest.raises(UserError, match="policy"):
            cls(small(config_cls), OBS, ACT, CPU)


def test_fresh_critic_shares_the_policy_normalizer():
    policy = pretrained()
    policy.normalizer.set_stats(np.arange(OBS), np.full(OBS, 2.0))
    algo = PORL(small(PORLConfig), OBS, ACT, CPU, policy=policy)
    assert torch.equal(algo.critic.normalizer.mean, policy.normalizer.mean)
    assert torch.equal(algo.critic.normalizer.std, policy.normalizer.std)


# ---------------------------------------------------------------- smoke learning
def test_sac_critic_loss_falls_on_a_fixed_transition_stream():
    torch.manual_seed(0)
    data = offline_data(size=2048)
    algo = SAC(small(SACConfig, gamma=0.9, batch_size=64), OBS, ACT, CPU)
    losses = [algo.update(data.sample(64), env_step=10_000)["critic_loss"] for _ in range(300)]
    assert np.mean(losses[-30:]) < 0.5 * np.mean(losses[:30])
