"""The sweep file: one YAML describing a whole study, validated strictly, expanded into trials.

    envs: [Hopper-v5]                     # every method runs on each (unless it names its own)
    seeds: 5                              # or a list: [0, 1, 2, 3, 4]
    datasets:                             # recipes, made once per env that needs them
      medium: {quality: medium, steps: 200000}        # `o2o data make` (zoo envs)
      rand:   {random: 10000}                         # `o2o data collect --policy random`
      d4rl:   {source: "d4rl:{env}-medium-v2"}        # an existing dataset ({env}: the env id)
    policies:                             # recipes, pretrained once per env (per seed if per_seed)
      bc: {dataset: medium, algo: bc, steps: 20000, set: {hidden: [256, 256]}}
    methods:                              # the report's method names
      porl: {algo: porl, config: ../porl.yaml, policy: bc}
      rlpd: {algo: rlpd, dataset: medium, grid: {utd: [10, 20]}}
      sac5: {algo: sac, population: true}  # all its seeds as one trial: one population run (SAC family)
      rlpd3: {algo: rlpd, dataset: medium, population: 3}  # at most 3 seeds a trial: 5 seeds as 3 + 2 (two GPUs)
    set: {runtime: {num_rollout_workers: 8}}  # fields for every trial
    resources: {mode: ray, gpus_per_trial: 1, cpus_per_trial: 10, max_concurrent: 2}

A trial is env x method x grid point x seed; its fine-tuning config is built (and validated)
from the method's config file, the sweep's `set`, the method's `set`, the grid point, then the
env, seed, starting policy and dataset. A `population: true` method runs each (env, grid point)'s
seeds as one trial, a population run (`o2o finetune --seeds`) writing the same per-seed run
directories; it is done when all its seeds are. `population: N` cuts the seeds into populations
of at most N, one trial each (their runs one folder deeper, `seeds_0_1_2/seed_0`), so that a
study's populations can share out the GPUs of a machine. Relative `config` paths are read from the sweep file's
folder. Datasets and policies are cached by their settings (`stages.py`), so their paths, and
with them every trial's config, are known before anything runs.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from distributed_o2o.config import (FINETUNE_CONFIGS, FinetuneConfig, LearnerBackendFields, PretrainConfig, StrictModel,
                                    build_config, finetune_config, merge_layers, pretrain_config, read_yaml)
from distributed_o2o.errors import UserError


class DatasetRecipe(StrictModel):
    """Exactly one of: `quality` (zoo-made, with `steps`), `random` (uniform-random transitions),
    `source` (an existing dataset spec; "{env}" is replaced by the env id)."""

    quality: str | None = Field(None, description="zoo policy quality that makes the dataset (o2o data make --quality)")
    steps: int | None = Field(None, gt=0, description="env steps of a zoo-made dataset")
    random: int | None = Field(None, gt=0, description="transitions of uniform-random actions (o2o data collect)")
    source: str | None = Field(None, description="an existing dataset spec (d4rl:..., minari:..., a path); {env}: the env id")
    seed: int = Field(0, description="seed of the dataset's collection")

    @model_validator(mode="after")
    def _one_kind(self) -> DatasetRecipe:
        if sum(x is not None for x in (self.quality, self.random, self.source)) != 1:
            raise ValueError("a dataset needs exactly one of quality (zoo-made), random (transitions) or source (a file)")
        return self


class PolicyRecipe(StrictModel):
    """`dataset` + pretraining settings (`algo`, `steps`, a PretrainConfig `config` file and
    `set` fields), or `source`: an existing checkpoint directory ("{env}" replaced)."""

    dataset: str | None = Field(None, description="name of the sweep's dataset recipe to pretrain on")
    algo: str = Field("bc", description="offline method (o2o pretrain --algo)")
    steps: int | None = Field(None, gt=0, description="gradient steps; None: the config's")
    config: str | None = Field(None, description="YAML file of PretrainConfig fields, relative to the sweep file")
    set: dict[str, Any] = Field(default_factory=dict, description="PretrainConfig fields over the config file")
    per_seed: bool = Field(False, description="one pretraining per trial seed (seeded with it) instead of one per env")
    source: str | None = Field(None, description="an existing checkpoint directory instead of pretraining; {env}: the env id")

    @model_validator(mode="after")
    def _one_kind(self) -> PolicyRecipe:
        if (self.dataset is None) == (self.source is None):
            raise ValueError("a policy needs exactly one of dataset (to pretrain on) or source (a checkpoint directory)")
        return self


class MethodSpec(StrictModel):
    """One method of the report: an online algorithm, its config and starting point."""

    algo: str = Field(description="online method (o2o finetune --algo)")
    config: str | None = Field(None, description="YAML config file, relative to the sweep file")
    policy: str | None = Field(None, description="name of the sweep's policy recipe to start from")
    dataset: str | None = Field(None, description="name of the sweep's dataset recipe used as D_off")
    envs: list[str] | None = Field(None, description="envs of this method; None: the sweep's")
    set: dict[str, Any] = Field(default_factory=dict, description="config fields over the file and the sweep's `set`")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="field -> values: one trial per combination")
    population: bool | int = Field(False, description="true: run the seeds of each (env, grid point) as one trial, one "
                                                      "population run (o2o finetune --seeds); N: populations of at most N seeds")

    @model_validator(mode="after")
    def _population_size(self) -> MethodSpec:
        if not isinstance(self.population, bool) and self.population < 2:
            raise ValueError(f"population: {self.population}: give true (all seeds in one run) or a size of 2 or more")
        return self

    def population_groups(self, seeds: list[int]) -> list[list[int]]:
        """The seeds of each population run (one group: all of them); [] for a method without populations."""
        if self.population is False:
            return []
        size = len(seeds) if self.population is True else self.population
        return [seeds[i:i + size] for i in range(0, len(seeds), size)]


class Resources(StrictModel):
    """How trials are packed. mode ray: each trial's rollout, replay and learner actors in the
    trial's placement group; local: each trial's whole run in its Tune process."""

    mode: Literal["ray", "local"] = Field("ray", description="how each trial runs: ray (actors) or local (one process)")
    gpus_per_trial: float = Field(0.0, ge=0, description="GPUs of each trial (a fraction packs trials on one GPU)")
    cpus_per_trial: float = Field(1.0, gt=0, description="CPUs of each trial, split evenly over its actors")
    max_concurrent: int | None = Field(None, gt=0, description="trials running at once; None: as many as fit")


class SweepSpec(StrictModel):
    """The sweep file."""

    name: str | None = Field(None, description="the study's name")
    envs: list[str] = Field(min_length=1, description="envs every method runs on (unless it names its own)")
    seeds: int | list[int] = Field(5, description="seeds of each trial: a count (0..N-1) or a list")
    online_steps: int | None = Field(None, ge=0, description="online env steps of every trial; None: each config's")
    datasets: dict[str, DatasetRecipe] = Field(default_factory=dict, description="dataset recipes by name, made once per env")
    policies: dict[str, PolicyRecipe] = Field(default_factory=dict, description="starting-policy recipes by name")
    methods: dict[str, MethodSpec] = Field(min_length=1, description="the report's methods by name")
    set: dict[str, Any] = Field(default_factory=dict, description="config fields for every trial")
    resources: Resources = Field(default_factory=Resources, description="how trials are packed on the cluster")

    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)


def short_hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:10]


@dataclass(frozen=True)
class DatasetJob:
    """A dataset recipe for one env; `path` is where the cache keeps it."""

    name: str
    env: str
    recipe: DatasetRecipe
    path: Path

    def spec(self) -> str:
        """What `load_dataset` reads."""
        return self.recipe.source.replace("{env}", self.env) if self.recipe.source else str(self.path)


@dataclass(frozen=True)
class PolicyJob:
    name: str
    env: str
    seed: int | None  # the pretraining seed of a per-seed policy
    config: PretrainConfig | None  # None: an existing checkpoint (`source`)
    dataset: DatasetJob | None
    path: Path


@dataclass(frozen=True)
class Trial:
    env: str
    method: str
    grid: tuple[tuple[str, Any], ...]
    seed: int
    config: FinetuneConfig
    run_dir: Path
    policy: PolicyJob | None
    dataset: DatasetJob | None
    population: bool = False  # one of the seeds of a population run in `run_dir.parent`
    group: str | None = None  # the folder of its population run where a method's seeds make several

    @property
    def id(self) -> str:
        return str(self.run_dir.relative_to(self.run_dir.parents[3 if self.group else 2]))

    def info(self) -> dict[str, Any]:
        """What `o2o report` reads from the run directory (trial.json) to group runs."""
        data = self.dataset or (self.policy.dataset if self.policy else None)
        return {"env": self.env, "method": self.method, "seed": self.seed, "grid": dict(self.grid),
                "dataset": data.name if data else None, "policy": self.policy.name if self.policy else None}


@dataclass
class SweepPlan:
    spec: SweepSpec
    datasets: list[DatasetJob]
    policies: list[PolicyJob]
    trials: list[Trial]


# How a pretraining ran, not what it made: a sweep on another machine or backend finds the same policy.
POLICY_KEY_IGNORED = frozenset({"dataset", "threads", "device", "log_every", "eval_every", "eval_episodes",
                                *LearnerBackendFields.model_fields})


def policy_cache_key(config: PretrainConfig, dataset: str) -> str:
    """The cache key of a pretrained policy: its settings that differ from the defaults (so a field
    added to PretrainConfig later, at its default, leaves every cached policy's key as it was)."""
    settings = config.model_dump(exclude=set(POLICY_KEY_IGNORED), exclude_defaults=True)
    return short_hash({"config": {**settings, "algo": config.algo, "env": config.env, "steps": config.steps},
                       "dataset": dataset})


def load_sweep(path: str | Path) -> SweepSpec:
    return build_config(SweepSpec, read_yaml(path))


def _grid_label(point: tuple[tuple[str, Any], ...]) -> str:
    return ",".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in point)


