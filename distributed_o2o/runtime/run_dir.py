"""A run directory and what is written into it.

    config.yaml            the resolved config
    metrics.jsonl          one line per evaluation (return, normalised score, updates/s)
    summary.json           initial/final/best evaluation and checkpoint, env steps, updates, wall time,
                           seed, package versions, git commit
    tb/                    TensorBoard events
    stages/<name>.*        learner state after each offline stage (cache)
    checkpoints/step_N/    policy (+ critic) checkpoint at each evaluation (`o2o eval` reads it)
    resume/save-<step>/    learner state, replay contents and counters of the last two saves (resume_state.py)
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import yaml

RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints", "resume")
IGNORED_FOR_STAGE_CACHE = {"online_steps", "eval_every", "eval_episodes", "log_every", "num_envs", "device"}


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._writer = None

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

    def latest_checkpoint(self) -> Path | None:
        found = sorted((self.path / "checkpoints").glob("step_*/metadata.json"))
        return found[-1].parent if found else None

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
        relevant = {k: v for k, v in config.items() if k not in IGNORED_FOR_STAGE_CACHE}
        return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def scalars(self, env_step: int, values: dict[str, float], prefix: str) -> None:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            _quiet_event_writer_errors()
            self._writer = SummaryWriter(str(self.path / "tb"))
        for key, value in values.items():
            self._writer.add_scalar(f"{prefix}/{key}", value, env_step)

    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        file = self.path / "metrics.jsonl"
        return [json.loads(line) for line in file.read_text().splitlines()] if file.exists() else []

    def truncate_metrics(self, env_step: int) -> None:
        """Drop evaluation lines past `env_step` (written after the checkpoint a resume starts from)."""
        kept = [r for r in self.read_metrics() if r["env_steps"] <= env_step]
        (self.path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))

    def write_summary(self, summary: dict[str, Any]) -> None:
        (self.path / "summary.json").write_text(json.dumps(summary, indent=2))

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class _QuietEventWriter:
    """A `threading.excepthook` that leaves out the traceback of TensorBoard's writer thread
    failing to write (a run directory made read-only): the same error reaches the run at its
    next `scalars` or `flush`, which stops it with one line."""

    def __init__(self, previous):
        self.previous = previous

    def __call__(self, args) -> None:
        # tensorboard.summary.writer.event_file_writer._AsyncWriterThread (private, matched by name)
        if not (isinstance(args.exc_value, OSError) and type(args.thread).__name__ == "_AsyncWriterThread"):
            self.previous(args)


def _quiet_event_writer_errors() -> None:
    if not isinstance(threading.excepthook, _QuietEventWriter):
        threading.excepthook = _QuietEventWriter(threading.excepthook)


class Rate:
    """Events per second since the last call."""

    def __init__(self, count: int = 0):
        self.t, self.count = time.perf_counter(), count

    def __call__(self, count: int) -> float:
        now = time.perf_counter()
        rate = (count - self.count) / max(now - self.t, 1e-9)
        self.t, self.count = now, count
        return rate
