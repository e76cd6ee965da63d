"""Pacing of the online loop: what the algorithm wants per env step, and how far collection
and updates may drift apart.

    Schedule       the acting spec and the updates owed per env step (fetched once as runs)
    chunk_steps    vector steps per collect call
    size_limiter   the rate limiter's band (replay.RateLimiter), after refusing limits under
                   which no update could run or both sides would stall
"""

from __future__ import annotations

import bisect
import math
from typing import Any

from distributed_o2o.runtime.components import Components
from distributed_o2o.runtime.replay import RateLimiter, check_rate_limits


class Schedule:
    """The algorithm's acting spec and owed updates per env step, fetched once as runs.

    Transition t (the one that brings the count to t, from 1) earns `updates_due(t)` updates
    (the algorithm's gate, `learning_starts`, is in them); the transition taken at count t acts
    with `acting(t)`.
    Past the fetched range the last run continues.
    """

    def __init__(self, runs: list[tuple[int, Any, float]]):
        self.starts = [r[0] for r in runs]
        self.specs = [r[1] for r in runs]
        self.utds = [r[2] for r in runs]

    def _index(self, t: int) -> int:
        return max(0, bisect.bisect_right(self.starts, t) - 1)

    def acting(self, t: int):
        return self.specs[self._index(t)]

    def next_change(self, t: int) -> float:
        """The first count after t at which the acting spec changes (inf if none)."""
        spec = self.acting(t)
        for i in range(self._index(t) + 1, len(self.starts)):
            if self.specs[i] != spec:
                return self.starts[i]
        return math.inf

    def earned(self, lo: int, hi: int) -> float:
        """Updates earned by the transitions that take the count from lo to hi."""
        total, a = 0.0, lo + 1
        i = self._index(a)
        while a <= hi:
            last = self.starts[i + 1] - 1 if i + 1 < len(self.starts) else hi
            b = min(last, hi)
            total += self.utds[i] * (b - a + 1)
            a, i = b + 1, i + 1
        return total

    def utd(self, t: int) -> float:
        """Updates earned by transition t."""
        return self.utds[self._index(t)]

    def utd_values(self) -> set[float]:
        """The UTDs of the run that earn updates."""
        ends = self.starts[1:] + [math.inf]
        return {u for u, end in zip(self.utds, ends) if u > 0 and end > 1}


def chunk_steps(c: Components, utd: float) -> int:
    """Vector steps per collect call: up to `chunk_transitions`, and about one learner call's
    worth of updates at this UTD, so a chunk never puts the learner far behind."""
    transitions = c.chunk_transitions if utd <= 0 else min(c.chunk_transitions, c.max_updates_per_call / utd)
    return max(1, int(transitions) // c.envs_per_worker)


def size_limiter(cfg: Any, c: Components, schedule: Schedule, owed: float) -> RateLimiter:
    """The off-policy rate limiter, starting with `owed` updates (a resumed run's)."""
    # The chunk that earns the most updates, over the UTDs of the run.
    chunk, utd = max(((chunk_steps(c, u) * c.envs_per_worker, u) for u in schedule.utd_values()),
                     key=lambda x: x[0] * x[1], default=(0, 0.0))
    tolerance = cfg.runtime.samples_per_insert_tolerance
    check_rate_limits(chunk=chunk, utd=utd, batch_size=cfg.batch_size, tolerance=tolerance)
    if tolerance is None:  # room for a chunk per worker and one learner call
        max_lag = len(c.workers) * chunk * utd + c.max_updates_per_call
    else:
        max_lag = tolerance / cfg.batch_size
    return RateLimiter(max_lag, owed=owed)
