"""Progress output: a rich bar on a terminal, plain lines every few seconds anywhere else.

Rich draws nothing live when its stream is not a terminal (a log file, a pipe, a batch job),
so a long run printed nothing at all until it ended. `progress_bar` gives the same
`add_task`/`update`/`advance` calls either way.
"""

from __future__ import annotations

import math
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

# Seconds between two plain progress lines of one task.
PLAIN_EVERY_S = 10.0


def progress_bar(console: Console, enabled: bool = True, every_s: float = PLAIN_EVERY_S, columns: tuple = ()):
    """A rich `Progress` with `columns` (the default: description, bar, count, elapsed, remaining)
    when `console` is a terminal, else `PlainProgress`; nothing at all when not `enabled`."""
    if enabled and not console.is_terminal:
        return PlainProgress(console, every_s)
    columns = columns or (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          TimeRemainingColumn())
    return Progress(*columns, console=console, disable=not enabled, transient=False)


class PlainProgress:
    """One line per task at most every `every_s` seconds, and one when it completes:
    `<description>: <done>/<total> (<percent>%), <elapsed> elapsed, ~<remaining> left <fields>`."""

    def __init__(self, console: Console, every_s: float = PLAIN_EVERY_S):
        self.console, self.every_s = console, every_s
        self.tasks: list[dict] = []

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **fields) -> int:
        now = time.monotonic()
        self.tasks.append({"description": description, "total": total, "completed": completed, "start_done": completed,
                           "fields": fields, "start": now, "printed": now, "finished": False})
        return len(self.tasks) - 1

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, completed=self.tasks[task_id]["completed"] + advance)

    def update(self, task_id: int, *, completed: float | None = None, description: str | None = None, **fields) -> None:
        task = self.tasks[task_id]
        if completed is not None:
            task["completed"] = completed
        if description is not None:
            task["description"] = description
        task["fields"].update(fields)
        now = time.monotonic()
        done = task["total"] is not None and task["completed"] >= task["total"]
        if (done and not task["finished"]) or now - task["printed"] >= self.every_s:
            task["printed"], task["finished"] = now, done
            self.console.print(self._line(task, now), highlight=False, markup=False, soft_wrap=True)

    @staticmethod
    def _line(task: dict, now: float) -> str:
        elapsed = now - task["start"]
        line = f"{task['description']}: {task['completed']:.0f}"
        if task["total"]:
            line += f"/{task['total']:.0f} ({100 * task['completed'] / task['total']:.0f}%)"
        line += f", {_duration(elapsed)} elapsed"
        rate = (task["completed"] - task["start_done"]) / elapsed if elapsed > 0 else 0.0
        if task["total"] and rate > 0 and task["completed"] < task["total"]:
            line += f", ~{_duration((task['total'] - task['completed']) / rate)} left"
        extra = " ".join(str(value) for value in task["fields"].values() if value)
        return f"{line} {extra}" if extra else line


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
