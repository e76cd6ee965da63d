"""distributed_o2o: offline-to-online and policy-only RL fine-tuning on Ray.

Importing the package registers PORL, O2SAC, O2TD3 and O2PPO with Tune, so
`ray.tune.registry.get_trainable_cls("PORL")` works after `import distributed_o2o` alone
(about a second of RLlib imports; see docs/rllib.md).
"""

__version__ = "0.1.0"

import distributed_o2o.rllib  # noqa: E402,F401  (registers the algorithms with Tune)