def _resolve(base: Path, file: str | None) -> str | None:
    if file is None:
        return None
    path = Path(file).expanduser()
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        raise UserError(f"config file '{file}' (read from {base}) does not exist: paths in a sweep file are relative to its folder")
    return str(path)


def plan_sweep(spec: SweepSpec, sweep_file: str | Path, out: str | Path, cache: str | Path) -> SweepPlan:
    """Every stage and trial of `spec`, with cache paths and validated configs; runs nothing."""
    base, out, cache = Path(sweep_file).resolve().parent, Path(out).resolve(), Path(cache).expanduser().resolve()
    datasets: dict[tuple[str, str], DatasetJob] = {}
    policies: dict[tuple[str, str, int | None], PolicyJob] = {}

    def dataset_job(name: str, env: str, where: str) -> DatasetJob:
        if name not in spec.datasets:
            raise UserError(f"{where} names dataset '{name}', which the sweep file's `datasets` does not define "
                            f"(defined: {', '.join(spec.datasets) or 'none'})")
        if (name, env) not in datasets:
            recipe = spec.datasets[name]
            key = short_hash({"env": env, **recipe.model_dump()})
            datasets[name, env] = DatasetJob(name, env, recipe, cache / "datasets" / f"{env}-{name}-{key}.hdf5")
        return datasets[name, env]

    def policy_job(name: str, env: str, seed: int) -> PolicyJob:
        if name not in spec.policies:
            raise UserError(f"a method names policy '{name}', which the sweep file's `policies` does not define "
                            f"(defined: {', '.join(spec.policies) or 'none'})")
        recipe = spec.policies[name]
        own_seed = seed if recipe.per_seed else None
        if (name, env, own_seed) in policies:
            return policies[name, env, own_seed]
        if recipe.source is not None:
            job = PolicyJob(name, env, own_seed, None, None, Path(recipe.source.replace("{env}", env)).expanduser())
        else:
            data = dataset_job(recipe.dataset, env, f"policy '{name}'")
            explicit = {"algo": recipe.algo, "env": env, "dataset": data.spec(), "seed": own_seed or 0,
                        **({"steps": recipe.steps} if recipe.steps else {})}
            config = pretrain_config(_resolve(base, recipe.config), recipe.set, explicit)
            key = policy_cache_key(config, data.path.name if data.recipe.source is None else data.spec())
            suffix = "" if own_seed is None else f"-seed{own_seed}"
            job = PolicyJob(name, env, own_seed, config, data, cache / "policies" / f"{env}-{name}{suffix}-{key}")
        policies[name, env, own_seed] = job
        return job

    trials = []
    for method, m in spec.methods.items():
        if m.algo not in FINETUNE_CONFIGS:
            raise UserError(f"method '{method}': unknown algorithm '{m.algo}': use one of {', '.join(sorted(FINETUNE_CONFIGS))}")
        config_file = _resolve(base, m.config)
        if m.population:
            _check_population_method(method, m, spec)
        points = list(itertools.product(*[[(k, v) for v in values] for k, values in m.grid.items()])) or [()]
        groups = m.population_groups(spec.seed_list())
        group_of = {seed: f"seeds_{'_'.join(map(str, g))}" for g in groups if len(groups) > 1 for seed in g}
        for env in m.envs or spec.envs:
            for point in points:
                for seed in spec.seed_list():
                    policy = policy_job(m.policy, env, seed) if m.policy else None
                    data = dataset_job(m.dataset, env, f"method '{method}'") if m.dataset else None
                    explicit: dict[str, Any] = {"env": env, "seed": seed}
                    if spec.online_steps is not None:
                        explicit["online_steps"] = spec.online_steps
                    if policy:
                        explicit["policy"] = str(policy.path)
                    if data:
                        explicit["dataset"] = data.spec()
                    layers = functools.reduce(merge_layers, (spec.set, m.set, dict(point), explicit))
                    try:
                        config = _fit_packing(finetune_config(m.algo, config_file, layers), spec.resources)
                    except UserError as exc:
                        raise UserError(f"method '{method}': {exc}") from None
                    label = method + (f"@{_grid_label(point)}" if point else "")
                    folder = out / "runs" / env / label / group_of.get(seed, "")
                    trials.append(Trial(env, method, point, seed, config, folder / f"seed_{seed}", policy, data,
                                        bool(m.population), group_of.get(seed)))
    return SweepPlan(spec, list(datasets.values()), list(policies.values()), trials)


