"""`o2o demo`: the main job on its embedded default (see distributed_o2o/demo.py)."""

from __future__ import annotations

from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    app.command()(demo)


def demo(
    out: str = typer.Option("demo", "--out", metavar="DIR", help="Directory for the dataset, checkpoints, run and curve."),
    config: Optional[str] = typer.Option(None, "--config", metavar="FILE", help="YAML file overriding the embedded demo config."),
    set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE",
                                   help="Override a field (repeatable; e.g. finetune.online_steps=5000)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress output."),
) -> None:
    """Zoo data -> BC pretraining -> PORL fine-tuning on HalfCheetah-v5, with a before/after table."""
    from distributed_o2o.cli.finetune import print_summary
    from distributed_o2o.config import DemoConfig, build_config, parse_overrides, read_yaml
    from distributed_o2o.demo import run_demo

    cfg = build_config(DemoConfig, read_yaml(config) if config else {}, parse_overrides(set_))
    summary = run_demo(cfg, out, progress=not quiet)
    print_summary(summary)
    typer.echo(f"behaviour policy (the zoo's {cfg.quality} policy) return: {summary['behaviour_return']:.1f}")
    typer.echo(f"learning curve: {summary['curve']}")
