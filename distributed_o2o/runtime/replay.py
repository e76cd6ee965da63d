"""Replay storage: preallocated numpy columns (no Python object per transition).

`ReplayTable` is a FIFO ring of transitions; `ReplayService` holds the online table, an
optional immutable offline table (D_off, loaded once) and a FIFO queue of on-policy
fragments, and mixes batches at a given ratio. A run has one or more services (shards);
`RateLimiter` keeps the rate of sampling to inserting at the algorithm's update-to-data ratio.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from distributed_o2o.durable import sync_file
from distributed_o2o.errors import UserError
from distributed_o2o.runtime.streams import stream_seed

# `policy_version`: the learner version that acted; `stream`: which env of which rollout worker
# (worker index x envs per worker + env index), so each env's episodes can be read back in order.
COLUMNS = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts", "policy_version", "stream")


def _column_specs(obs_dim: int, act_dim: int) -> dict[str, tuple[tuple[int, ...], type]]:
    return {
        "observations": ((obs_dim,), np.float32),
        "actions": ((act_dim,), np.float32),
        "rewards": ((), np.float32),
        "next_observations": ((obs_dim,), np.float32),
        "terminals": ((), np.float32),
        "timeouts": ((), np.float32),
        "policy_version": ((), np.int32),
        "stream": ((), np.int32),
    }


class ReplayTable:
    """A FIFO ring of `capacity` transitions."""

    def __init__(self, obs_dim: int, act_dim: int, capacity: int):
        self.capacity = capacity
        self.columns = {name: np.zeros((capacity, *shape), dtype) for name, (shape, dtype) in _column_specs(obs_dim, act_dim).items()}
        self.size = 0
        self.cursor = 0  # next row to write
        self.inserted = 0  # transitions ever added

    def __len__(self) -> int:
        return self.size

    def add(self, chunk: dict[str, np.ndarray]) -> None:
        n = len(chunk["rewards"])
        if n > self.capacity:  # only the newest `capacity` rows survive anyway
            chunk = {k: v[-self.capacity:] for k, v in chunk.items()}
            self.inserted += n - self.capacity
            n = self.capacity
        rows = (self.cursor + np.arange(n)) % self.capacity
        for name, column in self.columns.items():
            column[rows] = chunk[name] if name in chunk else 0
        self.cursor = (self.cursor + n) % self.capacity
        self.size = min(self.size + n, self.capacity)
        self.inserted += n

    def sample_rows(self, rng: np.random.Generator, shape: int | tuple[int, ...]) -> np.ndarray:
        return rng.integers(0, self.size, size=shape)

    def gather(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        return {name: column[rows] for name, column in self.columns.items()}

    def since(self, cursor: int) -> dict[str, np.ndarray]:
        """The rows inserted after the first `cursor` ever inserted, oldest first (those still
        held: at most the newest `size`, when the ring has wrapped past `cursor`)."""
        n = min(self.inserted - cursor, self.size)
        return self.gather((self.cursor - n + np.arange(n)) % self.capacity)

    def ordered(self) -> dict[str, np.ndarray]:
        """The stored transitions, oldest first."""
        return self.since(0)

    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.columns.values())


class ReplayService:
    """Online table + optional offline table, sampled at a configured offline ratio, and a FIFO
    queue of whole on-policy fragments (each served once)."""

    def __init__(self, obs_dim: int, act_dim: int, capacity: int, offline: dict[str, np.ndarray] | None = None, seed: int = 0):
        self.online = ReplayTable(obs_dim, act_dim, capacity)
        self.offline = None
        if offline is not None and len(offline["rewards"]):
            self.offline = ReplayTable(obs_dim, act_dim, len(offline["rewards"]))
            self.offline.add(offline)
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.fragments: deque[dict[str, np.ndarray]] = deque()

    def add(self, chunk: dict[str, np.ndarray]) -> None:
        self.online.add(chunk)

    def reseed(self, env_step: int) -> None:
        """A resumed run's sampling stream, from the seed and the env step it resumes at (streams.py)."""
        self.rng = np.random.default_rng(stream_seed(self.seed, env_step))

    def add_fragment(self, fragment):
        """Insert a rollout `Fragment` (flattened) into the online table; returns its receipt."""
        self.online.add(fragment.flat())
        return fragment.receipt()

    def put_fragment(self, fragment):
        """Queue a whole on-policy fragment, time order kept; returns its receipt."""
        self.fragments.append(fragment.arrays)
        return fragment.receipt()

    def take_fragments(self) -> list[dict[str, np.ndarray]]:
        """Every queued fragment, oldest first; each is served once."""
        taken = list(self.fragments)
        self.fragments.clear()
        return taken

    def size(self) -> int:
        return len(self.online)

    def rows_since(self, cursor: int) -> tuple[int, dict[str, np.ndarray]]:
        """The online rows inserted since `cursor` (a count of rows ever inserted, 0 at first)
        and the cursor to ask with next time: how a learner mirrors this shard."""
        return self.online.inserted, self.online.since(cursor)

    def offline_size(self) -> int:
        return 0 if self.offline is None else len(self.offline)

    def sample_many(self, count: int, n_online: int, n_offline: int = 0) -> dict[str, np.ndarray]:
        """`count` batches at once, stacked: arrays (count, n_online + n_offline, ...), online rows
        first; one gather per column whatever `count` is."""
        parts = []
        if n_online:
            if len(self.online) == 0:
                raise RuntimeError("sampling an empty replay: collect transitions before updating")
            parts.append(self.online.gather(self.online.sample_rows(self.rng, (count, n_online))))
        if n_offline:
            parts.append(self.offline.gather(self.offline.sample_rows(self.rng, (count, n_offline))))
        if len(parts) == 1:
            return parts[0]
        return {name: np.concatenate([p[name] for p in parts], axis=1) for name in parts[0]}

    def save(self, path: str | Path, save_id: str) -> None:
        """The online table, oldest first, tagged with the resume save it belongs to, flushed to
        disk; D_off is reloaded from its source on resume."""
        np.savez(path, save_id=np.str_(save_id), inserted=np.int64(self.online.inserted), **self.online.ordered())
        sync_file(path)

    def load(self, path: str | Path) -> None:
        """Append a saved table (a shard may load several files: counts add up)."""
        with np.load(path, allow_pickle=False) as saved:
            chunk = {name: saved[name] for name in COLUMNS if name in saved}
            inserted = int(saved["inserted"])
        self.load_rows(chunk, inserted)

    def load_rows(self, chunk: dict[str, np.ndarray], inserted: int) -> None:
        """Append saved rows, of a table that had `inserted` rows ever inserted."""
        before = self.online.inserted
        self.online.add(chunk)
        self.online.inserted = before + inserted


