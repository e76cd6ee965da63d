"""A directory's training records: `metrics.jsonl` (one JSON object a line) and TensorBoard
events under `tb/`. Fine-tuning run directories and pretraining checkpoints both keep them."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tb"


def read_metrics_file(file: Path) -> list[dict[str, Any]]:
    """The records of a `metrics.jsonl`, one JSON object a line (blank lines skipped); [] when
    the file does not exist. A damaged line raises `json.JSONDecodeError`."""
    return [json.loads(line) for line in file.read_text().splitlines() if line.strip()] if file.exists() else []


class MetricsLog:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._writer = None

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    def scalars(self, step: int, values: dict[str, float], prefix: str) -> None:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            _quiet_event_writer_errors()
            self._writer = SummaryWriter(str(self.path / TENSORBOARD_DIR))
        for key, value in values.items():
            self._writer.add_scalar(f"{prefix}/{key}", value, step)

    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.metrics_file, "a") as f:
            f.write(json.dumps(record) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        return read_metrics_file(self.metrics_file)

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
