"""A run directory and what is written into it.

    config.yaml            the resolved config
    metrics.jsonl          one line per evaluation (return, normalised score, updates/s)
    summary.json           initial/final/best evaluation and checkpoint, env steps, updates, wall time
                           and where it went (timings.py), seed, package versions, git commit
    tb/                    TensorBoard events
    stages/<name>.*        learner state after each offline stage (cache)
    checkpoints/step_N/    policy (+ critic) checkpoint at each evaluation (`o2o eval` reads it)
    resume/save-<step>/    learner state, replay contents and counters of the last two saves (resume_state.py)
    ray_address            `--mode ray`: the Ray cluster the run's actors are on (`o2o status` reads it)
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import yaml

from distributed_o2o.config import STAGE_CACHE_IGNORED, STAGE_KEY_RUNTIME_FIELDS, STAGE_KEY_RUNTIME_FIELDS_WHEN_SET
from distributed_o2o.metrics_log import MetricsLog

RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints", "resume", "population.yaml")


class RunDir(MetricsLog):
    """A fine-tuning run's directory (its metrics and TensorBoard writing: `MetricsLog`)."""

    # -- layout
    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def resume_dir(self) -> Path:
        return self.path / "resume"

    def stage_file(self, name: str) -> Path:
        return self.path / "stages" / name

    def checkpoint_dir(self, env_step: int) -> Path:
        return self.path / "checkpoints" / f"step_{env_step:09d}"

    def holds(self, filename: str | bytes | None) -> bool:
        """Whether `filename` (an OSError's) lies in this run directory."""
        if filename is None:
            return False
        return Path(os.fsdecode(filename)).resolve().is_relative_to(self.path.resolve())

    def earlier_run_files(self) -> list[str]:
        """What an earlier run left here (a new run must not mix with it)."""
        return [name for name in RUN_FILES if (self.path / name).exists()]

    # -- writing
    def write_config(self, config: dict[str, Any]) -> None:
        self.config_file.write_text(yaml.safe_dump(config, sort_keys=False))

    def read_config(self) -> dict[str, Any]:
        return yaml.safe_load(self.config_file.read_text())

    @staticmethod
    def stage_key(config: dict[str, Any]) -> str:
        """Identifies what an offline stage depends on, so a changed config does not reuse a stale cache."""
        relevant = {k: v for k, v in config.items() if k not in STAGE_CACHE_IGNORED}
        relevant.update({k: config["runtime"][k] for k in STAGE_KEY_RUNTIME_FIELDS})
        relevant.update({k: config["runtime"][k] for k in STAGE_KEY_RUNTIME_FIELDS_WHEN_SET if config["runtime"].get(k)})
        return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def truncate_metrics(self, env_step: int) -> None:
        """Drop evaluation lines past `env_step` (written after the checkpoint a resume starts from)."""
        kept = [r for r in self.read_metrics() if r["env_steps"] <= env_step]
        self.metrics_file.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def write_summary(self, summary: dict[str, Any]) -> None:
        (self.path / "summary.json").write_text(json.dumps(summary, indent=2))


class Rate:
    """Events per second since the last call."""

    def __init__(self, count: int = 0):
        self.t, self.count = time.perf_counter(), count

    def __call__(self, count: int) -> float:
        now = time.perf_counter()
        rate = (count - self.count) / max(now - self.t, 1e-9)
        self.t, self.count = now, count
        return rate
