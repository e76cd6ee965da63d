import json

import numpy as np
import pytest
import torch

from distributed_o2o.algorithms.networks import CriticEnsemble, ValueNetwork
from distributed_o2o.algorithms.policies import FAMILIES, build_policy
from distributed_o2o.checkpoint import (DamagedState, load_checkpoint, load_policy, load_state, read_metadata, save_checkpoint,
                                       save_state)
from distributed_o2o.errors import UserError


def _policy(family, obs_dim=11, act_dim=3):
    torch.manual_seed(0)
    policy = build_policy({"family": family, "obs_dim": obs_dim, "act_dim": act_dim, "hidden": [32, 32]})
    policy.normalizer.set_stats(np.arange(obs_dim, dtype=np.float32), np.full(obs_dim, 2.0, np.float32))
    return policy


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_round_trip_each_family(tmp_path, family):
    policy = _policy(family)
    critic = CriticEnsemble(11, 3, num_critics=4, hidden=[16], layer_norm=True)
    save_checkpoint(tmp_path / "ck", {"policy": policy, "critic": critic, "value": ValueNetwork(11, [8])},
                    env_id="Hopper-v5", algo="test", config={"lr": 1e-3})
    loaded = load_checkpoint(tmp_path / "ck", env_id="Hopper-v5")
    obs = torch.randn(7, 11)
    assert loaded.policy.family == family
    torch.testing.assert_close(loaded.policy.mode(obs), policy.mode(obs))
    torch.testing.assert_close(loaded.modules["critic"](obs, torch.zeros(7, 3)), critic(obs, torch.zeros(7, 3)))
    meta = json.loads((tmp_path / "ck" / "metadata.json").read_text())
    assert meta["policy_family"] == family and meta["config"] == {"lr": 1e-3}
    assert meta["obs_norm"]["mean"][:3] == [0.0, 1.0, 2.0]
    assert not list((tmp_path / "ck").glob("*.pt")), "weights must be safetensors, never pickles"


def test_load_refuses_space_mismatch(tmp_path):
    save_checkpoint(tmp_path / "ck", {"policy": _policy("deterministic")}, env_id="Hopper-v5", algo="bc")
    with pytest.raises(UserError, match="checkpoint .* observation width 11 .* 'HalfCheetah-v5' has 17 and 6"):
        load_policy(tmp_path / "ck", env_id="HalfCheetah-v5")


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="no checkpoint at .*metadata.json is missing"):
        load_policy(tmp_path / "nothing")


def test_load_converts_family(tmp_path):
    policy = _policy("deterministic")
    save_checkpoint(tmp_path / "ck", {"policy": policy}, env_id=None, algo="td3bc")
    converted = load_policy(tmp_path / "ck", family="tanh_gaussian")
    obs = torch.randn(5, 11)
    assert converted.family == "tanh_gaussian"
    torch.testing.assert_close(converted.mode(obs), policy.mode(obs))
    assert set(read_metadata(tmp_path / "ck")["modules"]) == {"policy"}


def test_training_state_round_trip_keeps_optimiser(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    save_state(tmp_path / "s", {"opt": optimizer.state_dict(), "step": 3, "arr": np.arange(4), "pair": (1, 2.5)})
    state = load_state(tmp_path / "s")
    assert state["step"] == 3 and state["pair"] == (1, 2.5)
    np.testing.assert_array_equal(state["arr"], np.arange(4))
    restored = torch.optim.Adam(model.parameters(), lr=1e-2)
    restored.load_state_dict(state["opt"])
    torch.testing.assert_close(restored.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])


@pytest.mark.parametrize("damage", ["mixed", "truncated", "garbage index", "other save id"])
def test_a_damaged_or_mixed_training_state_is_refused(tmp_path, damage):
    first = save_state(tmp_path / "s", {"w": torch.zeros(3), "step": 1})
    save_state(tmp_path / "other", {"w": torch.ones(3), "step": 2})
    weights = tmp_path / "s.safetensors"
    if damage == "mixed":  # the weights of one save beside the index of another
        weights.write_bytes((tmp_path / "other.safetensors").read_bytes())
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:20])
    elif damage == "garbage index":
        (tmp_path / "s.json").write_bytes(b"\xff\x00garbage")
    with pytest.raises(DamagedState):
        load_state(tmp_path / "s", first if damage != "other save id" else "another-save")


def test_weights_that_cannot_be_written_raise_the_os_error_naming_the_file(tmp_path):
    """safetensors reports I/O failures as its own error; the run needs the OSError (an unwritable
    run directory is one line, naming the directory)."""
    blocked = tmp_path / "ck" / "policy.safetensors"
    blocked.mkdir(parents=True)  # a directory where the weights file goes
    with pytest.raises(OSError) as info:
        save_checkpoint(tmp_path / "ck", {"policy": FAMILIES["gaussian"](3, 1, [8])}, env_id="Pendulum-v1", algo="bc")
    assert info.value.filename == str(blocked) and info.value.strerror
