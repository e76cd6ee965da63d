from pathlib import Path

import pytest

from distributed_o2o.config import (FINETUNE_CONFIGS, DemoConfig, PretrainConfig, build_config, finetune_config, nested_runtime,
                                    parse_overrides)
from distributed_o2o.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    cfg = finetune_config(None, str(path))
    assert cfg.algo in FINETUNE_CONFIGS


def test_spec_defaults():
    porl = finetune_config("porl")
    assert (porl.presample_steps, porl.presample_utd, porl.utd, porl.num_critics, porl.num_min_critics) == (5000, 10, 4, 10, 2)
    assert porl.alpha_init == 0.01 and porl.presample_epsilon == 0.1 and not porl.keep_offline_data
    o2sac = finetune_config("o2sac")
    assert (o2sac.utd, o2sac.offline_ratio, o2sac.constraint.eps_start, o2sac.constraint.eps_end) == (10, 0.5, 0.125, 2.0)
    o2td3 = finetune_config("o2td3")
    assert (o2td3.constraint.eps_start, o2td3.constraint.eps_end, o2td3.policy_delay) == (0.0025, 0.04, 2)
    assert finetune_config("rlpd").utd == 20
    assert PretrainConfig().cql_alpha == 10.0


def test_overrides_nested_and_typed():
    cfg = finetune_config("o2sac", None, parse_overrides(["constraint.eps_end=0.5", "utd=3", "hidden=[64, 64]"]))
    assert cfg.constraint.eps_end == 0.5 and cfg.constraint.eps_start == 0.125
    assert cfg.utd == 3 and cfg.hidden == [64, 64]


@pytest.mark.parametrize("override, message", [
    ("utdd=2", "unknown config key 'utdd'"),
    ("utd=abc", "'utd'"),
    ("constraint.epsilon=1", "unknown config key 'constraint.epsilon'"),
])
def test_bad_overrides_are_one_line_errors(override, message):
    with pytest.raises(UserError, match=message) as info:
        finetune_config("o2sac", None, parse_overrides([override]))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("overrides, message", [
    (["gamma=-3"], "'gamma': Input should be greater than 0"),
    (["gamma=1.5"], "'gamma': Input should be less than or equal to 1"),
    (["tau=7"], "'tau': Input should be less than or equal to 1"),
    (["utd=true"], "'utd': .*expects a number, not true/false"),
    (["constraint.eps_end=false"], "'constraint.eps_end': .*expects a number"),
    (["autotune_alpha=1"], "'autotune_alpha': .*expects true or false, not 1"),
    (["num_min_critics=5"], r"num_min_critics \(5\) exceeds num_critics \(2\)"),
    (["hidden=[0]"], "'hidden.0': Input should be greater than 0"),
    (["hidden=[]"], "'hidden': List should have at least 1 item"),
    (["actor_lr=0"], "'actor_lr': Input should be greater than 0"),
    (["utd=0"], "'utd': Input should be greater than 0"),  # O2SAC's own default keeps SACConfig's bound
    (["hidden=[32,32"], r"--set hidden=\[32,32: the value is not valid YAML"),
    (["eval_episodes=3", "eval_episodes.x=1"], "'eval_episodes' is already set to a value, so it cannot hold keys"),
    (["eval_episodes.x=1"], "'eval_episodes': Input should be a valid integer"),
])
def test_out_of_range_or_malformed_values_are_one_line_errors(overrides, message):
    with pytest.raises(UserError, match=message) as info:
        finetune_config("o2sac", None, parse_overrides(overrides))
    assert "\n" not in str(info.value)


def test_pretrain_ranges_are_checked_too():
    for fields in ({"hidden": [0]}, {"gamma": 0}, {"lr": -1}, {"normalize_obs": 0}, {"steps": True}):
        with pytest.raises(UserError):
            build_config(PretrainConfig, fields)


def test_yaml_for_another_algo_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("algo: porl\n")
    with pytest.raises(UserError, match="is for algo 'porl'"):
        finetune_config("o2sac", str(path))


def test_unknown_key_in_yaml_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("algo: porl\npresample_stepz: 3\n")
    with pytest.raises(UserError, match="presample_stepz"):
        finetune_config(None, str(path))


def test_set_needs_key_value():
    with pytest.raises(UserError, match="key=value"):
        parse_overrides(["utd"])


def test_pretrain_config_rejects_unknown():
    with pytest.raises(UserError, match="unknown config key 'foo'"):
        build_config(PretrainConfig, {"foo": 1})


