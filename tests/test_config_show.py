"""Every config field is described, and `o2o config show ALGO` prints the descriptions with the
values the defaults, a --config file and --set items give."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any, get_args

import pytest
from pydantic import BaseModel

from distributed_o2o.cli.main import main
from distributed_o2o.config import FINETUNE_CONFIGS, DemoConfig, PretrainConfig, RuntimeConfig
from distributed_o2o.sweep.spec import SweepSpec


def _models(annotation: Any) -> list[type[BaseModel]]:
    """Model classes inside a field's type (`ConstraintConfig | None`, `dict[str, DatasetRecipe]`)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in get_args(annotation) for model in _models(arg)]


def _all_models() -> set[type[BaseModel]]:
    found: set[type[BaseModel]] = set()
    todo = [*FINETUNE_CONFIGS.values(), PretrainConfig, DemoConfig, SweepSpec]
    while todo:
        model = todo.pop()
        if model not in found:
            found.add(model)
            todo += [m for field in model.model_fields.values() for m in _models(field.annotation)]
    return found


ALL_MODELS = sorted(_all_models(), key=lambda m: m.__name__)


@pytest.mark.parametrize("model", ALL_MODELS, ids=lambda m: m.__name__)
def test_every_config_field_has_a_description(model):
    undescribed = [name for name, field in model.model_fields.items() if not (field.description or "").strip()]
    assert not undescribed, f"{model.__name__}: fields without a description: {undescribed}"


@pytest.mark.parametrize("model", ALL_MODELS, ids=lambda m: m.__name__)
def test_a_changed_default_keeps_the_fields_bounds(model):
    """A subclass that changes a default (PORL's utd) must not drop the base field's bounds (utd > 0)."""
    for name, field in model.model_fields.items():
        for base in model.__mro__[1:]:
            if name in getattr(base, "model_fields", {}):
                assert field.metadata == base.model_fields[name].metadata, f"{model.__name__}.{name} lost {base.__name__}'s bounds"


def test_the_walk_covers_the_nested_and_sweep_models():
    names = {m.__name__ for m in ALL_MODELS}
    assert {"ConstraintConfig", "O2TD3ConstraintConfig", "DatasetRecipe", "PolicyRecipe", "MethodSpec", "Resources"} <= names


def test_show_prints_values_defaults_and_descriptions_layered_like_finetune(tmp_path, capsys):
    config = tmp_path / "o2sac.yaml"
    config.write_text("algo: o2sac\nutd: 2\neval_every: 2000\n")
    assert main(["config", "show", "o2sac", "--config", str(config), "--set", "utd=3",
                 "--set", "constraint.eps_end=0.5"]) == 0
    out = capsys.readouterr().out
    lines = {line.split(" = ")[0].strip(): line for line in out.splitlines() if " = " in line}
    assert "utd = 3 (default 10)" in lines["utd"] and "gradient updates per env step" in lines["utd"]  # --set beats the file
    assert "eval_every = 2000 (default 5000)" in lines["eval_every"]  # the file beats the default
    assert "constraint.eps_end = 0.5 (default 2.0)" in lines["constraint.eps_end"]
    assert "(default" not in lines["gamma"] and "discount factor γ" in lines["gamma"]
    assert "lower clamp of log π_ref(a|s)" in lines["log_ref_min"]
    # every field of the schema is shown, nested ones by dotted name
    shown = set(lines)
    assert {*FINETUNE_CONFIGS["o2sac"].model_fields} - {"constraint", "runtime"} <= shown
    assert {f"runtime.{name}" for name in RuntimeConfig.model_fields} <= shown
    titles = [line for line in out.splitlines() if line and not line.startswith(" ")]
    assert "evaluation and logging" in titles and any(t.startswith("runtime: how the run executes") for t in titles)


def test_show_lists_an_off_block_with_the_values_it_would_take(capsys):
    assert main(["config", "show", "porl"]) == 0
    out = capsys.readouterr().out
    assert "--set constraint={} turns it on" in out and "constraint.lambda_init = 1.0" in out


def test_show_pretrain(capsys):
    assert main(["config", "show", "pretrain", "--set", "algo=cql"]) == 0
    out = capsys.readouterr().out
    assert 'algo = "cql" (default "bc")' in out and "CQL: weight of the conservative penalty" in out


def test_show_unknown_algo_is_one_line_naming_the_choices(capsys):
    assert main(["config", "show", "sacc"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown algorithm 'sacc'" in err
    assert all(name in err for name in (*FINETUNE_CONFIGS, "pretrain"))


def test_show_loads_no_heavy_library():
    code = ("import sys, json\nfrom distributed_o2o.cli.main import main\nassert main(['config', 'show', 'sac']) == 0\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert not set(json.loads(out.splitlines()[-1])) & {"torch", "ray", "gymnasium", "h5py", "numpy"}
