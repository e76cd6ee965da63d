"""Aggregate statistics of Agarwal et al. (2021) through `rliable`: interquartile means with
95% stratified bootstrap confidence intervals (percentile method), and the probability of
improvement. Scores are matrices (runs x tasks); a task is an env.

rliable draws the resamples and makes the intervals; the statistic it evaluates on each of the
10,000 resamples is computed here in NumPy, equal to rliable's own (`metrics.aggregate_iqm`,
`metrics.probability_of_improvement`; tests compare them): those call SciPy once per resample,
whose per-call checks (~0.45 ms each under cProfile) were most of a report's time (docs/design.md)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_REPS = 10_000
SEED = 0  # the bootstrap's random state: a report is reproducible


@dataclass
class Estimate:
    value: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "ci_low": self.low, "ci_high": self.high}


def _intervals(scores: dict, func, reps: int):
    """rliable's interval estimates, seeded. rliable 1.2.0 draws its resamples from NumPy's global
    generator (`np.random.choice` in its bootstraps' `update_indices`), not from the
    `random_state` it takes, so the global generator is seeded for the call and put back after."""
    from rliable import library

    state = np.random.get_state()
    np.random.seed(SEED)
    try:
        return library.get_interval_estimates(scores, func, reps=reps)
    finally:
        np.random.set_state(state)


def trimmed_mean(scores: np.ndarray, axis: int | None = None) -> np.ndarray:
    """The 25%-trimmed mean along `axis` (None: of all scores), as SciPy's `trim_mean(scores,
    0.25, axis)`: int(n/4) of the n values cut from each end, the rest averaged."""
    if axis is None:
        scores, axis = np.ravel(scores), 0
    scores = np.sort(scores, axis=axis)
    n = scores.shape[axis]
    cut = int(0.25 * n)
    return np.take(scores, np.arange(cut, n - cut), axis=axis).mean(axis=axis)


def iqm(scores: np.ndarray) -> float:
    """The interquartile mean: the mean of the middle 50% of all scores (25% trimmed each side)."""
    return float(trimmed_mean(np.asarray(scores, float)))


def improvement_fraction(x: np.ndarray, y: np.ndarray) -> float:
    """P(X > Y) on samples (runs x tasks each): per task the fraction of (x, y) pairs with x > y,
    ties counting half (the Mann–Whitney U over the pair count), averaged over tasks."""
    pairs = x[:, None, :] - y[None, :, :]
    return float(((pairs > 0) + 0.5 * (pairs == 0)).mean(axis=(0, 1)).mean())


def iqm_interval(scores: np.ndarray, reps: int = DEFAULT_REPS) -> Estimate:
    """IQM of `scores` (runs x tasks, or a vector of runs) with its 95% stratified bootstrap CI."""
    scores = np.asarray(scores, float).reshape(len(scores), -1)
    if len(scores) == 1:  # nothing to resample: the interval is the point
        value = iqm(scores)
        return Estimate(value, value, value)
    point, interval = _intervals({"x": scores}, lambda s: np.array([trimmed_mean(s)]), reps)
    return Estimate(float(point["x"][0]), float(interval["x"][0, 0]), float(interval["x"][1, 0]))


def iqm_curve(scores: np.ndarray, reps: int = DEFAULT_REPS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IQM over runs at each evaluation (`scores`: runs x evaluations) and its 95% CI band
    (runs resampled independently at each evaluation)."""
    scores = np.asarray(scores, float)
    if len(scores) == 1:
        return scores[0], scores[0], scores[0]
    point, interval = _intervals({"x": scores}, lambda s: trimmed_mean(s, axis=0), reps)
    return point["x"], interval["x"][0], interval["x"][1]


def improvement_probability(x: np.ndarray, y: np.ndarray, reps: int = DEFAULT_REPS) -> Estimate:
    """P(X > Y): the chance that a run of X beats a run of Y on a task, averaged over tasks
    (`x`, `y`: runs x tasks, run counts may differ), with its 95% bootstrap CI."""
    x, y = (np.asarray(a, float).reshape(len(a), -1) for a in (x, y))
    point, interval = _intervals({"p": (x, y)}, improvement_fraction, reps)
    low, high = np.ravel(interval["p"])
    return Estimate(float(point["p"]), float(low), float(high))