def split_rows(total: int, weights: Sequence[float]) -> list[int]:
    """`total` rows split in proportion to `weights` by largest remainder (zero weight: no rows)."""
    weights = np.asarray(weights, dtype=np.float64)
    if total == 0 or weights.sum() <= 0:
        return [0] * len(weights)
    exact = total * weights / weights.sum()
    rows = np.floor(exact).astype(np.int64)
    rows[np.argsort(rows - exact, kind="stable")[: total - rows.sum()]] += 1
    return rows.tolist()


def shard_offline(offline: dict[str, np.ndarray] | None, shards: int) -> list[dict[str, np.ndarray] | None]:
    """D_off dealt row by row over `shards` (shard j holds rows j, j + shards, ...)."""
    if offline is None:
        return [None] * shards
    return [{k: v[j::shards] for k, v in offline.items()} for j in range(shards)]


class RateLimiter:
    """Samples per insert held within a tolerance band (Reverb's SampleToInsertRatio, in updates).

    Each inserted transition earns the algorithm's `updates_due` (so samples per insert = UTD x
    batch size) and each update spends one. The learner starts only earned updates: it never
    runs ahead of the data. A rollout chunk starts only while the updates earned but not yet
    finished, plus those that the chunks in flight will earn, stay within `max_lag`. Whichever
    side is faster waits for the other, so the UTD holds either way.
    """

    def __init__(self, max_lag: float, owed: float = 0.0):
        self.max_lag = max_lag
        self.owed = owed  # earned, not started
        self.running = 0  # started, not finished
        self.reserved = 0.0  # to be earned by chunks in flight

    def lag(self) -> float:
        return self.owed + self.running + self.reserved

    def try_reserve(self, updates: float) -> bool:
        """Room for a chunk that will earn `updates`? If so it is reserved."""
        if self.lag() + updates > self.max_lag:
            return False
        self.reserved += updates
        return True

    def settle(self, reserved: float, earned: float) -> None:
        """A chunk arrived (earning `earned`) or was lost (`earned` 0)."""
        self.reserved -= reserved
        self.owed += earned

    def start(self, cap: int) -> int:
        """Updates the learner may start now (at most `cap`)."""
        n = min(int(self.owed), cap)
        self.owed -= n
        self.running += n
        return n

    def finish(self, n: int) -> None:
        self.running -= n


def check_rate_limits(*, chunk: int, utd: float, batch_size: int, tolerance: float | None) -> None:
    """Refuse a limiter band under which rollouts and learner would stall each other; `chunk`
    transitions at `utd` is the rollout chunk that earns the most updates."""
    if tolerance is not None and utd > 0:
        needed = (chunk * utd + 1) * batch_size
        if tolerance < needed:
            raise UserError(
                f"samples_per_insert_tolerance {tolerance:g} is narrower than one rollout chunk ({chunk} transitions x UTD "
                f"{utd:g} x batch {batch_size}) plus one update: rollouts and learner would wait on each other "
                f"forever; set it to at least {needed:g}, or leave it unset")
