"""Reading run directories for a report: scores per evaluation, and the group each run belongs to.

A run directory is any folder holding `config.yaml` and `metrics.jsonl` (a sweep's trials or
plain `o2o finetune --out` runs). Its group is (env, dataset, method): from the sweep's
`trial.json` where there is one, else from `config.yaml` (method = the algorithm, dataset = the
dataset file's name). Scores are normalised with the run's own references (what its evaluations
recorded), else the zoo's for the env, else D4RL's; with none, raw returns (said in the report).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import yaml

from distributed_o2o.data.scores import normalized_score
from distributed_o2o.errors import UserError
from distributed_o2o.metrics_log import METRICS_FILE, read_metrics_file


@dataclass
class RunRecord:
    path: Path
    env: str
    dataset: str
    method: str
    seed: int
    steps: np.ndarray  # env steps of the evaluations (pre-sample included)
    scores: np.ndarray  # normalised score (or raw return, see `normalised`) at each evaluation
    # The learning policy's mode at each evaluation, on the scores' scale, where the run delivers
    # another policy (a Polyak average, a validated deployment: `online_return_mean`); else None.
    learner_scores: np.ndarray | None
    normalised: bool
    references: str  # where the normalisation came from
    handover_step: int
    online_steps: int
    finished: bool
    wall_time_s: float | None
    # Seeds in the population run this run belongs to (1: a run of its own); its seeds share one
    # wall time, so the group's wall time is not a per-seed cost.
    population: int = 1

    @property
    def group(self) -> tuple[str, str, str]:
        return self.env, self.dataset, self.method


def find_run_dirs(roots: list[str | Path]) -> list[Path]:
    found: list[Path] = []
    for root in map(Path, roots):
        if not root.is_dir():
            raise UserError(f"'{root}' is not a directory: pass run directories or a sweep's --out")
        found += sorted(p.parent for p in root.rglob("metrics.jsonl") if (p.parent / "config.yaml").is_file())
    if not found:
        raise UserError(f"no run directories (config.yaml + metrics.jsonl) under {', '.join(map(str, roots))}")
    return sorted(set(found))


def _references(env: str) -> tuple[float, float, str] | None:
    """The zoo's references for `env`, else D4RL's; None for an env with neither."""
    from distributed_o2o.data.scores import d4rl_ref_scores
    from distributed_o2o.zoo import zoo_references

    zoo = zoo_references(env)
    if zoo is not None:
        return (*zoo, "zoo")
    refs = d4rl_ref_scores(env)
    return (*refs, "D4RL") if refs else None


def read_run(path: Path) -> RunRecord | None:
    """The run at `path`, or None when it has no evaluation yet."""
    try:
        config = yaml.safe_load((path / "config.yaml").read_text())
        metrics = read_metrics_file(path / METRICS_FILE)
    except (yaml.YAMLError, json.JSONDecodeError, OSError) as exc:
        raise UserError(f"run directory '{path}' has an unreadable config.yaml or metrics.jsonl ({exc}): "
                        "remove it from the report's inputs") from None
    if not metrics:
        return None
    trial_file = path / "trial.json"
    trial = json.loads(trial_file.read_text()) if trial_file.is_file() else {}
    summary_file = path / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else None
    steps = np.array([m["env_steps"] for m in metrics], dtype=np.int64)
    returns = np.array([m["return_mean"] for m in metrics], float)
    if all(m.get("normalized_score") is not None for m in metrics):
        scores, normalised, refs = np.array([m["normalized_score"] for m in metrics], float), True, "the run's"
        to_scores = _affine(returns, scores) or _reference_map(config["env"])[0]
    else:
        to_scores, label = _reference_map(config["env"])
        scores, normalised, refs = to_scores(returns), label is not None, label or "none (raw return)"
    learner = None
    if all("online_return_mean" in m for m in metrics):
        learner = to_scores(np.array([m["online_return_mean"] for m in metrics], float))
    dataset = trial.get("dataset") or (Path(config["dataset"]).stem if config.get("dataset") else "-")
    online_steps = int(config.get("online_steps", steps[-1]))
    return RunRecord(path=path, env=trial.get("env", config["env"]), dataset=dataset, method=trial.get("method", config["algo"]),
                     seed=int(trial.get("seed", config.get("seed", 0))), steps=steps, scores=scores, learner_scores=learner,
                     normalised=normalised,
                     references=refs, handover_step=int((summary or {}).get("handover_env_step", 0)),
                     online_steps=online_steps, finished=_finished(summary, steps, online_steps),
                     wall_time_s=(summary or {}).get("wall_time_s"), population=_population_size(path))


def _population_size(path: Path) -> int:
    """How many seeds the population run holding `path` (one of its `seed_<n>` sub-runs) trained:
    the `seeds` of the population's own summary.json one folder up; 1 for a run of its own."""
    summary_file = path.parent / "summary.json"
    if not path.name.startswith("seed_") or not summary_file.is_file():
        return 1
    try:
        seeds = json.loads(summary_file.read_text()).get("seeds")
    except (json.JSONDecodeError, OSError, AttributeError):
        return 1
    return len(seeds) if isinstance(seeds, list) and seeds else 1


def _reference_map(env: str) -> tuple[Callable[[np.ndarray], np.ndarray], str | None]:
    """Return -> normalised score by `env`'s references, and where they come from (identity and
    None for an env without references)."""
    found = _references(env)
    if found is None:
        return (lambda returns: returns), None
    low, high, label = found
    return partial(normalized_score, ref_min=low, ref_max=high), label


def _affine(returns: np.ndarray, scores: np.ndarray) -> Callable[[np.ndarray], np.ndarray] | None:
    """Return -> score as the run normalised its own evaluations (an affine map, read off two
    evaluations with different returns; None without two)."""
    lo, hi = int(np.argmin(returns)), int(np.argmax(returns))
    if not returns[hi] > returns[lo]:
        return None
    slope = (scores[hi] - scores[lo]) / (returns[hi] - returns[lo])
    return lambda x: scores[lo] + slope * (x - returns[lo])


def _finished(summary: dict | None, steps: np.ndarray, online_steps: int) -> bool:
    """The run reached its budget, and its evaluations are the ones its summary closed (a
    metrics file from another copy of the run, cut short, does not count)."""
    return summary is not None and summary["env_steps"] >= online_steps and int(steps[-1]) == summary["env_steps"]


def read_runs(roots: list[str | Path]) -> list[RunRecord]:
    return [r for r in map(read_run, find_run_dirs(roots)) if r is not None]
