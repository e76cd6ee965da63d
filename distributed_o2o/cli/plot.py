"""`o2o plot`: a learning curve of one or more runs, as a PNG."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command()(plot)


def plot(
    runs: list[Path] = typer.Argument(..., metavar="RUN...", help="Run directories (the --out of `o2o finetune`), or pretraining "
                                     "checkpoints (the --out of `o2o pretrain`: their losses)."),
    out: Path = typer.Option(Path("curve.png"), "--out", metavar="FILE", help="PNG file to write."),
    metric: str = typer.Option("auto", "--metric", metavar="auto|return|score",
                               help="return, normalised score, or auto: the score when every run has one "
                                    "(pretraining checkpoints: auto, their losses)."),
    title: str = typer.Option("", "--title", metavar="TEXT", help="Title above the plot."),
) -> None:
    """Draw the evaluation curve of runs (return or normalised score against env steps), or the losses of
    pretraining checkpoints (against gradient steps); no TensorBoard needed."""
    from distributed_o2o.plotting import plot_curves, read_curve

    curves = {run.name or str(run): read_curve(run) for run in runs}
    typer.echo(f"wrote {plot_curves(curves, out, title, metric)}")
