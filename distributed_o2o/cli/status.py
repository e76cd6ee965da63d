"""`o2o status`: the actors of a `--mode ray` run, asked from the Ray cluster it runs on."""

from __future__ import annotations

import sys
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command()(status)


def status(
    run: Path = typer.Argument(..., metavar="RUN", help="The run directory (the --out of `o2o finetune --mode ray`), "
                               "as the run's driver named it on this machine."),
    address: str | None = typer.Option(None, "--address", metavar="ADDRESS",
                                       help="The Ray cluster the run is on (default: the address the run recorded "
                                            "in RUN/ray_address, else auto: a cluster started with `ray start`)."),
) -> None:
    """List a run's Ray actors (learner, replay, rollout, evaluator) that are alive or restarting.

    Connects to the cluster as a driver (token auth applies; no dashboard needed)."""
    from distributed_o2o.runtime.ray_cluster import recorded_address, run_actors

    address = address or recorded_address(run) or "auto"
    names = run_actors(run, address)
    if not names:
        print(f"run '{run}' has no actors on the Ray cluster at --address {address}: it is not running there",
              file=sys.stderr)
        raise typer.Exit(1)
    for name in names:
        typer.echo(name)
