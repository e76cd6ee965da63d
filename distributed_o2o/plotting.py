"""Learning curves from run directories' `metrics.jsonl`, drawn with matplotlib (no TensorBoard).

One curve per run: the evaluation return (± its std across episodes) or the normalised score
against online env steps. `o2o plot` and `o2o demo` draw with it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from distributed_o2o.errors import UserError

METRICS = ("auto", "return", "score")


def read_curve(run: str | Path) -> list[dict]:
    """The evaluation lines of a run directory, in env-step order."""
    file = Path(run) / "metrics.jsonl"
    if not file.is_file():
        raise UserError(f"'{run}' has no metrics.jsonl: pass the --out directory of an `o2o finetune` run")
    try:
        lines = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise UserError(f"'{file}' is not JSON lines ({exc}): the run directory is damaged") from None
    if not lines:
        raise UserError(f"'{file}' holds no evaluation yet: plot it after the run's first evaluation")
    return sorted(lines, key=lambda line: line["env_steps"])


def plot_curves(curves: dict[str, list[dict]], out: str | Path, title: str = "", metric: str = "auto") -> Path:
    """Draw each named curve into one PNG at `out`. `metric`: "return", "score" (normalised; every
    line needs one) or "auto" (the score when every run has one, else the return)."""
    if metric not in METRICS:
        raise UserError(f"unknown metric '{metric}': use one of {', '.join(METRICS)}")
    scored = all(line.get("normalized_score") is not None for lines in curves.values() for line in lines)
    if metric == "score" and not scored:
        raise UserError("a run has no normalised scores (no references known): plot --metric return")
    use_score = metric == "score" or (metric == "auto" and scored)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
