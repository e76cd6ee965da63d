"""The one SAC core shared by every SAC-family method (SAC, naive, RLPD, WSRL, PORL, O2SAC).

`SACCore.update` = one critic step + one policy step (actor, α and any constraint multiplier
share one backward) + one Polyak step. It is split so that a CUDA graph can capture it
(`Capturable`, algorithms/capturable.py): `prepare(env_step)` on the host, then
`update_tensors(batch, phase)` free of host-device syncs. `update` = both, then floats.
Methods change it through small hooks rather than copies:
- `penalty(obs, actions, log_prob)`: a per-sample cost subtracted from the soft value in the
  critic target and added to the actor loss (O2SAC's λ·divergence); None for plain SAC.
- `td_target(batch)`: the critic's regression target (PORL's pre-sample stage swaps in the
  evaluation target of the frozen policy).
- `constraint_loss(...)`: a loss on the actor step's detached sample, stepped with the
  optimisers of `constraint_optimizers()` (O2SAC's λ).
- `initial_alpha()`: where α starts (O2SAC starts from α0).
`compiled` names the pure loss functions that `compile_losses` hands to `torch.compile` (the
graphed learner fuses them before capture; the eager path never compiles) and that a population
maps over its agents (`algorithms/population.py`), so none of them calls another;
`compiled_steps` the Polyak step, compiled as well.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Hashable

import torch
from torch import nn

from distributed_o2o.algorithms.base import ActingSpec, Algorithm, Batch
from distributed_o2o.algorithms.capturable import Capturable, PhaseCycle, next_phase
from distributed_o2o.algorithms.networks import CriticEnsemble, frozen_copy, polyak_update
from distributed_o2o.algorithms.optim import LinearWarmup, adam, frozen, optimizer_params, optimizer_step, to_floats
from distributed_o2o.algorithms.policies import Policy, TanhGaussianPolicy
from distributed_o2o.algorithms.policy_delay import CRITIC, policy_delay
from distributed_o2o.errors import UserError

Penalty = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor | None]
Sample = tuple[torch.Tensor, torch.Tensor]  # (a ~ π(·|s), log π(a|s))


@torch.no_grad()
def soft_td_target(batch: Batch, target_critic: CriticEnsemble, policy: Policy, alpha: torch.Tensor | float,
                   gamma: float, num_min: int, penalty: Penalty | None = None,
                   next_sample: Sample | None = None) -> torch.Tensor:
    """y = r + γ(1−d)[min Q̄(s',a') − α log π(a'|s') − penalty(s',a')], a' ~ π(·|s').

    The min is over `num_min` random members (all of them when num_min ≥ K). d is
    `batch.terminals`: true termination only, so a truncated transition still bootstraps.
    `next_sample`: (a', log π(a'|s')) already drawn from `policy`; drawn here when None.
    """
    next_actions, next_log_prob = policy.sample(batch.next_obs) if next_sample is None else next_sample
    value = target_critic.min_q(batch.next_obs, next_actions, num_min) - alpha * next_log_prob
    extra = None if penalty is None else penalty(batch.next_obs, next_actions, next_log_prob)
    if extra is not None:
        value = value - extra
    return batch.rewards + gamma * (1.0 - batch.terminals) * value


class Temperature(nn.Module):
    """log α, the entropy temperature's logarithm, as a module parameter (as the networks')."""

    def __init__(self, alpha: float, device: torch.device):
        super().__init__()
        self.log_alpha = nn.Parameter(torch.tensor(math.log(alpha), device=device))


class SACCore(Capturable, Algorithm):
    """SAC with a LayerNorm critic ensemble, Polyak targets and auto-tuned α.

    Acting: uniform actions for `random_start_steps`, then samples of the policy. Updates:
    `utd` per env step from `learning_starts`. Subclasses set `name` and adjust the schedule.
    """

    policy_family = TanhGaussianPolicy.family

    def __init__(self, config, obs_dim: int, act_dim: int, device: torch.device,
                 policy: Policy | None = None, critic: CriticEnsemble | None = None):
        super().__init__(config, obs_dim, act_dim, device, policy, critic)
        if policy is None:
            if config.needs_policy():
                raise UserError(f"'{config.algo}' fine-tunes a pretrained policy: pass one (config key 'policy')")
            policy = TanhGaussianPolicy(obs_dim, act_dim, config.hidden)
        self.policy = policy.to(device)
        if critic is None:
            critic = CriticEnsemble(obs_dim, act_dim, config.num_critics, config.hidden, config.critic_layer_norm)
            critic.normalizer.load_state_dict(self.policy.normalizer.state_dict())
        self.critic = critic.to(device)
        # On a GPU, one policy forward over [s; s′] per update saves its launches; on a CPU the
        # actor's backward through the doubled batch costs more than the forward it saves.
        self.shared_policy_forward = torch.device(device).type == "cuda"
        self.target_critic = frozen_copy(self.critic)
        # π̄, the deployed policy when `policy_average_tau` is set (π keeps acting and learning).
        self.policy_average = None if config.policy_average_tau is None else frozen_copy(self.policy)
        # The validated deployment: a copy of the starting policy, replaced by a candidate that
        # scores at least the best candidate score so far (`offer_candidate`).
        self.validated = frozen_copy(self.policy) if config.validated_deployment else None
        self.validated_score = -math.inf
        self.num_min_critics = config.num_min_critics
        self.temperature = Temperature(self.initial_alpha(), device)
        self.target_entropy = (-config.target_entropy_scale * act_dim if config.target_entropy is None
                               else config.target_entropy)
        self.actor_optimizer = adam(self.policy.parameters(), config.actor_lr, device)
        self.critic_optimizer = adam(self.critic.parameters(), config.critic_lr, device)
        self.alpha_optimizer = adam([self.log_alpha], config.alpha_lr, device)
        self.actor_warmup = (LinearWarmup(self.actor_optimizer, config.actor_warmup_steps, device)
                             if config.actor_warmup_steps else None)
        # `actor_every` > 1: the updates' phases cycle through critic-only steps to one with the
        # actor (TD3's policy-delay cycle); its position is not saved (a resume restarts it).
        self.actor_cycle = policy_delay(config.actor_every) if config.actor_every > 1 else None

    # ------------------------------------------------------------------ hooks
    def initial_alpha(self) -> float:
        return self.config.alpha_init

    def penalty(self, obs: torch.Tensor, actions: torch.Tensor, log_prob: torch.Tensor) -> torch.Tensor | None:
        """Per-sample extra cost of (s, a ~ π): subtracted from the soft value, added to L_π."""
        return None

    def td_target(self, batch: Batch, next_sample: Sample | None = None) -> torch.Tensor:
        return soft_td_target(batch, self.target_critic, self.policy, self.alpha, self.config.gamma,
                              self.num_min_critics, self.penalty, next_sample)

    def constraint_loss(self, obs: torch.Tensor, actions: torch.Tensor,
                        log_prob: torch.Tensor) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """A loss on the actor step's detached sample, stepped by `constraint_optimizers`; metrics."""
        return None, {}

    def constraint_optimizers(self) -> list[torch.optim.Optimizer]:
        return []

    def constraint_metrics(self) -> dict[str, torch.Tensor]:
        """Metrics read after the constraint's step (O2SAC's new λ)."""
        return {}

    # ------------------------------------------------------------------ steps
    compiled = ("sample_policy", "td_target", "critic_loss", "policy_loss", "actor_only_loss")
    compiled_steps = ("update_target",)

    @property
    def log_alpha(self) -> torch.Tensor:
        return self.temperature.log_alpha

    @property
    def actor_min_critics(self) -> int:
        """Members whose minimum the actor maximises (the target's number unless configured)."""
        return self.config.actor_num_min_critics or self.num_min_critics

    def actor_q(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The Q the actor maximises: the critics' mean (`actor_q_mean`) or a random subset's minimum."""
        if self.config.actor_q_mean:
            return self.critic(obs, actions).mean(dim=0)
        return self.critic.min_q(obs, actions, self.actor_min_critics)

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.detach().exp()

    def critic_loss(self, batch: Batch, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        q = self.critic(batch.obs, batch.actions)  # (K, B)
        loss = (q - target).pow(2).mean(dim=1).sum()
        return loss, {"critic_loss": loss.detach(), "q_mean": q.detach().mean()}

    def critic_step(self, batch: Batch, target: torch.Tensor) -> dict[str, torch.Tensor]:
        loss, metrics = self.critic_loss(batch, target)
        optimizer_step(self.critic_optimizer, loss, self.critic.parameters())
        return metrics

    def sample_policy(self, obs: torch.Tensor, next_obs: torch.Tensor) -> tuple[Sample, Sample]:
        """π's samples at s (differentiable, for the actor step) and at s′ (detached, for the
        critic target) from one forward pass: the policy has not moved between the two uses.
        Copies, not views: a compiled function's views of its intermediates are re-made outside
        it, and their backward (zeros, then a copy) runs there too, two kernels each."""
        actions, log_prob = self.policy.sample(torch.cat([obs, next_obs]))
        n = obs.shape[0]
        return (actions[:n].clone(), log_prob[:n].clone()), (actions[n:].detach().clone(), log_prob[n:].detach().clone())

    def actor_loss(self, obs: torch.Tensor, sample: Sample | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """L_π = E[α log π(a|s) − min Q(s,a) + penalty], a ~ π (`sample`, or drawn here);
        also the detached sample."""
        actions, log_prob = self.policy.sample(obs) if sample is None else sample
        objective = self.alpha * log_prob - self.actor_q(obs, actions)
        penalty = self.penalty(obs, actions, log_prob)
        if penalty is not None:
            objective = objective + penalty
        loss = objective.mean()
        log_prob = log_prob.detach()
        return loss, actions.detach(), log_prob, {"actor_loss": loss.detach(), "entropy": -log_prob.mean()}

    def actor_only_loss(self, obs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L_π and its metrics, as one function the graphed path can compile (`actor_step`)."""
        loss, _, _, metrics = self.actor_loss(obs)
        return loss, metrics

    def actor_step(self, obs: torch.Tensor) -> dict[str, torch.Tensor]:
        """The actor alone (α and any constraint stay put)."""
        with frozen(self.critic):
            loss, metrics = self.actor_only_loss(obs)
        optimizer_step(self.actor_optimizer, loss, self.policy.parameters())
        return metrics

    def policy_loss(self, obs: torch.Tensor, sample: Sample | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L_π + L_α + the constraint's loss, for one backward: none depends on another's
        parameters (α and λ enter L_π detached; L_α and L_λ see the sample detached), so the
        gradients are those of three separate steps.

        L_α = −log α·(log π + H̄): α rises while the entropy is below the target.
        """
        loss, actions, log_prob, metrics = self.actor_loss(obs, sample)
        if self.config.autotune_alpha:
            loss = loss - (self.log_alpha * (log_prob + self.target_entropy)).mean()
        constraint, constraint_metrics = self.constraint_loss(obs, actions, log_prob)
        if constraint is not None:
            loss = loss + constraint
        return loss, {**metrics, **constraint_metrics}

    def policy_optimizers(self) -> list[torch.optim.Optimizer]:
        alpha = [self.alpha_optimizer] if self.config.autotune_alpha else []
        return [self.actor_optimizer, *alpha, *self.constraint_optimizers()]

    def policy_step(self, obs: torch.Tensor, sample: Sample | None = None) -> dict[str, torch.Tensor]:
        with frozen(self.critic):
            loss, metrics = self.policy_loss(obs, sample)
        optimizers = self.policy_optimizers()
        optimizer_step(optimizers, loss, optimizer_params(optimizers))
        return {**metrics, "alpha": self.alpha, **self.constraint_metrics()}

    def update_target(self) -> None:
        polyak_update(self.target_critic, self.critic, self.config.tau)

    def update_tensors(self, batch: Batch, phase: Hashable) -> dict[str, torch.Tensor]:
        """One gradient step with no host-device sync; metrics as device tensors."""
        sample = next_sample = None
        if self.shared_policy_forward:
            sample, next_sample = self.sample_policy(batch.obs, batch.next_obs)
        metrics = self.critic_step(batch, self.td_target(batch, next_sample))
        actor = phase != CRITIC  # a critic-only step of the `actor_every` cycle
        if actor:
            metrics.update(self.policy_step(batch.obs, sample))
        self.update_target()
        if actor and self.policy_average is not None:
            polyak_update(self.policy_average, self.policy, self.config.policy_average_tau)
        return metrics

    def prepare(self, env_step: int) -> Hashable | PhaseCycle:
        """Host side, before `update_tensors`: the actor's warm-up rate, where there is one; the
        updates' phases (the `actor_every` cycle, else None: every update steps the actor)."""
        if self.actor_warmup is not None:
            self.actor_warmup.set_progress(env_step - self.actor_learns_from())
        return self.actor_cycle

    def actor_learns_from(self) -> int:
        """The first env step at which the actor takes gradient steps."""
        return max(self.handover_step(), self.config.learning_starts)

    def update(self, batch: Batch, env_step: int) -> dict[str, float]:
        return to_floats(self.update_tensors(batch, next_phase(self.prepare(env_step))))

    def learner_modules(self) -> dict[str, nn.Module]:
        """Every module whose tensors an update reads or writes (a population stacks them per
        agent); subclasses add theirs."""
        average = {} if self.policy_average is None else {"policy_average": self.policy_average}
        return {"policy": self.policy, "critic": self.critic, "target_critic": self.target_critic,
                "temperature": self.temperature, **average}

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.actor_optimizer, self.critic_optimizer, self.alpha_optimizer, *self.constraint_optimizers()]

    # ------------------------------------------------------------------ schedule
    def acting(self, env_step: int) -> ActingSpec:
        return ActingSpec(uniform=env_step < self.config.random_start_steps)

    def acting_policy(self) -> Policy:
        return self.policy

    def candidate_policy(self) -> Policy:
        """The learnt policy the run would deploy without validation: π̄ where kept, else π."""
        return self.policy if self.policy_average is None else self.policy_average

    def deployed_policy(self) -> Policy:
        return self.candidate_policy() if self.validated is None else self.validated

    def offer_candidate(self, score: float, scored: dict[str, torch.Tensor]) -> bool:
        """The validated deployment's test: the candidate as scored `score` at an evaluation
        (`scored`, its weights then) is deployed (a copy) when it matches the best candidate
        score so far. True when deployed."""
        if self.validated is None or score < self.validated_score:
            return False
        self.validated_score = float(score)
        self.validated.load_state_dict(scored)
        return True

    def updates_due(self, env_step: int) -> int:
        return self.config.utd if env_step >= self.config.learning_starts else 0

    def offline_ratio(self, env_step: int) -> float:
        return self.config.offline_ratio

    # ------------------------------------------------------------------ state
    def modules(self) -> dict[str, nn.Module]:
        online = {} if self.deployed_policy() is self.policy else {"online_policy": self.policy}
        average = {} if self.validated is None or self.policy_average is None else {"policy_average": self.policy_average}
        return {"policy": self.deployed_policy(), **online, **average, "critic": self.critic}

    def state_dict(self) -> dict:
        """A snapshot: copied, so later updates do not alter it."""
        return copy.deepcopy(self.snapshot())

    def load_state_dict(self, state: dict) -> None:
        # Copied first: optimisers would otherwise share moment tensors with `state`.
        self.restore(copy.deepcopy(state))

    def snapshot(self) -> dict:
        """Live references to everything `state_dict` saves; subclasses extend it and `restore`."""
        return {
            "policy": self.policy.state_dict(),
            "critic": self.critic.state_dict(),
            "target_critic": self.target_critic.state_dict(),
            "log_alpha": self.log_alpha.detach(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "alpha_optimizer": self.alpha_optimizer.state_dict(),
            **({} if self.policy_average is None else {"policy_average": self.policy_average.state_dict()}),
            **({} if self.validated is None else {"validated": self.validated.state_dict(),
                                                  "validated_score": self.validated_score}),
        }

    def restore(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.critic.load_state_dict(state["critic"])
        self.target_critic.load_state_dict(state["target_critic"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.alpha_optimizer.load_state_dict(state["alpha_optimizer"])
        if self.policy_average is not None:
            self.policy_average.load_state_dict(state["policy_average"])
        if self.validated is not None:
            self.validated.load_state_dict(state["validated"])
            self.validated_score = float(state["validated_score"])
