"""distributed_o2o: offline-to-online and policy-only RL fine-tuning on Ray.

Importing the package registers PORL, O2SAC, O2TD3 and O2PPO with Tune, so
`ray.tune.registry.get_trainable_cls("PORL")` works after `import distributed_o2o` alone.
Ray worker processes (the run's actors) skip it: it costs about a second of RLlib imports
and they never look a trainable up by name.
"""

__version__ = "0.1.0"


def _in_ray_worker() -> bool:
    from ray._private.worker import WORKER_MODE, global_worker

    return global_worker.mode == WORKER_MODE


if not _in_ray_worker():
    import distributed_o2o.rllib  # noqa: F401  (registers the algorithms with Tune)
