"""`o2o pretrain`: train an offline policy (and critic) on a dataset and write a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import typer

from distributed_o2o.config import PretrainConfig, build_config, parse_overrides, read_yaml
from distributed_o2o.durable import check_writable
from distributed_o2o.errors import UserError

ALGOS = get_args(PretrainConfig.model_fields["algo"].annotation)


def pretrain(
    algo: str = typer.Option(..., "--algo", help=f"Offline method: {', '.join(ALGOS)}."),
    dataset: str | None = typer.Option(None, "--dataset", help="d4rl:<file or name>, minari:<id or directory>, or an .hdf5 path (default: the config's)."),
    env: str | None = typer.Option(None, "--env", help="Env id the dataset is for (checks its widths; recorded in the checkpoint)."),
    steps: int | None = typer.Option(None, "--steps", help="Gradient steps (default: the config's)."),
    out: Path = typer.Option(..., "--out", help="Checkpoint directory to write."),
    seed: int | None = typer.Option(None, "--seed"),
    config_file: Path | None = typer.Option(None, "--config", help="YAML file of PretrainConfig fields."),
    sets: list[str] = typer.Option([], "--set", help="Override a config field: key=value (repeatable)."),
) -> None:
    """Pretrain a policy offline (BC, BC-det, TD3+BC, IQL or CQL)."""
    if algo not in ALGOS:
        raise UserError(f"unknown pretraining algorithm '{algo}': use one of {', '.join(ALGOS)}")
    explicit = {"algo": algo, "dataset": dataset, "env": env, "steps": steps, "seed": seed}
    config = build_config(PretrainConfig, read_yaml(config_file) if config_file else {}, parse_overrides(sets),
                          {key: value for key, value in explicit.items() if value is not None})
    if config.dataset is None:
        raise UserError("no dataset given: pass --dataset (or set `dataset` in the --config file)")
    check_writable(out, "the checkpoint")

    # Imported here so that `o2o --help` does not load torch.
    from distributed_o2o.algorithms.offline import run_pretraining
    from distributed_o2o.data import load_dataset

    data = load_dataset(config.dataset, config.env, config.allow_other_env_dataset)
    path = run_pretraining(config, data, out)
    typer.echo(f"wrote {config.algo} checkpoint ({config.steps} steps on {config.dataset}) to {path}")


def convert_rllib(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="RLlib Algorithm checkpoint (new API stack) or RLModule directory."),
    env: str = typer.Option(..., "--env", help="Env the policy acts in (its widths are checked)."),
    out: Path = typer.Option(..., "--out", help="Checkpoint directory to write."),
    module_id: str = typer.Option("default_policy", "--module-id", help="RLModule id inside the checkpoint."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow reading the checkpoint's pickles. RLlib "
                                      "stores an RLModule as Python pickles, and unpickling runs any code the file "
                                      "holds: only for checkpoints you made yourself or otherwise trust."),
) -> None:
    """Convert an RLlib BC / MARWIL / CQL / IQL / SAC policy into this project's format (a starting policy).

    RLlib's checkpoints are pickles, which can run code when read: the command refuses them
    unless --trust-pickle is given."""
    from distributed_o2o.rllib.convert import convert_rllib_policy

    check_writable(out, "the converted policy")
    path = convert_rllib_policy(checkpoint, env, out, module_id, trust_pickle)
    typer.echo(f"wrote the converted policy to {path}")


def register(app: typer.Typer) -> None:
    app.command("pretrain")(pretrain)
    app.command("convert-rllib")(convert_rllib)
