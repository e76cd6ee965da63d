"""`o2o zoo ...`: the shipped behaviour-policy zoo."""

from __future__ import annotations

from pathlib import Path

import typer

from distributed_o2o.cli import command_group
from distributed_o2o.zoo import MAX_REPLAY_TRANSITIONS

app = command_group()


@app.command(name="list")
def list_entries() -> None:
    """The envs the zoo covers, with each policy's measured return."""
    from rich.console import Console
    from rich.table import Table

    from distributed_o2o.zoo import zoo_entry, zoo_envs

    table = Table(title="distributed_o2o zoo: mean return (env step of the SAC run)")
    for column in ("env", "random", "medium", "expert", "medium-replay"):
        table.add_column(column)
    for env_id in zoo_envs():
        info = zoo_entry(env_id).info
        cells = [f"{p['return_mean']:.0f} ({p['env_steps'] // 1000}k)" for p in
                 (info["policies"][q] for q in ("random", "medium", "expert"))]
        replay = info["medium_replay"]
        cells.append(f"{replay['transitions']} of {replay['full_transitions']}")
        table.add_row(env_id, *cells)
    Console().print(table)


@app.command()
def build(
    run: Path = typer.Option(..., "--run", metavar="DIR", help="Directory of a SAC run (configs/zoo-sac.yaml)."),
    out: Path | None = typer.Option(None, "--out", metavar="DIR", help="Zoo root to write into (default: the package's)."),
    episodes: int = typer.Option(100, "--episodes", min=1, metavar="N", help="Episodes per measured policy."),
    max_replay_transitions: int = typer.Option(MAX_REPLAY_TRANSITIONS, "--max-replay-transitions", min=1, metavar="N",
                                               help="Cap on the shipped medium-replay (whole episodes)."),
) -> None:
    """Pick random / medium / expert checkpoints of a SAC run, measure them, and write a zoo entry."""
    from distributed_o2o.zoo import ZOO_DIR
    from distributed_o2o.zoo.build import build_zoo_entry

    build_zoo_entry(run, out or ZOO_DIR, episodes=episodes, max_replay_transitions=max_replay_transitions)
