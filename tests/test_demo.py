"""The main job's pipeline end to end, shrunk: zoo data -> BC -> PORL -> table and curve."""

import json

import pytest

from distributed_o2o.cli.main import main
from distributed_o2o.checkpoint import load_policy
from distributed_o2o.config import DemoConfig
from distributed_o2o.data import load_dataset


def test_demo_pipeline_writes_every_artefact(tmp_path, capsys):
    out = tmp_path / "demo"
    shrunk = {"mode": "local", "dataset_steps": 600, "pretrain.steps": 50, "pretrain.hidden": "[16,16]",
              "finetune.online_steps": 600, "finetune.presample_steps": 200, "finetune.presample_utd": 1,
              "finetune.utd": 1, "finetune.num_critics": 2, "finetune.hidden": "[16,16]",
              "finetune.eval_every": 300, "finetune.eval_episodes": 2}
    argv = ["demo", "--out", str(out), "--quiet", *(arg for k, v in shrunk.items() for arg in ("--set", f"{k}={v}"))]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "initial" in printed and "final" in printed and "learning curve" in printed
    assert "zoo's medium policy" in printed
    dataset = load_dataset(str(out / "dataset.hdf5"), DemoConfig().env)
    assert len(dataset) == 600 and dataset.ref_min_score is not None and dataset.ref_max_score is not None
    assert load_policy(out / "bc", DemoConfig().env).family == "tanh_gaussian"
    assert (out / "curve.png").stat().st_size > 10_000
    summary = json.loads((out / "porl" / "summary.json").read_text())
    initial = summary["initial"]  # scored against the zoo's references
    assert initial["normalized_score"] == pytest.approx(
        100 * (initial["return_mean"] - dataset.ref_min_score) / (dataset.ref_max_score - dataset.ref_min_score))


def test_demo_refuses_unknown_fields(capsys):
    assert main(["demo", "--set", "finetune.utdd=3"]) == 2
    assert "unknown config key 'finetune.utdd'" in capsys.readouterr().err


def test_setting_one_field_of_a_demo_section_keeps_the_rest_of_its_embedded_settings(tmp_path):
    """`--set finetune.online_steps=N` (or a --config file naming one field) changes that field;
    the demo's other fine-tuning settings (its pre-sample, network sizes, constraint, validated
    deployment, threads) stay as embedded, not the PORL defaults."""
    from distributed_o2o.config import build_config, parse_overrides

    embedded = DemoConfig()
    changed = build_config(DemoConfig, {"pretrain": {"steps": 10}}, parse_overrides(["finetune.online_steps=5000"]))
    assert changed.finetune == embedded.finetune.model_copy(update={"online_steps": 5000})
    assert changed.pretrain == embedded.pretrain.model_copy(update={"steps": 10})
    assert embedded.finetune.validated_deployment and embedded.finetune.presample_steps == 2000  # not the defaults
