"""`o2o config show ALGO`: every field of an algorithm's config, its value and what it does.

The field descriptions in `distributed_o2o/config.py` are the help (the CleanRL habit); this
command lays them out by group, with the values a `--config` file and `--set` items give,
layered exactly as `o2o finetune` (or `o2o pretrain`) layers them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional, get_args

import typer
from pydantic import BaseModel

from distributed_o2o.cli import command_group
from distributed_o2o.config import (FINETUNE_CONFIGS, LearnerBackendFields, StrictModel, finetune_config,
                                    parse_overrides, pretrain_config)
from distributed_o2o.errors import UserError

app = command_group()

PRETRAIN = "pretrain"  # the offline pretrainers' config (its `algo` field picks bc, td3bc, iql...)
CHOICES = (*sorted(FINETUNE_CONFIGS), PRETRAIN)

# Fields shown under a group other than "algorithm" (a nested block, e.g. `constraint`, gets its own).
GROUPS: dict[str, frozenset[str]] = {
    "run": frozenset({"algo", "env", "env_kwargs", "policy", "dataset", "allow_other_env_dataset", "seed", "online_steps",
                      "steps"}),
    "evaluation and logging": frozenset({"eval_every", "eval_episodes", "ref_min_score", "ref_max_score", "log_every",
                                         "resume_every"}),
    "runtime": frozenset({"device", "threads"}),  # a pretraining's; a fine-tuning has a `runtime` block
    "learner backend (GPU)": frozenset(LearnerBackendFields.model_fields),
}
ORDER = ("run", "algorithm", "evaluation and logging", "runtime", "learner backend (GPU)")


@dataclass
class Row:
    name: str
    value: Any
    default: Any
    description: str


def _block_class(annotation: Any) -> type[BaseModel] | None:
    """The model class of a nested block field (`ConstraintConfig | None` -> ConstraintConfig)."""
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def sections(config: StrictModel) -> dict[str, list[Row]]:
    """The config's fields by group (ORDER first, then one group per nested block)."""
    grouped: dict[str, list[Row]] = {title: [] for title in ORDER}
    values = config.model_dump()
    for name, field in type(config).model_fields.items():
        default = field.get_default(call_default_factory=True)
        block = _block_class(field.annotation)
        if block is None:
            title = next((t for t, names in GROUPS.items() if name in names), "algorithm")
            grouped[title].append(Row(name, values[name], default, field.description or ""))
            continue
        # A block gets its own group, titled with its description; an off block (None) lists
        # the values `--set block={}` would give it.
        default_block = default.model_dump() if default is not None else block().model_dump()
        title = f"{name}: {field.description}"
        if values[name] is None:
            title += f" [off: --set {name}={{}} turns it on with the values below]"
        grouped[title] = [Row(f"{name}.{sub}", (values[name] or default_block)[sub], default_block[sub],
                              sub_field.description or "") for sub, sub_field in block.model_fields.items()]
    return {title: rows for title, rows in grouped.items() if rows}


def _show(value: Any) -> str:
    """A value as one would write it in YAML or `--set` (JSON is YAML)."""
    return json.dumps(value, ensure_ascii=False)


def render(config: StrictModel, label: str) -> str:
    doc = (type(config).__doc__ or "").strip().splitlines()[0]
    lines = [f"{label} ({type(config).__name__}): {doc}",
             "Values: defaults < --config FILE < --set KEY=VALUE; (default ...) marks a value that differs."]
    for title, rows in sections(config).items():
        cells = [f"{row.name} = {_show(row.value)}" + (f" (default {_show(row.default)})" if row.value != row.default else "")
                 for row in rows]
        width = min(max(map(len, cells)), 44)
        lines += ["", title] + [f"  {cell:<{width}}  {row.description}" for cell, row in zip(cells, rows)]
    return "\n".join(lines)


@app.command()
def show(
    algo: str = typer.Argument(..., metavar="ALGO", help=f"One of: {', '.join(CHOICES)}."),
    config: Optional[str] = typer.Option(None, "--config", metavar="FILE", help="YAML config file to layer over the defaults."),
    set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="Override a config field (repeatable; nested: "
                                                                          "constraint.eps_end=0.5)."),
) -> None:
    """Print every field of ALGO's config: its value, its default where different, what it does."""
    if algo not in CHOICES:
        raise UserError(f"unknown algorithm '{algo}': use one of {', '.join(CHOICES)}")
    if algo == PRETRAIN:
        resolved: StrictModel = pretrain_config(config, parse_overrides(set_))
    else:
        resolved = finetune_config(algo, config, sets=set_)
    typer.echo(render(resolved, algo))
