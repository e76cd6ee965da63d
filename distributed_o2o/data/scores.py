"""Normalised scores: 100 * (R - R_min) / (R_max - R_min).

The D4RL reference table belongs to D4RL's datasets only. Minari's and the project's own
datasets carry their own references (R_min: random policy, R_max: expert); the readers put
the right pair on each `OfflineDataset`, so callers normally pass `dataset=`.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from distributed_o2o.errors import UserError


class RecordsReferences(Protocol):
    """What normalising by a dataset reads of it (an `OfflineDataset`; dataset.py imports this
    module, so it is named by what it offers, not imported)."""

    ref_min_score: float | None
    ref_max_score: float | None

# (R_min, R_max) keyed by the lowercase env prefix of a D4RL dataset name.
D4RL_REF_SCORES: dict[str, tuple[float, float]] = {
    "hopper": (-20.272305, 3234.3),
    "halfcheetah": (-280.178953, 12135.0),
    "walker2d": (1.629008, 4592.3),
    "ant": (-325.6, 3879.7),
}


def d4rl_ref_scores(name: str) -> tuple[float, float] | None:
    """D4RL's (R_min, R_max) for a dataset or env name (`hopper_medium-v2`, `Hopper-v5`), else None."""
    return D4RL_REF_SCORES.get(name.lower().replace("_", "-").split("-", 1)[0])


def reference_scores(env_id: str | None,
                     *candidates: tuple[float | None, float | None] | None) -> tuple[float | None, float | None]:
    """The first complete (R_min, R_max) among `candidates` (most specific first: explicit config,
    dataset, checkpoint), else the zoo's for `env_id` (random and expert policy returns), else
    (None, None)."""
    for pair in candidates:
        if pair is not None and pair[0] is not None and pair[1] is not None:
            return float(pair[0]), float(pair[1])
    if env_id is not None:
        from distributed_o2o.zoo import zoo_references

        found = zoo_references(env_id)
        if found is not None:
            return found
    return None, None


def normalized_score(
    returns: float | np.ndarray,
    *,
    env_id: str | None = None,
    ref_min: float | None = None,
    ref_max: float | None = None,
    dataset: RecordsReferences | None = None,
) -> float | np.ndarray | None:
    """Normalise episode returns; give exactly one source of references.

    - `ref_min` and `ref_max`: used as given.
    - `dataset`: the references the dataset records; None when it records none.
    - `env_id`: D4RL's table (only meaningful for D4RL datasets); UserError if the env is not in it.

    A scalar return gives a float, an array gives an array.
    """
    sources = [ref_min is not None or ref_max is not None, dataset is not None, env_id is not None]
    if sum(sources) != 1:
        raise TypeError("normalized_score needs exactly one of: ref_min and ref_max, dataset, env_id")
    if dataset is not None:
        if dataset.ref_min_score is None or dataset.ref_max_score is None:
            return None
        ref_min, ref_max = dataset.ref_min_score, dataset.ref_max_score
    elif env_id is not None:
        refs = d4rl_ref_scores(env_id)
        if refs is None:
            raise UserError(
                f"no D4RL reference returns for '{env_id}' (known: {', '.join(D4RL_REF_SCORES)}): "
                "pass ref_min and ref_max, or the dataset that records them"
            )
        ref_min, ref_max = refs
    if ref_min is None or ref_max is None or ref_max == ref_min:
        raise UserError(f"reference returns ({ref_min}, {ref_max}) cannot normalise scores: give two different numbers")
    scores = 100.0 * (np.asarray(returns, dtype=np.float64) - ref_min) / (ref_max - ref_min)
    return float(scores) if scores.ndim == 0 else scores
