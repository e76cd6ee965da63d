"""The main job's pipeline end to end, shrunk: zoo data -> BC -> PORL -> table and curve."""

import json

import pytest

from distributed_o2o.cli.main import main
from distributed_o2o.checkpoint import load_policy
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
    dataset = load_dataset(str(out / "dataset.hdf5"), "Hopper-v5")
    assert len(dataset) == 600 and dataset.ref_min_score is not None and dataset.ref_max_score is not None
    assert load_policy(out / "bc", "Hopper-v5").family == "tanh_gaussian"
    assert (out / "curve.png").stat().st_size > 10_000
    summary = json.loads((out / "porl" / "summary.json").read_text())
    initial = summary["initial"]  # scored against the zoo's references
    assert initial["normalized_score"] == pytest.approx(
        100 * (initial["return_mean"] - dataset.ref_min_score) / (dataset.ref_max_score - dataset.ref_min_score))


def test_demo_refuses_unknown_fields(capsys):
    assert main(["demo", "--set", "finetune.utdd=3"]) == 2
    assert "unknown config key 'finetune.utdd'" in capsys.readouterr().err
