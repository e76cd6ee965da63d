"""Population runs: K independent agents of one SAC-family method trained by one batched update.

Every tensor an update reads or writes (`SACCore.learner_modules`: networks, targets, log α and,
where the method has them, λ, π_ref, π̄, π_off) is stacked along a leading agent dimension into
one set of leaf parameters that one set of optimisers steps; Adam is elementwise, so agents'
moments never mix. The maths stays the single agent's: the population runs the method's own
`update_tensors` on a template instance whose pure loss functions (those named in `compiled`)
are replaced by `torch.func.vmap` of themselves over the agents, agent k's slices swapped into
the modules by `torch.func.functional_call`. A vmapped loss is one loss per agent; the optimiser
step backpropagates their sum, whose gradient in agent k's slice is agent k's own gradient.
Noise (policy samples, critic subsets) is drawn per agent.

The K agents stay whole single-agent instances whose tensors are views of the stacked ones, so
checkpoints, hand-over, evaluation offers and schedules are their own code and format; only
their optimiser state is copied out (`agent_state_dict`) and in (`load_agent_states`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Hashable, Iterator
from functools import partial

import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.utils._pytree import tree_map_only

from distributed_o2o.algorithms.base import Batch
from distributed_o2o.algorithms.capturable import next_phase
from distributed_o2o.algorithms.optim import stack_scalars
from distributed_o2o.algorithms.sac import SACCore
from distributed_o2o.errors import UserError


def population_methods() -> list[str]:
    """The registered methods a population can run (the SAC family)."""
    from distributed_o2o.algorithms.registry import ALGORITHM_NAMES, algorithm_class

    return [name for name in ALGORITHM_NAMES if issubclass(algorithm_class(name), SACCore)]


def require_population_support(algorithm_cls: type) -> None:
    if not issubclass(algorithm_cls, SACCore):
        name = getattr(algorithm_cls, "name", algorithm_cls.__name__)  # an offline pretrainer has no method name
        raise UserError(f"'{name}' cannot train several seeds in one learner; populations support "
                        f"{', '.join(population_methods())}: run its seeds as separate runs")


class _Modules(nn.ModuleDict):
    """An algorithm's learner modules as one module: `functional_call` swaps all their tensors
    for one agent's while `fn` runs."""

    def forward(self, fn: Callable, *args):
        return fn(*args)


def _slots(modules: dict[str, nn.Module]) -> Iterator[tuple[nn.Module, str, bool]]:
    """(owner, name, is_parameter) of every tensor of `modules`, in a fixed order."""
    for module in modules.values():
        for owner in module.modules():
            for name, tensor in owner._parameters.items():
                if tensor is not None:
                    yield owner, name, True
            for name, tensor in owner._buffers.items():
                if tensor is not None:
                    yield owner, name, False


def _optimizer_pairs(template: SACCore, agent: SACCore) -> Iterator[tuple[torch.optim.Optimizer, nn.Parameter,
                                                                         torch.optim.Optimizer, nn.Parameter]]:
    """(template optimiser, stacked parameter, agent optimiser, agent parameter), position by position."""
    for t_opt, a_opt in zip(template.optimizers(), agent.optimizers(), strict=True):
        for t_group, a_group in zip(t_opt.param_groups, a_opt.param_groups, strict=True):
            for t_param, a_param in zip(t_group["params"], a_group["params"], strict=True):
                yield t_opt, t_param, a_opt, a_param


