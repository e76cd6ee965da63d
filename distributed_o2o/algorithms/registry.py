"""Algorithm names -> classes (imported lazily, so a CLI call loads only what it runs)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from distributed_o2o.algorithms.base import Algorithm

_CLASSES = {
    "sac": "distributed_o2o.algorithms.baselines:SAC",
    "naive": "distributed_o2o.algorithms.baselines:NaiveFinetune",
    "rlpd": "distributed_o2o.algorithms.baselines:RLPD",
    "wsrl": "distributed_o2o.algorithms.baselines:WSRL",
    "porl": "distributed_o2o.algorithms.porl:PORL",
    "o2sac": "distributed_o2o.algorithms.o2sac:O2SAC",
    "o2td3": "distributed_o2o.algorithms.o2td3:O2TD3",
    "o2ppo": "distributed_o2o.algorithms.o2ppo:O2PPO",
    "iql": "distributed_o2o.algorithms.iql_online:IQLFinetune",
}

ALGORITHM_NAMES = tuple(_CLASSES)


def algorithm_class(name: str) -> type[Algorithm]:
    module_name, _, class_name = _CLASSES[name].partition(":")
    return getattr(importlib.import_module(module_name), class_name)
