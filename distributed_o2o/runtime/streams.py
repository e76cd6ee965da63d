"""The seeds of a run's random streams (envs, action noise, replay sampling, torch).

A run starts every stream from its config seed; a resumed run starts them again from a seed
derived from the config seed and the env step it resumes at, so the episodes and samples after
a resume continue the run instead of repeating those of its start (the envs' states and the
generators' positions are not saved, so the exact uninterrupted streams cannot be continued).
Seeds that must not overlap between the runs of a study (whose seeds are neighbours: 0-4) are
hashed from their keys (`hashed_seed`), never added: with `seed + i`, runs s and s + 1 would
share all but one of their envs' start states.
"""

from __future__ import annotations

import numpy as np


EVALUATION_STREAM = 1  # a key that keeps evaluation start states apart from the resume streams


def hashed_seed(*keys: int) -> int:
    """A seed drawn from all of `keys`: unrelated streams for different keys, neighbours included."""
    return int(np.random.SeedSequence([key % 2**64 for key in keys]).generate_state(1)[0])


def stream_seed(seed: int, env_step: int) -> int:
    """`seed` at env step 0 (an uninterrupted run is unchanged), else a seed drawn from both."""
    if env_step == 0:
        return seed
    return hashed_seed(seed, env_step)
