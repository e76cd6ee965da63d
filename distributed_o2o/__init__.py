"""distributed_o2o: offline-to-online and policy-only RL fine-tuning on Ray.

The Python API (each name is imported on first use, so `import distributed_o2o` loads neither
torch nor Ray):

    from distributed_o2o import finetune, pretrain, evaluate, load_policy, load_dataset, make_env

The RLlib/Tune front door is `import distributed_o2o.rllib`: it registers PORL, O2SAC, O2TD3
and O2PPO with Tune (docs/rllib.md).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Public name -> the module that defines it.
_API = {
    "finetune": "distributed_o2o.api",
    "resume": "distributed_o2o.api",
    "pretrain": "distributed_o2o.api",
    "evaluate": "distributed_o2o.api",
    "load_policy": "distributed_o2o.checkpoint",
    "load_dataset": "distributed_o2o.data",
    "make_env": "distributed_o2o.envs",
    "UserError": "distributed_o2o.errors",
}

__all__ = sorted(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'distributed_o2o' has no attribute '{name}'")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
