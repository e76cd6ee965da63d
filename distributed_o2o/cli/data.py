"""`o2o data ...` commands."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from distributed_o2o.cli import command_group

app = command_group()

SPEC_HELP = "d4rl:<file or name>, minari:<id or directory>, or an own-format .hdf5 path"


@app.command()
def inspect(
    spec: str = typer.Argument(..., metavar="SPEC", help=SPEC_HELP),
    env: str | None = typer.Option(None, "--env", metavar="ENV", help="Check the dataset's widths against this env."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Summarise an offline dataset."""
    from rich.console import Console
    from rich.table import Table

    from distributed_o2o.data import load_dataset

    summary = load_dataset(spec, env_id=env).summary()
    if as_json:
        typer.echo(json.dumps(summary))
        return
    table = Table(title=spec, show_header=False)
    for key, value in summary.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    Console().print(table)


@app.command()
def collect(
    env: str = typer.Option(..., "--env", metavar="ENV", help="Env id to collect in."),
    policy: str = typer.Option(..., "--policy", metavar="DIR|random",
                               help="'random' (uniform in [-1, 1]) or a checkpoint directory."),
    steps: int = typer.Option(..., "--steps", min=1, metavar="N", help="Transitions to collect."),
    out: Path = typer.Option(..., "--out", metavar="FILE", help="HDF5 file to write."),
    seed: int = typer.Option(0, "--seed", metavar="N", help="Seed of the envs and the policy's action noise."),
    num_envs: int = typer.Option(4, "--num-envs", min=1, metavar="N", help="Envs stepped side by side."),
) -> None:
    """Collect a dataset with a policy and write it in the project's format."""
    import numpy as np

    from distributed_o2o.data import collect_dataset, write_dataset
    from distributed_o2o.data.collect import uniform_actor
    from distributed_o2o.durable import check_writable
    from distributed_o2o.envs import env_spaces

    check_writable(out.parent, "the dataset")
    if policy == "random":
        act_fn = uniform_actor(env_spaces(env).act_dim, seed)
        name = "random"
    else:
        import torch

        from distributed_o2o.checkpoint import load_policy

        torch.manual_seed(seed)  # the policy samples its actions with torch's generator
        loaded = load_policy(policy, env_id=env)

        def act_fn(obs: np.ndarray) -> np.ndarray:  # behaviour data samples the policy, as D4RL's does
            return loaded.act(obs, deterministic=False)

        name = loaded.name
    dataset = collect_dataset(env, act_fn, steps, seed=seed, num_envs=num_envs)
    write_dataset(out, dataset, env_id=env, behavior_policy=policy, seed=seed)
    returns = dataset.episode_returns
    typer.echo(
        f"wrote {len(dataset)} transitions, {dataset.num_episodes} episodes of {name} on {dataset.env_id} "
        f"(return {returns.mean():.1f} ± {returns.std():.1f}) to {out}"
    )


@app.command()
def make(
    env: str = typer.Option(..., "--env", metavar="ENV", help="Env with a zoo entry (Hopper-v5, HalfCheetah-v5, Walker2d-v5)."),
    quality: str = typer.Option(..., "--quality", metavar="QUALITY",
                                help="random, medium, medium-replay, medium-expert or expert."),
    out: Path = typer.Option(..., "--out", metavar="FILE", help="HDF5 file to write."),
    steps: int | None = typer.Option(None, "--steps", min=1, metavar="N",
                                     help="Transitions (default: D4RL's, 1M; 2M for medium-expert; medium-replay: all "
                                          "the zoo holds)."),
    seed: int = typer.Option(0, "--seed", metavar="N", help="Seed of the envs and the policies' action noise."),
) -> None:
    """Build a D4RL-protocol dataset from the zoo's policies (deterministic per seed)."""
    from distributed_o2o.data.make import make_dataset, write_made_dataset
    from distributed_o2o.durable import check_writable

    check_writable(out.parent, "the dataset")

    dataset = make_dataset(env, quality, steps, seed)
    write_made_dataset(out, dataset)
    summary = dataset.summary()
    typer.echo(f"wrote {summary['transitions']} transitions, {summary['episodes']} episodes of {env} {quality} "
               f"(return {summary['return_mean']:.1f}, normalised {summary['normalized_score_mean']:.1f}) to {out}")
