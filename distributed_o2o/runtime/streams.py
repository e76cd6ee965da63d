"""The seeds of a run's random streams (envs, action noise, replay sampling, torch).

A run starts every stream from its config seed; a resumed run starts them again from a seed
derived from the config seed and the env step it resumes at, so the episodes and samples after
a resume continue the run instead of repeating those of its start (the envs' states and the
generators' positions are not saved, so the exact uninterrupted streams cannot be continued).
"""

from __future__ import annotations

import numpy as np


def stream_seed(seed: int, env_step: int) -> int:
    """`seed` at env step 0 (an uninterrupted run is unchanged), else a seed drawn from both."""
    if env_step == 0:
        return seed
    return int(np.random.SeedSequence([seed % 2**64, env_step]).generate_state(1)[0])
