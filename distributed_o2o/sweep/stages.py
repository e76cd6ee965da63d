"""The sweep's stages before fine-tuning: datasets made and policies pretrained, each cached
under the path its settings hash to (`spec.py`), so a later sweep that needs the same dataset or
policy reuses it. Each is written beside its final path and moved there in one rename, so an
interrupted stage leaves no half-written cache entry.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from distributed_o2o.sweep.spec import DatasetJob, PolicyJob, Trial


def is_cached(job: DatasetJob | PolicyJob) -> bool:
    """Whether the stage's output exists (an existing dataset or checkpoint counts)."""
    if isinstance(job, DatasetJob):
        return job.recipe.source is not None or job.path.is_file()
    return job.config is None or (job.path / "metadata.json").is_file()


def make_dataset_job(job: DatasetJob, progress: bool = False) -> None:
    from distributed_o2o.data import collect_dataset, write_dataset
    from distributed_o2o.data.collect import uniform_actor
    from distributed_o2o.data.make import make_dataset, write_made_dataset
    from distributed_o2o.envs import env_spaces

    recipe = job.recipe

    def write(tmp: Path) -> None:
        if recipe.quality is not None:
            write_made_dataset(tmp, make_dataset(job.env, recipe.quality, recipe.steps, recipe.seed, progress=progress))
        else:
            act = uniform_actor(env_spaces(job.env).act_dim, recipe.seed)
            dataset = collect_dataset(job.env, act, recipe.random, seed=recipe.seed, progress=progress)
            write_dataset(tmp, dataset, env_id=job.env, behavior_policy="random", seed=recipe.seed)

    _atomically(job.path, write)


def pretrain_policy_job(job: PolicyJob, progress: bool = False) -> None:
    from distributed_o2o.algorithms.offline import run_pretraining
    from distributed_o2o.data import load_dataset

    dataset = load_dataset(job.dataset.spec(), job.env)
    _atomically(job.path, lambda tmp: run_pretraining(job.config, dataset, tmp, progress=progress))


def _atomically(path: Path, write: Callable[[Path], object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    if tmp.is_dir():
        shutil.rmtree(tmp)
    tmp.unlink(missing_ok=True)
    write(tmp)
    tmp.rename(path)


def needed_stages(trials: list[Trial]) -> tuple[list[DatasetJob], list[PolicyJob]]:
    """The uncached datasets and policies that `trials` need (a dataset only for an uncached
    policy or a trial that reads it), in a stable order."""
    policies = {t.policy.path: t.policy for t in trials if t.policy and not is_cached(t.policy)}
    wanted = [p.dataset for p in policies.values() if p.dataset] + [t.dataset for t in trials if t.dataset]
    datasets = {d.path: d for d in wanted if not is_cached(d)}
    return list(datasets.values()), list(policies.values())


def run_stages(trials: list[Trial], say: Callable[[str], None]) -> None:
    """Make the datasets and policies that `trials` need and the cache lacks (datasets first)."""
    datasets, policies = needed_stages(trials)
    for job in datasets:
        say(f"dataset {job.name} for {job.env}: making {job.path.name}")
        make_dataset_job(job)
    for job in policies:
        if job.config is not None:
            seed = "" if job.seed is None else f" (seed {job.seed})"
            say(f"policy {job.name} for {job.env}{seed}: {job.config.algo} pretraining, {job.config.steps} steps")
            pretrain_policy_job(job)