def test_stage_cache_key_leaves_out_runtime_and_evaluation_fields_only():
    from distributed_o2o.runtime.run_dir import RunDir

    config = finetune_config("o2sac").model_dump()
    key = RunDir.stage_key(config)
    runtime = {**config["runtime"], "num_rollout_workers": 8, "envs_per_worker": 4, "learner_backend": "eager",
               "device": "cpu", "learner_threads": 2}
    elsewhere = {"runtime": runtime, "online_steps": 5, "eval_every": 7, "eval_episodes": 3, "log_every": 9}
    assert RunDir.stage_key({**config, **elsewhere}) == key
    assert RunDir.stage_key({**config, "align_steps": 1}) != key
    # TF32 (and the compiled, graphed kernels) change a GPU's numbers: they stay in the key.
    assert RunDir.stage_key({**config, "runtime": {**config["runtime"], "graph_tf32": False}}) != key
    # So does graph_autotune, but only when set: a stage cached before the field existed keeps its key.
    assert RunDir.stage_key({**config, "runtime": {**config["runtime"], "graph_autotune": True}}) != key
    before_the_field = {**config, "runtime": {k: v for k, v in config["runtime"].items() if k != "graph_autotune"}}
    assert RunDir.stage_key(before_the_field) == key


@pytest.mark.parametrize("algo", sorted(FINETUNE_CONFIGS))
def test_stage_cache_key_is_the_one_the_flat_config_had(algo):
    """A stage cached before the runtime section (runtime fields at the top level) is still found:
    the key is the one the earlier rule gave (the flat config less these fields, hashed alike)."""
    import hashlib
    import json

    from distributed_o2o.runtime.run_dir import RunDir

    ignored_before = {"num_rollout_workers", "envs_per_worker", "replay_shards", "min_replay_size",
                      "samples_per_insert_tolerance", "broadcast_every", "learner_backend", "learner_threads", "learner_gpus",
                      "actor_cpus", "device", "online_steps", "eval_every", "eval_episodes", "log_every"}
    added_since = {"graph_autotune"}  # at its default: the earlier configs had no such field
    config = finetune_config(algo, None, {"env": "Pendulum-v1", "runtime": {"graph_tf32": False, "num_rollout_workers": 3}})
    dump = config.model_dump()
    flat = {**{k: v for k, v in dump.items() if k != "runtime"}, **dump["runtime"]}
    relevant = {k: v for k, v in flat.items() if k not in ignored_before | added_since}
    before = hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert RunDir.stage_key(dump) == before


@pytest.mark.parametrize("sets, file_text, message", [
    (["num_rollout_workers=8"], "", "invalid SACConfig: `num_rollout_workers` is now `runtime.num_rollout_workers`: write it "
                                    "under a `runtime:` mapping (--set runtime.num_rollout_workers=...)"),
    ([], "algo: sac\nnum_envs: 2\nlearner_threads: 2\n", "`learner_threads` is now `runtime.learner_threads`, `num_envs` is "
                                                          "now `runtime.num_envs`: write them under a `runtime:` mapping"),
])
def test_a_flat_runtime_key_is_named_with_its_new_place(tmp_path, sets, file_text, message):
    file = tmp_path / "c.yaml"
    file.write_text(file_text)
    with pytest.raises(UserError) as err:
        finetune_config("sac", str(file) if file_text else None, sets=sets)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_flat_runtime_key_inside_another_config_names_where_it_is():
    with pytest.raises(UserError, match=r"`finetune.device` is now `finetune.runtime.device`: .*--set finetune.runtime.device="):
        build_config(DemoConfig, {"finetune": {"device": "cpu"}})
    assert build_config(PretrainConfig, {"device": "cpu", "learner_backend": "eager"}).device == "cpu"  # flat there


@pytest.mark.parametrize("sets", [["runtime.min_replay_size=100"], ["min_replay_size=100"]])
def test_the_removed_second_update_gate_is_named_with_the_one_gate(sets):
    with pytest.raises(UserError) as err:
        finetune_config("sac", None, sets=sets)
    assert "min_replay_size' is removed: updates start at `learning_starts`" in str(err.value) and "\n" not in str(err.value)


def test_a_saved_config_with_the_removed_gate_at_its_no_op_value_still_loads():
    """Runs saved before `runtime.min_replay_size` was removed wrote it as 1 (nothing gated):
    resuming them reads the config without it; another value is refused, naming the gate."""
    saved = finetune_config("sac", None, {"env": "Pendulum-v1"}).model_dump()
    nested = {**saved, "runtime": {**saved["runtime"], "min_replay_size": 1}}
    flat = {**{k: v for k, v in saved.items() if k != "runtime"}, **saved["runtime"], "min_replay_size": 1}
    for old in (nested, flat):
        assert finetune_config("sac", None, nested_runtime(old)).model_dump() == saved
    with pytest.raises(UserError, match="learning_starts"):
        finetune_config("sac", None, nested_runtime({**saved, "runtime": {"min_replay_size": 500}}))


def test_the_runtime_section_is_read_from_a_file_and_set_items(tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text("algo: sac\nruntime:\n  num_rollout_workers: 4\n  num_envs: 3\n")
    config = finetune_config("sac", str(file), sets=["runtime.replay_shards=2"])
    assert (config.runtime.num_rollout_workers, config.runtime.envs_per_worker, config.runtime.replay_shards) == (4, 3, 2)
