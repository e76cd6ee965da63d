"""RLlib `AlgorithmConfig` / `Algorithm` classes over this project's runtime.

One implementation, two front doors: each `train()` iteration raises the run's `online_steps`
by `iteration_env_steps` and continues the run through `run_finetune` / `resume_finetune`
(`.training(mode="local")`, the default: inside the Algorithm's process; `mode="ray"`: as
actors on the Ray cluster the Algorithm runs in), so an RLlib or Tune user gets the same
learner, replay, rollouts, evaluation and resume state as `o2o finetune`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig, NotProvided
from ray.tune.execution.placement_groups import PlacementGroupFactory
from ray.tune.result import TRAINING_ITERATION

from distributed_o2o.config import FinetuneConfig, finetune_config, merge_layers
from distributed_o2o.errors import UserError
from distributed_o2o.runtime.finetune import resume_finetune, run_finetune
from distributed_o2o.runtime.run_dir import RunDir

# Keys RLlib's own dict round trip (`to_dict()` -> `update_from_dict()`, as Tune does) hands
# back to `training()`; they belong to RLlib's model stack and the runtime ignores them.
_RLLIB_TRAINING_KEYS = ("model", "optimizer", "replay_buffer_config")


class O2OConfig(AlgorithmConfig):
    """Builder-style config; `.training(**fields)` takes this project's fields for `ALGO`."""

    ALGO = ""  # the project's algorithm name (FINETUNE_CONFIGS key)

    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class)
        self.o2o_fields: dict[str, Any] = {}
        self.iteration_env_steps = 1000
        self.o2o_mode = "local"

    def training(self, *, iteration_env_steps: int | None = NotProvided, mode: str | None = NotProvided,
                 **fields) -> O2OConfig:
        """`mode`: "local" (default; the runtime in the Algorithm's process) or "ray" (its rollout,
        replay, learner and evaluator actors on the Ray cluster the Algorithm runs in)."""
        rllib = {k: fields.pop(k) for k in _RLLIB_TRAINING_KEYS if k in fields}
        if rllib:
            super().training(**rllib)
        if iteration_env_steps is not NotProvided:
            if int(iteration_env_steps) <= 0:
                raise UserError(f"iteration_env_steps must be positive, got {iteration_env_steps}")
            self.iteration_env_steps = int(iteration_env_steps)
        if mode is not NotProvided:
            if mode not in ("local", "ray"):
                raise UserError(f"unknown mode '{mode}': use 'local' or 'ray'")
            self.o2o_mode = mode
        merged = {**self.o2o_fields, **fields}
        # Unknown keys and bad values fail here; a Tune search space is checked once resolved.
        finetune_config(self.ALGO, None, {k: v for k, v in merged.items() if not _is_search_space(v)})
        self.o2o_fields = merged
        return self

    def finetune_config(self, online_steps: int) -> FinetuneConfig:
        """The project config of this RLlib config, run up to `online_steps` env steps."""
        overrides: dict[str, Any] = {**self.o2o_fields, "online_steps": online_steps}
        if isinstance(self.env, str):
            overrides["env"] = self.env
        elif self.env is not None:
            raise UserError("the o2o algorithms take a registered Gymnasium env id, e.g. .environment('Pendulum-v1')")
        if self.env_config:
            overrides["env_kwargs"] = dict(self.env_config)
        # RLlib's 0 env runners means sampling in the main process: one rollout worker here.
        runtime = {"num_rollout_workers": max(1, self.num_env_runners), "envs_per_worker": self.num_envs_per_env_runner}
        if self.seed is not None:
            overrides["seed"] = self.seed
        if self.num_gpus_per_learner > 0:
            runtime["device"] = "cuda"
        overrides["runtime"] = merge_layers(overrides.get("runtime", {}), runtime)
        return finetune_config(self.ALGO, None, overrides)


