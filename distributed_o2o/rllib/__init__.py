"""RLlib/Tune front door: importing this registers "PORL", "O2SAC", "O2TD3", "O2PPO" with Tune."""

from __future__ import annotations

from ray.rllib.algorithms import registry as rllib_registry
from ray.tune.registry import register_trainable

from distributed_o2o.rllib.algorithms import (ALGORITHMS, O2PPO, O2SAC, O2TD3, PORL, O2OAlgorithm, O2OConfig, O2PPOConfig,
                                              O2SACConfig, O2TD3Config, PORLConfig)

for _name, _cls in ALGORITHMS.items():
    register_trainable(_name, _cls)
    # Also in RLlib's own table: Tune's registry forgets names when a Ray session ends, and a
    # lookup that misses re-registers everything in that table (as it does RLlib's built-ins).
    rllib_registry.ALGORITHMS[_name] = lambda cls=_cls: (cls, cls.get_default_config())

__all__ = ["ALGORITHMS", "O2OAlgorithm", "O2OConfig", "PORL", "PORLConfig", "O2SAC", "O2SACConfig", "O2TD3", "O2TD3Config",
           "O2PPO", "O2PPOConfig"]