class Population:
    """K agents of one SAC-family class (built alike, e.g. from K seeds) updated together.

    `update_tensors(batch, phase)` takes a batch whose fields lead with the agent dimension
    (K, B, ...) and returns each metric as a (K,) tensor; no host sync, so the graphed learner
    captures it as it captures one agent's update.
    """

    def __init__(self, agents: list[SACCore]):
        if not agents:
            raise ValueError("a population needs at least one agent")
        cls = type(agents[0])
        require_population_support(cls)
        if any(type(agent) is not cls for agent in agents):
            raise ValueError("a population's agents are of one class")
        self.agents, self.num_agents = list(agents), len(agents)
        # The template shares D_off with agent 0 rather than copying it (it never samples it).
        self.template = copy.deepcopy(agents[0], memo={id(agents[0].offline_data): None})
        self.config = self.template.config
        self._stack_tensors()
        self._stack_optimizer_states()
        self.state = _Modules(self.template.learner_modules())
        for name in self.template.compiled:
            setattr(self.template, name, self._per_agent(getattr(self.template, name)))

    # ------------------------------------------------------------------ stacking
    def _stack_tensors(self) -> None:
        """The template's tensors become (K, ...) stacks of the agents'; each agent's become views
        of its slice (its parameters stay the same objects, so its optimisers still name them)."""
        template_slots = list(_slots(self.template.learner_modules()))
        agent_slots = [list(_slots(agent.learner_modules())) for agent in self.agents]
        stacked_params: dict[int, nn.Parameter] = {}
        for i, (owner, name, is_param) in enumerate(template_slots):
            old = getattr(owner, name)
            if id(old) in stacked_params:  # a tensor listed twice is stacked once
                continue
            originals = [getattr(slots[i][0], slots[i][1]) for slots in agent_slots]
            stacked = torch.stack([t.detach() for t in originals])
            if is_param:
                stacked = nn.Parameter(stacked, requires_grad=old.requires_grad)
                stacked_params[id(old)] = stacked
                owner._parameters[name] = stacked
                for k, original in enumerate(originals):
                    original.data = stacked.detach()[k]
            else:
                owner._buffers[name] = stacked
                for k, slots in enumerate(agent_slots):
                    slots[i][0]._buffers[slots[i][1]] = stacked[k]
        for opt in self.template.optimizers():
            for group in opt.param_groups:
                group["params"] = [stacked_params[id(p)] for p in group["params"]]

    def _stack_optimizer_states(self) -> None:
        """The template's optimiser state: the agents' stacked (their step counts must agree)."""
        for opt in self.template.optimizers():
            opt.state.clear()
        for pairs in zip(*(_optimizer_pairs(self.template, agent) for agent in self.agents)):
            t_opt, t_param = pairs[0][:2]
            states = [a_opt.state.get(a_param) for _, _, a_opt, a_param in pairs]
            if not states[0]:
                continue
            if any(not s or not torch.equal(s["step"], states[0]["step"]) for s in states):
                raise ValueError("a population's agents must have taken the same number of optimiser steps")
            t_opt.state[t_param] = {key: value.clone() if key == "step" else torch.stack([s[key] for s in states])
                                    for key, value in states[0].items()}

    # ------------------------------------------------------------------ the batched losses
    def _per_agent(self, fn: Callable) -> Callable:
        """`fn` (a loss function of the template) over the agents: each input and output gains
        the leading agent dimension; noise is drawn per agent."""

        def batched(*args):
            is_batch = [isinstance(arg, Batch) for arg in args]
            flat = tuple(_batch_fields(arg) if b else arg for arg, b in zip(args, is_batch))
            tensors = {**dict(self.state.named_parameters()), **dict(self.state.named_buffers())}
            in_dims = (0, tuple(None if arg is None else 0 for arg in flat))
            return vmap(partial(self._one_agent, fn, is_batch), in_dims, randomness="different")(tensors, flat)

        return batched

    def _one_agent(self, fn: Callable, is_batch: list[bool], tensors: dict[str, torch.Tensor], flat: tuple):
        args = tuple(Batch(*arg) if b else arg for arg, b in zip(flat, is_batch))
        return functional_call(self.state, tensors, (fn, *args))

    # ------------------------------------------------------------------ updates
    def prepare(self, env_step: int) -> Hashable:
        """The agents' own host-side preparation (PORL's hand-over to π_ref, ε_t), then the
        template's, which writes what the batched update reads."""
        for agent in self.agents:
            agent.prepare(env_step)
        self._sync_reference()
        return self.template.prepare(env_step)

    def update_tensors(self, batch: Batch, phase: Hashable) -> dict[str, torch.Tensor]:
        """One update of every agent, agent k on `batch`'s slice k; metrics (K,) per name."""
        return self.template.update_tensors(batch, phase)

    def update(self, batch: Batch, env_step: int) -> list[dict[str, float]]:
        """One update of every agent; each agent's metrics as floats (one host sync)."""
        return per_agent_floats(self.update_tensors(batch, next_phase(self.prepare(env_step))))

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """Actions (K, N, act_dim) for observations (K, N, obs_dim), agent k acting on row k."""
        policy = self.template.policy
        return self._per_agent(policy.mode if deterministic or not policy.stochastic else policy.explore)(obs)

    # ------------------------------------------------------------------ the graphed learner's calls
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return self.template.optimizers()

    def compile_losses(self) -> None:
        self.template.compile_losses()

    def compile_optimizers(self) -> None:
        self.template.compile_optimizers()

    # ------------------------------------------------------------------ per agent
    def handover(self, evaluators: list[Callable]) -> list[dict[str, float]]:
        """Each agent's hand-over, scored by its own evaluator."""
        metrics = [agent.handover(evaluate) for agent, evaluate in zip(self.agents, evaluators, strict=True)]
        self._sync_reference()
        return metrics

    def agent_state_dict(self, agent: int) -> dict:
        """Agent `agent`'s resume state, in the single-agent format (`SACCore.state_dict`'s copy,
        each tensor its own: a deep copy of a view would copy all K agents' storage)."""
        for t_opt, t_param, a_opt, a_param in _optimizer_pairs(self.template, self.agents[agent]):
            state = t_opt.state.get(t_param)
            if state:
                a_opt.state[a_param] = {key: value if key == "step" else value[agent] for key, value in state.items()}
        # The snapshot's other leaves are immutable or built afresh by each state_dict() call.
        return tree_map_only(torch.Tensor, lambda t: t.detach().clone(), self.agents[agent].snapshot())

    def load_agent_states(self, states: list[dict]) -> None:
        """Every agent's resume state at once (the agents' optimiser steps must agree)."""
        for agent, state in zip(self.agents, states, strict=True):
            agent.load_state_dict(state)
        self._stack_optimizer_states()
        self._sync_reference()

    def _sync_reference(self) -> None:
        """The template's π_ref is the agents' kind of π_ref (their copy of the best policy, or π̄)."""
        reference = getattr(self.template, "reference", None)
        if reference is None:
            return
        kinds = {_module_name(agent, agent.reference.policy) for agent in self.agents}
        if len(kinds) != 1:
            raise RuntimeError(f"the agents' references differ in kind: {sorted(map(str, kinds))}")
        kind = kinds.pop()
        reference.policy = None if kind is None else self.template.learner_modules()[kind]


def _module_name(agent: SACCore, module: nn.Module | None) -> str | None:
    if module is None:
        return None
    return next(name for name, m in agent.learner_modules().items() if m is module)


def _batch_fields(batch: Batch) -> tuple[torch.Tensor, ...]:
    return batch.obs, batch.actions, batch.rewards, batch.next_obs, batch.terminals


def stack_batches(batches: list[Batch]) -> Batch:
    """One batch per agent as a population's batch, (K, B, ...): `agent_batch`'s inverse."""
    return Batch(*(torch.stack(fields) for fields in zip(*(_batch_fields(b) for b in batches))))


def agent_batch(batch: Batch, agent: int) -> Batch:
    """Agent `agent`'s slice of a population's batch."""
    return Batch(*(field[agent] for field in _batch_fields(batch)))


def per_agent_floats(metrics: dict[str, torch.Tensor]) -> list[dict[str, float]]:
    """(K,) metric tensors as K dicts of floats, with one host sync."""
    if not metrics:
        return []
    values = stack_scalars(metrics.values(), next(iter(metrics.values())).shape).T.tolist()
    return [dict(zip(metrics, row)) for row in values]
