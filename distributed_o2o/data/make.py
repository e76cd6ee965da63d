"""`o2o data make`: D4RL-protocol datasets built from the zoo (distributed_o2o/zoo).

random / medium / expert: the zoo policy of that quality acting with sampled actions (as
D4RL's behaviour policies did) for `steps` transitions; medium-expert: medium then expert,
half each; medium-replay: the zoo's recorded replay (first whole episodes up to `steps`).
Deterministic for a seed: env i starts from seed + i, the policy samples from torch's
global generator seeded with `seed` (expert half of medium-expert: seed + 1).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from distributed_o2o.checkpoint import load_policy
from distributed_o2o.data.collect import collect_dataset
from distributed_o2o.data.dataset import OfflineDataset, episode_returns, validate_columns
from distributed_o2o.data.writer import write_dataset
from distributed_o2o.errors import UserError
from distributed_o2o.zoo import ZOO_DIR, ZooEntry, zoo_entry
from distributed_o2o.zoo.build import episode_ends, load_compact

QUALITIES = ("random", "medium", "medium-replay", "medium-expert", "expert")
DEFAULT_STEPS = {"medium-expert": 2_000_000}  # D4RL's sizes; the rest 1M (medium-replay: what the zoo holds)
NUM_ENVS = 8  # part of what makes a dataset: fixed, so a seed means one dataset


def make_dataset(env_id: str, quality: str, steps: int | None = None, seed: int = 0, progress: bool = True,
                 zoo_root: Path = ZOO_DIR) -> OfflineDataset:
    if quality not in QUALITIES:
        raise UserError(f"unknown dataset quality '{quality}': use one of {', '.join(QUALITIES)}")
    if steps is not None and steps < 1:
        raise UserError(f"--steps {steps}: a dataset needs at least one transition")
    entry = zoo_entry(env_id, zoo_root)
    if quality == "medium-replay":
        dataset = _medium_replay(entry, steps)
    elif quality == "medium-expert":
        total = steps or DEFAULT_STEPS[quality]
        dataset = _concat(_sampled(entry, "medium", total // 2, seed, progress),
                          _sampled(entry, "expert", total - total // 2, seed + 1, progress))
    else:
        dataset = _sampled(entry, quality, steps or DEFAULT_STEPS.get(quality, 1_000_000), seed, progress)
    episodes = entry.info["evaluation"]["episodes"]
    attrs = {**dataset.attrs, "zoo_quality": quality, "seed": seed,
             "ref_scores_measured_by": f"zoo random / expert policies, {episodes} episodes each"}
    return dataclasses.replace(dataset, ref_min_score=entry.ref_min_score, ref_max_score=entry.ref_max_score, attrs=attrs)


def write_made_dataset(path: str | Path, dataset: OfflineDataset) -> Path:
    """Write a `make_dataset` result with its provenance (zoo quality, seed, references)."""
    return write_dataset(path, dataset, env_id=dataset.env_id, behavior_policy=f"zoo {dataset.attrs['zoo_quality']}",
                         seed=dataset.attrs["seed"], ref_min_score=dataset.ref_min_score,
                         ref_max_score=dataset.ref_max_score, ref_scores_measured_by=dataset.attrs["ref_scores_measured_by"])


def _sampled(entry: ZooEntry, quality: str, steps: int, seed: int, progress: bool) -> OfflineDataset:
    policy = load_policy(entry.policy_dir(quality), entry.env_id)
    torch.manual_seed(seed)  # the policy samples from torch's global generator

    def act(obs: np.ndarray) -> np.ndarray:
        return policy.act(obs, deterministic=False)

    return collect_dataset(entry.env_id, act, steps, seed=seed, num_envs=NUM_ENVS, progress=progress)


def _medium_replay(entry: ZooEntry, steps: int | None) -> OfflineDataset:
    arrays = load_compact(entry.medium_replay_file)
    ends = np.flatnonzero(episode_ends(arrays))
    if steps is not None:  # whole episodes only
        kept = ends[ends < steps]
        if kept.size == 0:
            raise UserError(f"--steps {steps} is shorter than the first episode of the medium-replay ({ends[0] + 1} steps)")
        arrays = {k: v[: kept[-1] + 1] for k, v in arrays.items()}
    columns = validate_columns(arrays, f"the zoo's medium-replay of {entry.env_id}")
    returns = episode_returns(columns["rewards"], columns["terminals"] | columns["timeouts"])
    return OfflineDataset(**columns, episode_returns=returns, source="o2o", env_id=entry.env_id)


def _concat(first: OfflineDataset, second: OfflineDataset) -> OfflineDataset:
    names = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts", "episode_returns")
    joined = {name: np.concatenate([getattr(first, name), getattr(second, name)]) for name in names}
    return OfflineDataset(**joined, source="o2o", env_id=first.env_id)
