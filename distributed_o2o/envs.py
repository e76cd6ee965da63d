"""The one env factory of the project.

Accepted ids: any registered Gymnasium id (`Hopper-v5`), a D4RL dataset name
(`hopper-medium-v2` -> `Hopper-v5`), or `package.module:ClassName` for a user's own
`gymnasium.Env` subclass (constructor kwargs come from the config's `env_kwargs`).

Every env made here acts in [-1, 1]^d: Box action spaces with other bounds are rescaled,
so policies, datasets and replay all share one action convention.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from distributed_o2o.errors import UserError

# D4RL dataset prefixes and the Gymnasium v5 env with the same observation/action layout.
D4RL_ENV_PREFIXES = {
    "hopper": "Hopper-v5",
    "halfcheetah": "HalfCheetah-v5",
    "walker2d": "Walker2d-v5",
    "ant": "Ant-v5",
}


def resolve_env_id(name: str) -> str:
    """Map a user-facing env name to the id `make_env` understands."""
    if ":" in name:
        return name
    if name in gym.registry:
        return name
    prefix = name.split("-", 1)[0].lower()
    if prefix in D4RL_ENV_PREFIXES and "-" in name:
        return D4RL_ENV_PREFIXES[prefix]
    raise UserError(
        f"unknown env id '{name}': use a registered Gymnasium id (e.g. Hopper-v5), "
        "a D4RL dataset name (e.g. hopper-medium-v2) or 'package.module:ClassName'"
    )


def _env_class(path: str) -> type[gym.Env]:
    module_name, _, class_name = path.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
        if missing and not f"{module_name}.".startswith(f"{missing}."):  # the module is there, a dependency of it is not
            raise UserError(f"the env module '{module_name}' needs '{missing}', which is not installed: install it "
                            "in this environment") from None
        raise UserError(f"cannot import env class '{path}' ({exc}): check the module path and class name") from None
    except Exception as exc:  # the user's module fails while it is imported (SyntaxError, ...)
        raise UserError(f"importing the env module '{module_name}' failed ({type(exc).__name__}: {exc}): fix the module") from None
    if not (isinstance(cls, type) and issubclass(cls, gym.Env)):
        raise UserError(f"'{path}' is not a gymnasium.Env subclass")
    return cls


class MujocoWarning(UserWarning):
    """A warning from MuJoCo's compiler or simulator (`_route_mujoco_warnings`)."""


def _route_mujoco_warnings() -> None:
    """MuJoCo prints its warnings straight to the terminal, once per model compiled: with MuJoCo 4,
    Gymnasium's own HalfCheetah model draws a deprecation warning at every env made (40 lines per
    evaluation in a Ray run). Routed into Python's warnings, a repeat is shown once per process and
    can be filtered (-W, PYTHONWARNINGS). A handler someone else installed is left alone."""
    try:
        import mujoco
    except ImportError:
        return
    if mujoco.get_mju_user_warning() is None:
        mujoco.set_mju_user_warning(_warn_from_mujoco)


def _warn_from_mujoco(message: str) -> None:
    try:
        warnings.warn(message.strip(), MujocoWarning, stacklevel=2)
    except Exception:  # a filter that turns it into an error: raised through MuJoCo's C code, it aborts the process
        print(f"MuJoCo warning: {message.strip()}", file=sys.stderr)


def make_env(name: str, seed: int | None = None, env_kwargs: dict[str, Any] | None = None) -> gym.Env:
    """Make one env with actions in [-1, 1]; seeds its action space and first reset."""
    env_id = resolve_env_id(name)
    _route_mujoco_warnings()
    kwargs = dict(env_kwargs or {})
    # `max_episode_steps` is ours (a time limit) for a user's class, the rest goes to its constructor.
    max_steps = kwargs.pop("max_episode_steps", None) if ":" in env_id else None
    cls = _env_class(env_id) if ":" in env_id else None
    try:
        env = cls(**kwargs) if cls is not None else gym.make(env_id, **kwargs)
    except UserError:
        raise
    except Exception as exc:  # a constructor that raises, an unknown env_kwargs key, a missing dependency
        problem = (str(exc).strip().splitlines() or [""])[0]
        raise UserError(f"env '{name}' could not be created ({type(exc).__name__}: {problem}): fix the env, its env_kwargs "
                        "or install what it needs") from None
    if max_steps:
        env = gym.wrappers.TimeLimit(env, max_episode_steps=int(max_steps))
    if not isinstance(env.action_space, gym.spaces.Box):
        raise UserError(f"env '{name}' has a {type(env.action_space).__name__} action space: only continuous (Box) actions are supported")
    if not (np.all(env.action_space.low == -1.0) and np.all(env.action_space.high == 1.0)):
        ones = np.ones(env.action_space.shape, dtype=np.float32)
        env = gym.wrappers.RescaleAction(env, min_action=-ones, max_action=ones)
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


def make_vector_env(name: str, num_envs: int, env_kwargs: dict[str, Any] | None = None) -> gym.vector.SyncVectorEnv:
    """Step `num_envs` copies in one process, unseeded: the caller seeds them with its first
    `reset(seed=[...])`.

    SAME_STEP autoreset: when an episode ends, the returned observation is already the next
    episode's first one and the true final observation is in `info["final_obs"]`.
    """
    return gym.vector.SyncVectorEnv(
        [lambda i=i: make_env(name, None, env_kwargs) for i in range(num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )


@dataclass(frozen=True)
class EnvSpaces:
    """Observation and action widths of an env (actions always in [-1, 1])."""

    obs_dim: int
    act_dim: int


def env_spaces(name: str, env_kwargs: dict[str, Any] | None = None) -> EnvSpaces:
    env = make_env(name, env_kwargs=env_kwargs)
    try:
        if len(env.observation_space.shape or ()) != 1:
            raise UserError(f"env '{name}' has observation shape {env.observation_space.shape}: only flat Box observations are supported")
        return EnvSpaces(int(env.observation_space.shape[0]), int(env.action_space.shape[0]))
    finally:
        env.close()


def check_spaces(what: str, obs_dim: int, act_dim: int, name: str, env_kwargs: dict[str, Any] | None = None) -> EnvSpaces:
    """Refuse `what` (a dataset or checkpoint) whose widths differ from the env's."""
    spaces = env_spaces(name, env_kwargs)
    if (obs_dim, act_dim) != (spaces.obs_dim, spaces.act_dim):
        raise UserError(
            f"{what} has observation width {obs_dim} and action width {act_dim}, but env '{name}' "
            f"has {spaces.obs_dim} and {spaces.act_dim}: pass the env it was made for (--env)"
        )
    return spaces
