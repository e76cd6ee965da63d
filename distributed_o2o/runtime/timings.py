"""Where a run's wall time goes: `summary.json`'s `time_breakdown_s` (docs/performance.md).

`Timings.part(name)` counts the seconds spent inside it; parts nest, and a second counts in the
innermost part open (the online loop's waiting is not also online time), so the driver's parts
and `other` add up to `total`. The learner keeps its own `Timings` (its update calls, and the
graphed path's warm-up and capture as `compile`), which overlap the driver's in `--mode ray`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

# The driver's parts, in the order a run passes them (`other`: what no part counts, `total`'s rest).
DRIVER_PARTS = ("imports", "startup", "inputs", "ray_start", "offline_stages", "handover", "online", "waiting", "evaluations", "checkpoints",
                "resume", "shutdown", "other")
# The learner's: seconds inside its online update calls (on the graphed path a call returns with
# its updates queued on the GPU, after waiting for the call before it), and compilation wherever
# it happens.
LEARNER_PARTS = ("learner", "compile")
# The driver's view of the learner, overlapping its parts: seconds of the off-policy online loop
# with no update call running or in flight (the learner had nothing to do).
UPDATE_GAPS = "update_gaps"
# The stage before the hand-over (PORL's pre-sample, WSRL's warm-up): the online loop's seconds
# from its start until it stopped at or past the hand-over step, overlapping the parts it spans
# (compilation included); 0 without one.
PRESAMPLE = "presample"
BREAKDOWN_KEYS = (*DRIVER_PARTS, *LEARNER_PARTS, UPDATE_GAPS, PRESAMPLE, "total")


class Timings:
    """Seconds per named part, since `origin` (a `time.perf_counter()` value; default: now), in
    `first` from then until it ends (default: in no part)."""

    def __init__(self, origin: float | None = None, first: str | None = None):
        self.origin = time.perf_counter() if origin is None else origin
        self.seconds: dict[str, float] = {}
        self.open: list[str] = [] if first is None else [first]
        self.since = self.origin

    def begin(self, name: str) -> None:
        self._switch()
        self.open.append(name)

    def end(self) -> None:
        """End the innermost open part."""
        self._switch()
        self.open.pop()

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        self.begin(name)
        try:
            yield
        finally:
            self.end()

    def _switch(self) -> None:
        """Book the seconds since the last switch to the innermost open part."""
        now = time.perf_counter()
        if self.open:
            self.add(self.open[-1], now - self.since)
        self.since = now

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.origin

    def breakdown(self) -> dict[str, float]:
        """Every key of BREAKDOWN_KEYS, rounded to ms; `other` is `total` less the driver's parts."""
        total = self.elapsed()
        parts = {name: self.seconds.get(name, 0.0) for name in BREAKDOWN_KEYS}
        parts["other"] = max(0.0, total - sum(parts[name] for name in DRIVER_PARTS))
        parts["total"] = total
        return {name: round(seconds, 3) for name, seconds in parts.items()}


def process_started() -> float | None:
    """When this process started, as a `time.perf_counter()` value (Linux: /proc/self/stat's start
    time against /proc/uptime, to a clock tick); None where /proc cannot tell."""
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            start_ticks = int(stat.read().rpartition(")")[2].split()[19])  # field 22, counted after the name
            age = float(uptime.read().split()[0]) - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    return time.perf_counter() - max(age, 0.0)


def breakdown_line(breakdown: dict[str, float]) -> str:
    """The console's one line: the parts that took at least 0.05 s, then the total."""
    shown = [f"{name} {seconds:.1f}" for name, seconds in breakdown.items() if name != "total" and seconds >= 0.05]
    return f"time (s): {', '.join(shown)}; total {breakdown['total']:.1f}"
