"""`o2o finetune` and `o2o eval`."""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer

from distributed_o2o.algorithms.registry import ALGORITHM_NAMES
from distributed_o2o.config import DEFAULT_MODE


def register(app: typer.Typer) -> None:
    app.command()(finetune)
    app.command(name="eval")(evaluate)


def finetune(
    algo: Optional[str] = typer.Option(None, "--algo", metavar="ALGO", help=f"One of: {', '.join(ALGORITHM_NAMES)}."),
    env: Optional[str] = typer.Option(None, "--env", metavar="ENV", help="Gymnasium id, D4RL dataset name or package.module:Class."),
    policy: Optional[str] = typer.Option(None, "--policy", metavar="DIR", help="Pretrained policy checkpoint directory."),
    dataset: Optional[str] = typer.Option(None, "--dataset", metavar="SPEC", help="Offline dataset: d4rl:..., minari:... or a file."),
    online_steps: Optional[int] = typer.Option(None, "--online-steps", metavar="N", help="Online env-step budget (pre-sample steps "
                                                                        "included); with --resume: extends the run."),
    out: Optional[str] = typer.Option(None, "--out", metavar="DIR", help="Run directory to create."),
    mode: str = typer.Option(DEFAULT_MODE, "--mode", metavar="ray|local", help="ray: actors on a Ray cluster (a local one unless "
                                                                      "--address); local: one process, pdb-able."),
    address: Optional[str] = typer.Option(None, "--address", metavar="ADDRESS", help="Join this Ray cluster (e.g. auto or "
                                                                        "ray://host:10001) instead of starting a local one."),
    num_rollout_workers: Optional[int] = typer.Option(None, "--num-rollout-workers", min=1, metavar="N", help="Rollout actors (config: "
                                                                                     "runtime.num_rollout_workers)."),
    envs_per_worker: Optional[int] = typer.Option(None, "--envs-per-worker", min=1, metavar="N", help="Envs each rollout actor steps as one vector."),
    replay_shards: Optional[int] = typer.Option(None, "--replay-shards", min=1, metavar="N", help="Replay service shards (config: runtime.replay_shards)."),
    learner_backend: Optional[str] = typer.Option(None, "--learner-backend", metavar="auto|graph|eager",
                                                  help="auto: CUDA graphs for the SAC family on a GPU, eager otherwise; "
                                                       "graph: insist; eager: never (debugging)."),
    config: Optional[str] = typer.Option(None, "--config", metavar="FILE", help="YAML config file (see configs/; configs/cpu/ for "
                                                                    "CPU-sized runs)."),
    set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="Override a config field (repeatable; nested: "
                                                                          "constraint.eps_end=0.5)."),
    seed: Optional[int] = typer.Option(None, "--seed", metavar="N", help="Seed of networks, envs and replay sampling (default: 0)."),
    seeds: Optional[str] = typer.Option(None, "--seeds", metavar="N,N,...", help="A population run: one agent per seed, trained by "
                                                                      "one learner (SAC family); OUT/seed_<n>/ holds each "
                                                                      "seed's run."),
    resume: Optional[str] = typer.Option(None, "--resume", metavar="DIR", help="Continue the run in this directory from its last "
                                                                   "checkpoint (runtime options and --online-steps may "
                                                                   "change, nothing else)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress output."),
) -> None:
    """Fine-tune a policy online (PORL, O2SAC, O2TD3, O2PPO or a baseline)."""
    from distributed_o2o.runtime.timings import breakdown_line, process_started

    started = process_started()  # the summary's time breakdown counts the imports and Ray's start too
    from distributed_o2o.config import finetune_config, merge_layers, parse_overrides, read_yaml
    from distributed_o2o.errors import UserError
    from distributed_o2o.runtime.driver import RunAborted
    from distributed_o2o.runtime.finetune import resume_finetune, run_finetune
    from distributed_o2o.runtime.transport import ComponentFailed

    runtime = {k: v for k, v in {"num_rollout_workers": num_rollout_workers, "envs_per_worker": envs_per_worker,
                                 "replay_shards": replay_shards, "learner_backend": learner_backend}.items() if v is not None}
    explicit = {k: v for k, v in {"algo": algo, "env": env, "policy": policy, "dataset": dataset, "online_steps": online_steps,
                                  "seed": seed, "runtime": runtime or None}.items() if v is not None}
    try:
        population = _population_seeds(seeds, seed, resume)
        if resume is not None:
            if out is not None:
                raise UserError(f"--resume continues '{resume}' in place: drop --out")
            changes = merge_layers(read_yaml(config) if config else {}, merge_layers(parse_overrides(set_), explicit))
            summary = resume_finetune(resume, mode, progress=not quiet, address=address, changes=changes, started=started)
        else:
            if out is None:
                raise UserError("no run directory given: pass --out DIR")
            cfg = finetune_config(algo, config, explicit, sets=set_)
            summary = run_finetune(cfg, out, mode, progress=not quiet, address=address, seeds=population, started=started)
    except (RunAborted, ComponentFailed) as exc:  # an actor died: one line, not a traceback
        raise _Stopped(str(exc)) from None
    for run in summary.get("runs", [summary]):
        print_summary(run)
    print(breakdown_line(summary["time_breakdown_s"]))


def _population_seeds(seeds: str | None, seed: int | None, resume: str | None) -> list[int] | None:
    from distributed_o2o.errors import UserError
    from distributed_o2o.runtime.population_run import check_seed_options, parse_seeds

    if seeds is None:
        return None
    check_seed_options(seed)
    if resume is not None:
        raise UserError("--seeds starts a new population run: drop it with --resume")
    return parse_seeds(seeds)


class _Stopped(typer.TyperException):
    """A run that stopped because a component died: `error: <line>` and exit code 1."""

    exit_code = 1

    def show(self, file=None) -> None:
        print(f"error: {self.message}", file=file or sys.stderr)


def print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{summary['algo']} on {summary['env']}, seed {summary['seed']}")
    for column in ("", "env steps", "return", "normalised score"):
        table.add_column(column)
    for label in ("initial", "final", "best"):
        row = summary.get(label)
        if row:
            score = "-" if row["normalized_score"] is None else f"{row['normalized_score']:.1f}"
            table.add_row(label, str(row["env_steps"]), f"{row['return_mean']:.1f} ± {row['return_std']:.1f}", score)
    console = Console()
    console.print(table)
    console.print(f"{summary['updates']} updates, {summary['eval_env_steps']} evaluation env steps, "
                  f"{summary['wall_time_s']:.0f} s; run directory {summary['run_dir']}")


def evaluate(
    policy: str = typer.Option(..., "--policy", metavar="DIR", help="Checkpoint directory."),
    env: Optional[str] = typer.Option(None, "--env", metavar="ENV", help="Env to evaluate on (default: the checkpoint's)."),
    episodes: int = typer.Option(10, "--episodes", min=1, metavar="N", help="Episodes to play."),
    seed: int = typer.Option(10_000, "--seed", metavar="N", help="Seed of the first evaluation env (the others follow it)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Evaluate a checkpoint's deterministic policy for N episodes (with its normalised score where references are known)."""
    from distributed_o2o.api import evaluate as run

    result = run(policy, env, episodes, seed=seed)
    if as_json:
        print(json.dumps(result))
        return
    score = "" if result["normalized_score"] is None else f", normalised score {result['normalized_score']:.1f}"
    typer.echo(f"{result['env']}: return {result['return_mean']:.1f} ± {result['return_std']:.1f}{score} over {episodes} "
               f"episodes (mean length {result['length_mean']:.0f})")
