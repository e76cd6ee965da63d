"""`o2o sweep` and `o2o report`: multi-seed studies and their statistics."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def sweep(
    sweep_file: Path = typer.Argument(..., metavar="SWEEP_FILE", help="Sweep YAML (see configs/sweeps/): datasets, policies, methods, envs, seeds."),
    out: Path = typer.Option(..., "--out", metavar="DIR", help="Study directory: runs/<env>/<method>/seed_<n>/, sweep.yaml, tune/."),
    address: Optional[str] = typer.Option(None, "--address", metavar="ADDRESS", help="Join this Ray cluster (e.g. auto) instead of starting a local one."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the stages and trials, and what is already done; run nothing."),
    cache: Optional[Path] = typer.Option(None, "--cache", metavar="DIR", help="Where made datasets and pretrained policies are kept and reused "
                                                    "(default: $O2O_CACHE_DIR or ~/.cache/distributed_o2o)."),
    methods: Optional[str] = typer.Option(None, "--methods", metavar="NAME,...", help="Only these methods' trials (comma-separated names from the sweep "
                                                     "file); the others are left as they are."),
    envs: Optional[str] = typer.Option(None, "--envs", metavar="ENV,...", help="Only these envs' trials (comma-separated, from the sweep file's "
                                                  "envs): one env's part of a study on each machine or GPU."),
    reuse: Optional[list[Path]] = typer.Option(None, "--reuse", metavar="DIR", help="Finished runs under DIR (another study's --out, "
                                                    "a folder of run directories; repeatable) whose config a trial's equals "
                                                    "stand for it: their records are copied in, not run again."),
) -> None:
    """Run a multi-seed study as Ray Tune trials; running it again continues where it stopped."""
    from distributed_o2o.sweep.run import run_sweep

    names = lambda given: [n.strip() for n in given.split(",") if n.strip()] if given else None  # noqa: E731
    failed = run_sweep(sweep_file, out, address=address, dry_run=dry_run, cache=cache, methods=names(methods), envs=names(envs),
                       reuse=reuse, say=typer.echo)
    for line in failed:
        typer.echo(f"failed: {line}", err=True)
    if failed:
        typer.echo(f"{len(failed)} trials failed; run the same command again to retry them", err=True)
        raise typer.Exit(1)
    if not dry_run:
        typer.echo(f"done: o2o report {out} --out {out / 'report'}")


def report(
    run_dirs: list[Path] = typer.Argument(..., metavar="RUN_DIR...", help="Run directories, or folders holding them (a sweep's --out)."),
    out: Path = typer.Option(..., "--out", metavar="DIR", help="Directory for report.json, report.md and curves-<env>.png."),
    baseline: Optional[str] = typer.Option(None, "--baseline", metavar="METHOD", help="Method whose probability of improvement over each other is reported."),
    reps: int = typer.Option(10_000, "--reps", min=100, metavar="N", help="Bootstrap resamples per confidence interval."),
) -> None:
    """IQM with 95% bootstrap CIs per env and method, stability after hand-over, learning curves."""
    from distributed_o2o.report.build import write_report

    result = write_report(run_dirs, out, baseline, reps)
    for g in result["groups"]:
        typer.echo(f"{g['env']:<16} {g['method']:<24} n={g['n_runs']:<3} final IQM {g['iqm']:.1f} "
                   f"[{g['ci_low']:.1f}, {g['ci_high']:.1f}]")
    typer.echo(f"wrote {out / 'report.md'}")


def register(app: typer.Typer) -> None:
    app.command()(sweep)
    app.command()(report)
