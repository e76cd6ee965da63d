"""The one checkpoint format: a directory of safetensors weights plus `metadata.json`.

    <dir>/metadata.json           format, env id and spaces, obs normalisation, config, modules
    <dir>/<module>.safetensors    one file per module: "policy", "critic", "value", ...

Every module records its architecture (`arch()`) in the metadata, so loading rebuilds it
without unpickling anything. Observation statistics live in each module's weights (the
`normalizer` buffers); `metadata.json` repeats the policy's for tools that do not load torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from distributed_o2o.algorithms.networks import CriticEnsemble, ValueNetwork
from distributed_o2o.algorithms.policies import FAMILIES, Policy, build_policy, convert_policy
from distributed_o2o.durable import replace_synced, sha256
from distributed_o2o.envs import check_spaces
from distributed_o2o.errors import UserError

FORMAT = "distributed_o2o/checkpoint"
FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"


def _module_kind(module: nn.Module) -> str:
    if isinstance(module, Policy):
        return "policy"
    if isinstance(module, CriticEnsemble):
        return "critic_ensemble"
    if isinstance(module, ValueNetwork):
        return "value"
    raise TypeError(f"cannot checkpoint a {type(module).__name__}")


def _build_module(kind: str, arch: dict) -> nn.Module:
    if kind == "policy":
        return build_policy(arch)
    if kind == "critic_ensemble":
        return CriticEnsemble(**arch)
    if kind == "value":
        return ValueNetwork(**arch)
    raise UserError(f"checkpoint names an unknown module kind '{kind}': it was written by a newer distributed_o2o; upgrade")


@dataclass
class Checkpoint:
    path: Path
    metadata: dict[str, Any]
    modules: dict[str, nn.Module] = field(default_factory=dict)

    @property
    def policy(self) -> Policy:
        return self.modules["policy"]


def save_checkpoint(path: str | Path, modules: dict[str, nn.Module], *, env_id: str | None, algo: str,
                    config: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write `modules` (must include "policy") and their metadata into directory `path`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    policy = modules["policy"]
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "algo": algo,
        "env_id": env_id,
        "policy_family": policy.family,
        "spaces": {"obs_dim": policy.obs_dim, "act_dim": policy.act_dim, "action_low": -1.0, "action_high": 1.0},
        "obs_norm": {"mean": policy.normalizer.mean.tolist(), "std": policy.normalizer.std.tolist()},
        "modules": {name: {"kind": _module_kind(m), "arch": m.arch()} for name, m in modules.items()},
        "config": config or {},
        "extra": extra or {},
    }
    for name, module in modules.items():
        tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        _write_safetensors(tensors, path / f"{name}.safetensors")
    # Metadata last: a directory with metadata.json is a complete checkpoint.
    tmp = path / (METADATA_FILE + ".tmp")
    tmp.write_text(json.dumps(metadata, indent=2))
    tmp.replace(path / METADATA_FILE)
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    meta_file = path / METADATA_FILE
    if not meta_file.is_file():
        raise UserError(f"no checkpoint at '{path}' ({METADATA_FILE} is missing): pass a directory written by "
                        "`o2o pretrain` or `o2o finetune`")
    try:
        metadata = json.loads(meta_file.read_bytes())
    except ValueError as exc:  # also bytes that are not UTF-8
        raise UserError(f"checkpoint metadata '{meta_file}' is not valid JSON ({exc}): the checkpoint is damaged; use another") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        found = metadata.get("format") if isinstance(metadata, dict) else type(metadata).__name__
        raise UserError(f"'{meta_file}' is not a distributed_o2o checkpoint (format={found!r})")
    version = metadata.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise _damaged(meta_file, f"format_version {version!r} is not an integer")
    if version > FORMAT_VERSION:
        raise UserError(f"checkpoint '{path}' has format version {version}; this distributed_o2o reads "
                        f"up to {FORMAT_VERSION}: upgrade distributed_o2o")
    _check_layout(metadata, meta_file)
    return metadata


def _damaged(where: Path, problem: str) -> UserError:
    return UserError(f"checkpoint '{where}' is damaged ({problem}): use another checkpoint or write it again")


def _check_layout(metadata: dict[str, Any], meta_file: Path) -> None:
    """The fields a checkpoint is loaded from, with the types they need."""
    spaces, modules = metadata.get("spaces"), metadata.get("modules")
    if not (isinstance(spaces, dict) and all(_positive_int(spaces.get(k)) for k in ("obs_dim", "act_dim"))):
        raise _damaged(meta_file, "'spaces' needs positive integers obs_dim and act_dim")
    if not (isinstance(modules, dict) and "policy" in modules):
        raise _damaged(meta_file, "'modules' lists no policy")
    for name, info in modules.items():
        if not (isinstance(info, dict) and isinstance(info.get("kind"), str) and isinstance(info.get("arch"), dict)):
            raise _damaged(meta_file, f"module '{name}' needs a kind and an arch")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def load_checkpoint(path: str | Path, env_id: str | None = None, env_kwargs: dict | None = None,
                    names: list[str] | None = None) -> Checkpoint:
    """Load the named modules (all by default), refusing a checkpoint whose spaces differ from `env_id`'s."""
    path = Path(path)
    metadata = read_metadata(path)
    if env_id is not None:
        spaces = metadata["spaces"]
        check_spaces(f"checkpoint '{path}'", spaces["obs_dim"], spaces["act_dim"], env_id, env_kwargs)
    checkpoint = Checkpoint(path, metadata)
    for name, info in metadata["modules"].items():
        if names is not None and name not in names:
            continue
        weights_file = path / f"{name}.safetensors"
        if not weights_file.is_file():
            raise UserError(f"checkpoint '{path}' lists module '{name}' but {weights_file.name} is missing: the checkpoint is incomplete")
        try:
            module = _build_module(info["kind"], info["arch"])
            module.load_state_dict(load_file(str(weights_file)))
        except UserError:
            raise
        except (SafetensorError, RuntimeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            problem = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise _damaged(path, f"module '{name}' cannot be rebuilt from it: {problem}") from None
        checkpoint.modules[name] = module
    return checkpoint


def load_policy(path: str | Path, env_id: str | None = None, family: str | None = None, env_kwargs: dict | None = None,
                init_std: float = 0.1) -> Policy:
    """The checkpoint's policy, converted to `family` when one is given (cross-family transfer)."""
    if family is not None and family not in FAMILIES:
        raise UserError(f"unknown policy family '{family}': use one of {sorted(FAMILIES)}")
    policy = load_checkpoint(path, env_id, env_kwargs, names=["policy"]).policy
    policy.name = str(path)
    return convert_policy(policy, family, init_std) if family else policy


# ---------------------------------------------------------------- resumable training state
# A nested state (networks, optimisers, counters) is stored as one safetensors file of its
# tensors plus a JSON tree in which each tensor is replaced by a reference. Dicts with
# non-string keys (optimiser states use ints) keep their key types. No pickle anywhere.
_TENSOR, _ARRAY, _ITEMS, _TUPLE = "__tensor__", "__ndarray__", "__items__", "__tuple__"


def _encode(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(node, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = node.detach().cpu().contiguous()
        return {_TENSOR: key}
    if isinstance(node, np.ndarray):
        key = str(len(tensors))
        tensors[key] = torch.from_numpy(np.ascontiguousarray(node))
        return {_ARRAY: key}
    if isinstance(node, dict):
        if all(isinstance(k, str) for k in node):
            return {k: _encode(v, tensors) for k, v in node.items()}
        return {_ITEMS: [[k, _encode(v, tensors)] for k, v in node.items()]}
    if isinstance(node, tuple):
        return {_TUPLE: [_encode(v, tensors) for v in node]}
    if isinstance(node, list):
        return [_encode(v, tensors) for v in node]
    if isinstance(node, (np.integer, np.floating, np.bool_)):
        return node.item()
    return node


def _decode(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(node, dict):
        if _TENSOR in node:
            return tensors[node[_TENSOR]]
        if _ARRAY in node:
            return tensors[node[_ARRAY]].numpy()
        if _ITEMS in node:
            return {k: _decode(v, tensors) for k, v in node[_ITEMS]}
        if _TUPLE in node:
            return tuple(_decode(v, tensors) for v in node[_TUPLE])
        return {k: _decode(v, tensors) for k, v in node.items()}
    if isinstance(node, list):
        return [_decode(v, tensors) for v in node]
    return node


class DamagedState(UserError):
    """A saved state that cannot be trusted: truncated, edited, or its two files from two saves."""


def _write_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """`save_file`, its I/O failures (an unwritable directory) raised as the OSError they are."""
    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as exc:  # "Error while serializing: I/O error: ... (os error 13) at path ..."
        found = re.search(r"\(os error (\d+)\)", str(exc))
        if found is None:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), str(path)) from None


def save_state(path: str | Path, state: dict[str, Any], save_id: str | None = None) -> str:
    """Write a nested training state as `<path>.safetensors` + `<path>.json`; returns the save id.

    Each file is written beside its predecessor, flushed to disk and renamed over it, the JSON
    last. The JSON names the save id (repeated in the safetensors metadata) and the checksum of
    the safetensors file, so a damaged file or a pair mixed from two saves is refused on load."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_id = save_id or uuid.uuid4().hex[:16]
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state, tensors)
    weights, index = path.with_suffix(".safetensors"), path.with_suffix(".json")
    tmp = weights.with_name(weights.name + ".tmp")
    _write_safetensors(tensors, tmp, metadata={"save_id": save_id})
    replace_synced(tmp, weights)
    tmp = index.with_name(index.name + ".tmp")
    tmp.write_text(json.dumps({"save_id": save_id, "sha256": sha256(weights), "tree": tree}))
    replace_synced(tmp, index)
    return save_id


def load_state(path: str | Path, save_id: str | None = None) -> dict[str, Any]:
    """Read a state written by `save_state` (of save `save_id` when given); `DamagedState` if
    either file is damaged or they do not belong together."""
    path = Path(path)
    weights, index = path.with_suffix(".safetensors"), path.with_suffix(".json")
    if not index.is_file():
        raise UserError(f"no saved state at '{path}': the run directory has no completed checkpoint to resume from")
    try:
        saved = json.loads(index.read_bytes())
        tree, expected, saved_id = saved["tree"], saved["sha256"], saved["save_id"]
    except (ValueError, KeyError, TypeError):
        raise DamagedState(f"'{index}' is not a saved-state index (unreadable or incomplete JSON)") from None
    if save_id is not None and saved_id != save_id:
        raise DamagedState(f"'{index}' belongs to save {saved_id}, not to save {save_id}")
    data = weights.read_bytes() if weights.is_file() else b""
    if hashlib.sha256(data).hexdigest() != expected:
        raise DamagedState(f"'{weights}' is missing or does not match the checksum in {index.name} (truncated, edited "
                           "or from another save)")
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    if header.get("__metadata__", {}).get("save_id") != saved_id:
        raise DamagedState(f"'{weights}' carries another save id than {index.name}")
    try:
        return _decode(tree, safetensors.torch.load(data))
    except (KeyError, TypeError, ValueError):
        raise DamagedState(f"'{index}' refers to tensors that '{weights.name}' does not hold") from None
