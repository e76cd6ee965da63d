"""`o2o pretrain` (train an offline policy and critic on a dataset) and `o2o convert-rllib`."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import typer

from distributed_o2o.config import PretrainConfig, parse_overrides
from distributed_o2o.durable import check_writable
from distributed_o2o.errors import UserError

ALGOS = get_args(PretrainConfig.model_fields["algo"].annotation)


def pretrain(
    algo: str = typer.Option(..., "--algo", metavar="ALGO", help=f"Offline method: {', '.join(ALGOS)}."),
    dataset: str | None = typer.Option(None, "--dataset", metavar="SPEC",
                                       help="d4rl:<file or name>, minari:<id or directory>, or an .hdf5 path "
                                            "(default: the config's)."),
    env: str | None = typer.Option(None, "--env", metavar="ENV",
                                   help="Env id the dataset is for (checks its widths; recorded in the checkpoint)."),
    steps: int | None = typer.Option(None, "--steps", metavar="N", help="Gradient steps (default: the config's)."),
    out: Path = typer.Option(..., "--out", metavar="DIR",
                             help="Checkpoint directory to write (with the losses in metrics.jsonl and tb/)."),
    seed: int | None = typer.Option(None, "--seed", metavar="N", help="Seed of the networks and batch sampling (default: 0)."),
    config_file: Path | None = typer.Option(None, "--config", metavar="FILE", help="YAML file of PretrainConfig fields."),
    sets: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="Override a config field (repeatable)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress output."),
) -> None:
    """Pretrain a policy offline (BC, BC-det, TD3+BC, IQL or CQL)."""
    from distributed_o2o.api import pretrain as run

    if algo not in ALGOS:
        raise UserError(f"unknown pretraining algorithm '{algo}': use one of {', '.join(ALGOS)}")
    explicit = {"env": env, "steps": steps, "seed": seed}
    path = run(algo, dataset, out=out, config=config_file, progress=not quiet,
               **{**parse_overrides(sets), **{key: value for key, value in explicit.items() if value is not None}})
    from distributed_o2o.checkpoint import read_metadata

    extra = read_metadata(path)["extra"]
    typer.echo(f"pretrained {algo} for {extra['steps']} steps on {extra['dataset']} in {extra['wall_time_s']:.0f} s: "
               f"wrote the checkpoint (and metrics.jsonl, tb/) to {path}")


def convert_rllib(
    checkpoint: Path = typer.Option(..., "--checkpoint", metavar="DIR",
                                    help="RLlib Algorithm checkpoint (new API stack) or RLModule directory."),
    env: str = typer.Option(..., "--env", metavar="ENV", help="Env the policy acts in (its widths are checked)."),
    out: Path = typer.Option(..., "--out", metavar="DIR", help="Checkpoint directory to write."),
    module_id: str = typer.Option("default_policy", "--module-id", metavar="ID", help="RLModule id inside the checkpoint."),
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
