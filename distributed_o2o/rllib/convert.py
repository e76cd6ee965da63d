"""A pretrained policy from an RLlib (new API stack) checkpoint, in this project's format.

RLlib's offline algorithms keep the policy as an MLP encoder (tanh hidden layers by default)
and a linear head whose outputs are the action distribution's inputs, mean then log-std:
- CQL, IQL (and SAC): a squashed Gaussian, tanh(N(mean, std)), the project's TanhGaussian
  family with a state-dependent std: converted exactly (same weights, same mode and noise).
- BC, MARWIL: an unsquashed diagonal Gaussian, N(mean, std) clipped to the bounds. Converted
  into a TanhGaussian whose MLP outputs the action mean (`mean_output="action"`: u =
  atanh(clip(mean)), so its mode is RLlib's clipped mean, to 1e-6); the std is RLlib's,
  applied before the tanh, so exploration noise is close to, not the same as, RLlib's.
RLlib acts in the normalised action space [-1, 1] (its default normalize_actions=True), as the
envs here do. Observation filters (a MeanStdFilter connector) live outside the module and are
not carried over: the converted policy takes raw observations.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from distributed_o2o.algorithms.networks import ACTIVATIONS
from distributed_o2o.algorithms.policies import TanhGaussianPolicy
from distributed_o2o.checkpoint import save_checkpoint
from distributed_o2o.envs import check_spaces
from distributed_o2o.errors import UserError

# State-dict prefixes of the policy's encoder and head in RLlib's default modules.
_ENCODER = re.compile(r"^(?:_encoder|encoder\.actor_encoder|encoder\.encoder|pi_encoder)\.net\.mlp\.(\d+)\.(weight|bias)$")
_HEAD = re.compile(r"^(?:_pi_head|pi)\.net\.mlp\.(\d+)\.(weight|bias)$")
_ACTIVATION_NAMES = {cls: name for name, cls in ACTIVATIONS.items()}


def module_dir(path: str | Path, module_id: str = "default_policy") -> Path:
    """The RLModule directory in an Algorithm checkpoint (`algo.save_to_path()`: the learner's copy
    under learner_group/), in a MultiRLModule directory, or `path` itself if it is one. Only the
    directory layout is read here: the checkpoint root's own class_and_ctor_args.pkl (the
    Algorithm's) is never opened."""
    path = Path(path).expanduser().resolve()  # RLlib reads a relative path as a URI without a scheme
    found = sorted(path.glob(f"**/rl_module/{module_id}/class_and_ctor_args.pkl"),
                   key=lambda file: ("learner_group" not in file.parts, str(file)))
    if found:
        return found[0].parent
    if (path / module_id / "class_and_ctor_args.pkl").is_file():  # a MultiRLModule directory
        return path / module_id
    if (path / "class_and_ctor_args.pkl").is_file() and not (path / "rllib_checkpoint.json").is_file():
        return path
    raise UserError(f"no RLlib RLModule '{module_id}' under '{path}': pass an Algorithm checkpoint of the new API "
                    "stack (algo.save_to_path()) or its learner_group/learner/rl_module/<module id> directory")


# RLlib writes an RLModule as pickles (its class and constructor arguments, its state), and
# unpickling runs whatever code a file holds: the converter reads one only when told to.
PICKLE_WARNING = ("RLlib stores an RLModule as Python pickles, and unpickling runs whatever code the file holds: pass "
                  "--trust-pickle only for a checkpoint you made yourself or otherwise trust")


def convert_rllib_policy(path: str | Path, env_id: str, out: str | Path, module_id: str = "default_policy",
                         trust_pickle: bool = False) -> Path:
    source = module_dir(path, module_id)
    if not trust_pickle:
        raise UserError(f"'{source}' is an RLlib checkpoint: {PICKLE_WARNING}")
    from ray.rllib.core.distribution.torch.torch_distribution import TorchDiagGaussian, TorchSquashedGaussian
    from ray.rllib.core.rl_module.rl_module import RLModule

    module = RLModule.from_checkpoint(source)
    dist = module.get_inference_action_dist_cls()
    mean_outputs = {TorchSquashedGaussian: "pre_tanh", TorchDiagGaussian: "action"}
    if dist not in mean_outputs:
        raise UserError(f"the RLlib policy in '{source}' acts with {getattr(dist, '__name__', dist)}: only continuous "
                        "Gaussian policies (BC, MARWIL, CQL, IQL, SAC) convert")
    state = module.state_dict()
    encoder = _linear_layers(state, _ENCODER)
    head = _linear_layers(state, _HEAD)
    if not encoder or len(head) != 1:
        raise UserError(f"the RLlib module in '{source}' is not a default MLP policy (encoder layers {len(encoder)}, "
                        f"head layers {len(head)}: a single linear head is supported)")
    obs_dim, act_dim = encoder[0][0].shape[1], head[0][0].shape[0] // 2
    check_spaces(f"RLlib checkpoint '{path}'", obs_dim, act_dim, env_id)
    policy = TanhGaussianPolicy(obs_dim, act_dim, [w.shape[0] for w, _ in encoder], activation=_activation(module),
                                mean_output=mean_outputs[dist])
    with torch.no_grad():
        for layer, (weight, bias) in zip([m for m in policy.net if isinstance(m, nn.Linear)], encoder + head):
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)
    return save_checkpoint(out, {"policy": policy}, env_id=env_id, algo="rllib",
                           extra={"converted_from": str(source), "rllib_module": type(module).__name__})


def _linear_layers(state: dict[str, torch.Tensor], pattern: re.Pattern) -> list[tuple[torch.Tensor, torch.Tensor]]:
    found: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        match = pattern.match(key)
        if match:
            found.setdefault(int(match.group(1)), {})[match.group(2)] = torch.as_tensor(value)
    return [(found[i]["weight"], found[i]["bias"]) for i in sorted(found)]


def _activation(module) -> str:
    kinds = {type(m) for m in module.modules() if type(m) in _ACTIVATION_NAMES}
    if len(kinds) != 1:
        raise UserError(f"the RLlib module uses hidden activations {sorted(k.__name__ for k in kinds)}: only one of "
                        "tanh or relu throughout is supported")
    return _ACTIVATION_NAMES[kinds.pop()]