def _check_population_method(name: str, method: MethodSpec, spec: SweepSpec) -> None:
    """Refuse a population method whose algorithm, seeds or starting policies a population cannot run."""
    from distributed_o2o.runtime.population_run import check_population

    try:
        check_population(finetune_config(method.algo, None, {}), spec.seed_list())
    except UserError as exc:
        raise UserError(f"method '{name}' (population: true): {exc}") from None
    recipe = spec.policies.get(method.policy) if method.policy else None
    if recipe is not None and recipe.per_seed:
        raise UserError(f"method '{name}' (population: true) starts from policy '{method.policy}', pretrained per seed: a "
                        "population's agents start from one policy; drop `per_seed` or `population`")


def _fit_packing(config: FinetuneConfig, resources: Resources) -> FinetuneConfig:
    """The runtime fields that make a ray-mode trial's actors fit its placement group."""
    if resources.mode == "ray":
        share = trial_bundles(resources, config)[1]["CPU"]
        config = config.model_copy(update={"runtime": config.runtime.model_copy(
            update={"learner_gpus": resources.gpus_per_trial, "actor_cpus": share})})
    return config


def trial_bundles(resources: Resources, config: FinetuneConfig) -> list[dict[str, float]]:
    """The placement group of one trial: its Tune process (the driver), then in ray mode the
    learner (with the trial's GPUs) and each rollout actor, `cpus_per_trial` split evenly."""
    if resources.mode == "local":
        return [{"CPU": resources.cpus_per_trial, "GPU": resources.gpus_per_trial}]
    share = resources.cpus_per_trial / (config.runtime.num_rollout_workers + 2)
    return [{"CPU": share}, {"CPU": share, "GPU": resources.gpus_per_trial}] + [{"CPU": share}] * config.runtime.num_rollout_workers
