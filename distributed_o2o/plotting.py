"""Learning curves from `metrics.jsonl`, drawn with matplotlib (no TensorBoard).

A fine-tuning run gives one curve: the evaluation return (± its std across episodes) or the
normalised score against online env steps. A pretraining checkpoint (`o2o pretrain --out`) gives
its losses against gradient steps, one panel per loss, under a panel of its evaluations where it
has them (`eval_every`). The two x axes differ, so one plot holds runs of one kind. `o2o plot`
and `o2o demo` draw with it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from distributed_o2o.errors import UserError
from distributed_o2o.metrics_log import read_metrics_file

METRICS = ("auto", "return", "score")
PRETRAIN_STEP = "step"  # the x of a pretraining line; a fine-tuning line's is "env_steps"


def read_curve(run: str | Path) -> list[dict]:
    """The lines of a fine-tuning run's or a pretraining checkpoint's metrics.jsonl, in step order."""
    file = Path(run) / "metrics.jsonl"
    if not file.is_file():
        raise UserError(f"'{run}' has no metrics.jsonl: pass the --out directory of an `o2o finetune` run "
                        "(or of an `o2o pretrain`, for its losses)")
    try:
        lines = read_metrics_file(file)
    except json.JSONDecodeError as exc:
        raise UserError(f"'{file}' is not JSON lines ({exc}): the run directory is damaged") from None
    if not lines:
        raise UserError(f"'{file}' holds no line yet: plot it after the run's first evaluation (or log line)")
    return sorted(lines, key=lambda line: line[_x_key(lines)])


def _x_key(lines: list[dict]) -> str:
    return PRETRAIN_STEP if is_pretraining(lines) else "env_steps"


def is_pretraining(lines: list[dict]) -> bool:
    return PRETRAIN_STEP in lines[0]


def plot_curves(curves: dict[str, list[dict]], out: str | Path, title: str = "", metric: str = "auto") -> Path:
    """Draw each named curve into one PNG at `out`. Fine-tuning runs: `metric` "return", "score"
    (normalised; every line needs one) or "auto" (the score when every run has one, else the
    return). Pretraining checkpoints: `pretraining_panels` ("auto" only)."""
    if metric not in METRICS:
        raise UserError(f"unknown metric '{metric}': use one of {', '.join(METRICS)}")
    kinds = {is_pretraining(lines) for lines in curves.values()}
    if len(kinds) > 1:
        raise UserError("pretraining checkpoints (losses against gradient steps) and fine-tuning runs (evaluations "
                        "against env steps) do not share an axis: plot them separately")
    pretraining = kinds == {True}
    if pretraining and metric != "auto":
        raise UserError(f"--metric {metric} is for fine-tuning runs: a pretraining checkpoint's plot shows its losses "
                        "(leave --metric out)")
    scored = all(line.get("normalized_score") is not None for lines in curves.values() for line in lines)
    if metric == "score" and not scored:
        raise UserError("a run has no normalised scores (no references known): plot --metric return")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    use_score = metric == "score" or (metric == "auto" and scored)
    fig = _draw_pretraining(plt, curves, title) if pretraining else _draw_evaluations(plt, curves, use_score, title)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _draw_evaluations(plt, curves: dict[str, list[dict]], use_score: bool, title: str):
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, lines in curves.items():
        steps = [line["env_steps"] for line in lines]
        if use_score:
            ax.plot(steps, [line["normalized_score"] for line in lines], marker="o", label=label)
        else:
            mean = np.array([line["return_mean"] for line in lines])
            std = np.array([line["return_std"] for line in lines])
            ax.plot(steps, mean, marker="o", label=label)
            ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("online env steps (pre-sample included)")
    ax.set_ylabel("normalised score" if use_score else "evaluation return (± std over episodes)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        ax.legend()
    return fig


EVAL_LABELS = {"eval_normalized_score": "evaluation\n(normalised score)", "eval_return_mean": "evaluation\n(return)"}


def pretraining_panels(curves: dict[str, list[dict]]) -> list[str]:
    """The keys a pretraining plot draws, one panel each, top down: the evaluations where any
    checkpoint has them (normalised score when every evaluation has one, else the return), then
    every loss."""
    evaluated = [line for lines in curves.values() for line in lines if "eval_return_mean" in line]
    evaluation = []
    if evaluated:
        evaluation = ["eval_normalized_score" if all("eval_normalized_score" in line for line in evaluated)
                      else "eval_return_mean"]
    losses = sorted({key for lines in curves.values() for line in lines for key in line if key.endswith("loss")})
    return evaluation + losses


def _draw_pretraining(plt, curves: dict[str, list[dict]], title: str):
    panels = pretraining_panels(curves)
    fig, axes = plt.subplots(len(panels), 1, figsize=(6, 2.2 * len(panels) + 0.8), sharex=True, squeeze=False)
    for ax, key in zip(axes[:, 0], panels):
        for label, lines in curves.items():
            kept = [line for line in lines if key in line]
            ax.plot([line[PRETRAIN_STEP] for line in kept], [line[key] for line in kept], label=label,
                    marker="o" if key in EVAL_LABELS else None)
        ax.set_ylabel(EVAL_LABELS.get(key, f"{key}\n(mean per log line)"))
        ax.grid(alpha=0.3)
    axes[0, 0].set_title(title or "offline pretraining")
    axes[-1, 0].set_xlabel("gradient steps (offline pretraining)")
    if len(curves) > 1:
        axes[0, 0].legend()
    return fig