class O2OAlgorithm(Algorithm):
    """Runs the project's runtime in this process; no RLlib EnvRunners, Learners or RLModules."""

    config_class = O2OConfig

    @classmethod
    def get_default_config(cls) -> O2OConfig:
        return cls.config_class(algo_class=cls)

    @classmethod
    def default_resource_request(cls, config) -> PlacementGroupFactory:
        config = cls.get_default_config().update_from_dict(config) if isinstance(config, dict) else config
        if config.o2o_mode == "ray":
            # The trial itself (the driver), then what its actors ask for (runtime/ray_cluster.py's
            # plan: at most one CPU for the learner and each rollout actor; replay and evaluator none).
            workers = max(1, config.num_env_runners)
            return PlacementGroupFactory([{"CPU": 1}, {"CPU": 1, "GPU": config.num_gpus_per_learner}] + [{"CPU": 1}] * workers)
        return PlacementGroupFactory([{"CPU": 1, "GPU": config.num_gpus_per_learner}])

    def setup(self, config: O2OConfig) -> None:
        self.callbacks = []
        self._set_up_metrics()  # the timers Algorithm's own save/load/log paths report to
        self.run_path = Path(self.logdir) / "o2o_run"
        self.env_steps = 0
        self.updates = 0
        self.config.finetune_config(self.config.iteration_env_steps)  # fail at build, not at the first train()

    def get_checkpointable_components(self) -> list:
        return []

    def step(self) -> dict[str, Any]:
        target = self.env_steps + self.config.iteration_env_steps
        config = self.config.finetune_config(target)
        run_dir = RunDir(self.run_path)
        if not run_dir.config_file.exists():
            summary = run_finetune(config, self.run_path, mode=self.config.o2o_mode, progress=False)
        else:  # the run continues with its saved config; only the horizon (and the runtime fields) move
            summary = resume_finetune(self.run_path, mode=self.config.o2o_mode, progress=False,
                                      changes={"runtime": config.runtime.model_dump(), "online_steps": target})
        self.env_steps, self.updates = summary["env_steps"], summary["updates"]
        return _result(summary)

    def get_state(self, components=None, *, not_components=None, **kwargs) -> dict[str, Any]:
        return {"env_steps": self.env_steps, "updates": self.updates, TRAINING_ITERATION: self.training_iteration}

    def set_state(self, state: dict[str, Any]) -> None:
        self.env_steps, self.updates = state["env_steps"], state["updates"]
        self._iteration = state.get(TRAINING_ITERATION, 0)  # Trainable's counter, as RLlib's own algorithms restore it

    def save_to_path(self, path=None, *, state=None, filesystem=None, use_msgpack=False) -> str:
        """RLlib's checkpoint files plus a copy of the run directory (resume state, replay)."""
        path = super().save_to_path(path, state=state, filesystem=filesystem, use_msgpack=use_msgpack)
        if self.run_path.exists():
            shutil.copytree(self.run_path, Path(path) / "o2o_run", dirs_exist_ok=True)
        return path

    def restore_from_path(self, path, *args, **kwargs) -> None:
        # Skip Algorithm's override: it syncs RLlib EnvRunners, which this class has none of.
        super(Algorithm, self).restore_from_path(path, *args, **kwargs)
        saved = Path(path) / "o2o_run"
        if saved.exists():
            shutil.rmtree(self.run_path, ignore_errors=True)
            shutil.copytree(saved, self.run_path)

    def cleanup(self) -> None:
        pass


# Algorithm methods that need RLlib EnvRunners, Learners or RLModules, which these classes have
# none of (the policy lives in the run directory's checkpoints).
UNSUPPORTED_METHODS = ("compute_single_action", "compute_actions", "evaluate", "evaluate_offline", "get_module",
                       "get_policy", "get_weights", "set_weights")


def _unsupported(name: str):
    def method(self, *args, **kwargs):
        raise UserError(f"{type(self).__name__}.{name}() is not supported: the policy is not an RLlib module but the run's "
                        f"checkpoints in {self.run_path / 'checkpoints'}; evaluate one with `o2o eval --policy "
                        "<checkpoint>` or act with `distributed_o2o.load_policy(<checkpoint>).act(obs)`")

    method.__name__ = name
    return method


for _name in UNSUPPORTED_METHODS:
    setattr(O2OAlgorithm, _name, _unsupported(_name))


def _is_search_space(value: Any) -> bool:
    """A Tune search space (`tune.grid_search(...)`, `tune.uniform(...)`...) that Tune resolves per trial."""
    from ray.tune.search.sample import Domain

    return isinstance(value, Domain) or (isinstance(value, dict) and set(value) == {"grid_search"})


def _result(summary: dict[str, Any]) -> dict[str, Any]:
    """RLlib's result layout; the episode return is the latest evaluation's (deterministic policy)."""
    final = summary["final"]
    return {
        "env_runners": {"episode_return_mean": final["return_mean"], "episode_return_std": final["return_std"],
                        "num_episodes": final["episodes"], "num_env_steps_sampled_lifetime": summary["env_steps"]},
        "normalized_score": final["normalized_score"],
        "num_env_steps_sampled_lifetime": summary["env_steps"],
        "num_updates_lifetime": summary["updates"],
        "num_eval_env_steps_lifetime": summary["eval_env_steps"],
        "o2o_run_dir": summary["run_dir"],
    }


def _pair(name: str, algo: str) -> tuple[type[O2OConfig], type[O2OAlgorithm]]:
    config_cls = type(f"{name}Config", (O2OConfig,), {"ALGO": algo, "__module__": __name__,
                                                      "__doc__": f"RLlib config of the project's {algo}."})
    algo_cls = type(name, (O2OAlgorithm,), {"config_class": config_cls, "__module__": __name__,
                                            "__doc__": f"The project's {algo} as an RLlib Algorithm."})
    return config_cls, algo_cls


PORLConfig, PORL = _pair("PORL", "porl")
O2SACConfig, O2SAC = _pair("O2SAC", "o2sac")
O2TD3Config, O2TD3 = _pair("O2TD3", "o2td3")
O2PPOConfig, O2PPO = _pair("O2PPO", "o2ppo")

ALGORITHMS: dict[str, type[O2OAlgorithm]] = {"PORL": PORL, "O2SAC": O2SAC, "O2TD3": O2TD3, "O2PPO": O2PPO}
