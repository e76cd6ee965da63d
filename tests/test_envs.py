import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest

from distributed_o2o.envs import MujocoWarning, check_spaces, env_spaces, make_env, resolve_env_id
from distributed_o2o.errors import UserError


class TwoActionEnv(gym.Env):
    """A user env with action bounds other than ±1, for the factory's rescaling."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Box(np.array([0.0, -4.0], np.float32), np.array([2.0, 4.0], np.float32))

    def __init__(self, scale: float = 1.0):
        self.scale = scale
        self.last_action = None

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.last_action = action
        return np.zeros(2, np.float32), float(self.scale), False, False, {}


def test_d4rl_names_map_to_v5():
    assert resolve_env_id("hopper-medium-v2") == "Hopper-v5"
    assert resolve_env_id("halfcheetah-medium-expert-v2") == "HalfCheetah-v5"
    assert resolve_env_id("walker2d-random-v2") == "Walker2d-v5"
    assert resolve_env_id("Pendulum-v1") == "Pendulum-v1"


def test_unknown_env_is_a_user_error():
    with pytest.raises(UserError, match="unknown env id 'nosuch-env'"):
        resolve_env_id("nosuch-env")


def test_actions_are_rescaled_to_unit_box():
    env = make_env("Pendulum-v1", seed=0)
    assert np.all(env.action_space.low == -1) and np.all(env.action_space.high == 1)
    env.reset(seed=0)
    env.step(np.array([1.0], np.float32))
    assert env.unwrapped.last_u == pytest.approx(2.0)


def test_user_env_class_with_kwargs_and_time_limit():
    env = make_env(f"{__name__}:TwoActionEnv", seed=1, env_kwargs={"scale": 3.0, "max_episode_steps": 2})
    env.reset()
    _, reward, _, truncated, _ = env.step(np.array([-1.0, 1.0], np.float32))
    assert reward == 3.0 and not truncated
    np.testing.assert_allclose(env.unwrapped.last_action, [0.0, 4.0])
    _, _, _, truncated, _ = env.step(np.zeros(2, np.float32))
    assert truncated


def test_bad_user_env_path():
    with pytest.raises(UserError, match="cannot import env class"):
        make_env("no_such_module_xyz:Env")


def test_space_check_names_both_widths():
    assert env_spaces("Hopper-v5").obs_dim == 11
    with pytest.raises(UserError, match="observation width 17 and action width 6.*has 11 and 3"):
        check_spaces("dataset 'x'", 17, 6, "Hopper-v5")


def test_mujoco_warnings_come_once_as_python_warnings_not_once_per_env(capfd):
    """MuJoCo 4 warns at every compile of Gymnasium's HalfCheetah model (`settotalmass` is
    deprecated); made three times, the terminal gets none of it and Python's warnings get it once."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for _ in range(3):
            make_env("HalfCheetah-v5").close()
    printed = capfd.readouterr()
    assert "settotalmass" not in printed.out + printed.err
    assert [("settotalmass" in str(w.message)) for w in caught if w.category is MujocoWarning] == [True]


def test_a_mujoco_warning_filtered_into_an_error_is_printed_not_fatal():
    """Raised through MuJoCo's C code, an exception aborts the process: with MujocoWarning made an
    error, the warning is printed and the env is made."""
    code = ("import warnings\nfrom distributed_o2o.envs import MujocoWarning, make_env\n"
            "warnings.simplefilter('error', MujocoWarning)\nmake_env('HalfCheetah-v5').close()\nprint('made')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "made", done.stderr[-500:]
    assert "MuJoCo warning: compiler attribute 'settotalmass' is deprecated" in done.stderr
