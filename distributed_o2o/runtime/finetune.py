"""`o2o finetune`: checks the inputs, builds the components for the chosen mode, runs the driver.

Both modes build the same components from the same inputs: `local` as plain objects in this
process, `ray` as actors (runtime/ray_runtime.py).
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import numpy as np
import torch

from distributed_o2o.algorithms.registry import algorithm_class
from distributed_o2o.checkpoint import load_checkpoint, load_policy, read_metadata
from distributed_o2o.config import RUNTIME_FIELDS, FinetuneConfig, RunMode, finetune_config, merge_layers
from distributed_o2o.data.scores import reference_scores
from distributed_o2o.durable import check_writable
from distributed_o2o.envs import env_spaces
from distributed_o2o.errors import UserError
from distributed_o2o.runtime.cpu_check import cpu_note
from distributed_o2o.runtime.driver import Components, Driver
from distributed_o2o.runtime.evaluator import Evaluator
from distributed_o2o.runtime.graphed import check_learner_backend
from distributed_o2o.runtime.learner import Learner
from distributed_o2o.runtime.replay import ReplayService, shard_offline
from distributed_o2o.runtime.resume_state import ResumeStore
from distributed_o2o.runtime.rollout import RolloutWorker
from distributed_o2o.runtime.run_lock import run_lock
from distributed_o2o.runtime.run_dir import RunDir
from distributed_o2o.runtime.transport import LocalTransport


def _check_inputs(config: FinetuneConfig) -> None:
    if config.env is None:
        raise UserError("no env given: pass --env (e.g. --env Hopper-v5)")
    if config.needs_policy() and config.policy is None:
        raise UserError(f"{config.algo} fine-tunes a pretrained policy: pass --policy CHECKPOINT_DIR (see `o2o pretrain`)")
    if config.needs_dataset() and config.dataset is None:
        raise UserError(f"{config.algo} needs the offline dataset: pass --dataset SPEC (e.g. d4rl:hopper-medium-v2 or a file)")


def _reference_scores(config: FinetuneConfig, dataset) -> tuple[float | None, float | None]:
    """The normalisation references: explicit config, else the dataset's, else the policy
    checkpoint's, else the zoo's for the env."""
    extra = read_metadata(config.policy).get("extra", {}) if config.policy is not None else {}
    return reference_scores(config.env, (config.ref_min_score, config.ref_max_score),
                            None if dataset is None else (dataset.ref_min_score, dataset.ref_max_score),
                            (extra.get("ref_min_score"), extra.get("ref_max_score")))


MODES = get_args(RunMode)
# What `--resume` may change: how the run is spread over processes, and its env-step budget.
RESUMABLE_CHANGES = RUNTIME_FIELDS | {"online_steps"}
# A learner call runs at most this many updates, so weights can be published and the driver
# can start other work between calls (a few ms of overhead per call against tens of ms of work).
MAX_UPDATES_PER_CALL = 64


@dataclass
class RunInputs:
    """Everything the components are built from, loaded and checked once."""

    obs_dim: int
    act_dim: int
    policy: Any
    pretrained: dict[str, Any]  # the checkpoint's other modules the method starts from (critic, value)
    offline: dict[str, np.ndarray] | None  # D_off for the learner (offline stages, OfflineData)
    replay_offline: dict[str, np.ndarray] | None  # D_off mixed into replay batches (off-policy methods)
    ref_min: float | None
    ref_max: float | None

    @property
    def references(self) -> dict[str, float | None]:
        """The references as checkpoints record them (`extra`)."""
        return {"ref_min_score": self.ref_min, "ref_max_score": self.ref_max}

    def shard_capacity(self, config: FinetuneConfig) -> int:
        return -(-config.replay_capacity // config.replay_shards)


def load_inputs(config: FinetuneConfig) -> RunInputs:
    _check_inputs(config)
    spaces = env_spaces(config.env, config.env_kwargs)
    cls = algorithm_class(config.algo)
    policy = dataset = None
    pretrained: dict[str, Any] = {}
    if config.policy is not None:
        policy = load_policy(config.policy, config.env, family=cls.policy_family, env_kwargs=config.env_kwargs,
                             init_std=config.init_std)
        available = set(read_metadata(config.policy)["modules"])
        if "critic" in cls.pretrained_modules and "critic" not in available:
            raise UserError(f"{config.algo} loads the offline critic too, but '{config.policy}' holds only a policy: "
                            "pretrain with a method that has a critic (td3bc, iql, cql)")
        wanted = [name for name in cls.pretrained_modules if name in available]
        if wanted:
            pretrained = load_checkpoint(config.policy, names=wanted).modules
    if config.dataset is not None:
        from distributed_o2o.data import load_dataset

        dataset = load_dataset(config.dataset, config.env, config.allow_other_env_dataset)
    offline = None if dataset is None else {k: getattr(dataset, k) for k in
                                             ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")}
    ref_min, ref_max = _reference_scores(config, dataset)
    # Off-policy methods with a dataset mix D_off into batches at their offline_ratio.
    return RunInputs(spaces.obs_dim, spaces.act_dim, policy, pretrained, offline, None if cls.on_policy else offline, ref_min, ref_max)


def build_local_components(config: FinetuneConfig, inputs: RunInputs) -> Components:
    """Every component as a plain object in this process (the pdb-able debug mode)."""
    learner = Learner(config, inputs.obs_dim, inputs.act_dim, policy=inputs.policy, pretrained=inputs.pretrained, offline=inputs.offline)
    arch = learner.policy_arch()
    workers = [RolloutWorker(config.env, config.envs_per_worker, config.seed, arch, config.env_kwargs, worker_index=i)
               for i in range(config.num_rollout_workers)]
    capacity = inputs.shard_capacity(config)
    replays = [ReplayService(inputs.obs_dim, inputs.act_dim, capacity, part, config.seed + j)
               for j, part in enumerate(shard_offline(inputs.replay_offline, config.replay_shards))]
    learner.attach_replay(replays)
    evaluator = Evaluator(config.env, config.eval_episodes, config.seed + 10_000, config.env_kwargs, inputs.ref_min, inputs.ref_max)
    # One vector step per collect, updates right after it: the order of a single-process loop.
    return Components(LocalTransport(), learner, workers, replays, evaluator, envs_per_worker=config.envs_per_worker,
                      chunk_transitions=config.envs_per_worker, collects_per_worker=1, max_updates_per_call=MAX_UPDATES_PER_CALL,
                      shard_capacity=capacity, references=inputs.references)


def run_id(path: str | Path) -> str:
    """The run's name in actor names: the directory name plus a hash of its absolute path."""
    path = Path(path).resolve()
    return f"{path.name}-{hashlib.sha256(str(path).encode()).hexdigest()[:6]}"


@contextmanager
def _components(config: FinetuneConfig, mode: str, run_dir: RunDir, address: str | None, announce: bool = False) -> Iterator[Components]:
    if mode not in MODES:
        raise UserError(f"unknown mode '{mode}': use one of {', '.join(MODES)}")
    if mode == "local" and address is not None:
        raise UserError("--address joins a Ray cluster: it needs --mode ray")
    inputs = load_inputs(config)  # every input is checked before any note or work
    on_this_cpu = address is None and config.device != "cuda" and not torch.cuda.is_available()
    if on_this_cpu:  # the learner will run here, without a GPU
        check_learner_backend(config, algorithm_class(config.algo), on_gpu=False)
        if announce:
            _note_cpu_duration(config, inputs)
    if mode == "local":
        yield build_local_components(config, inputs)
        return
    from distributed_o2o.runtime.ray_runtime import ray_components, record_address

    with ray_components(config, inputs, run_id(run_dir.path), address) as components:
        record_address(run_dir.path)
        yield components


def _note_cpu_duration(config: FinetuneConfig, inputs: RunInputs) -> None:
    """One line before a long run whose learner will be on this machine's CPU."""
    note = cpu_note(config, inputs.obs_dim, inputs.act_dim)
    if note:
        print(note, file=sys.stderr)


def run_finetune(config: FinetuneConfig, out_dir: str | Path, mode: str = "local", progress: bool = True,
                 address: str | None = None) -> dict[str, Any]:
    check_writable(out_dir, "the run")
    run_dir = RunDir(out_dir)
    with run_lock(run_dir.path, _warn):
        earlier = run_dir.earlier_run_files()
        if earlier:
            raise UserError(f"'{out_dir}' already holds a run ({', '.join(earlier)}): continue it with --resume {out_dir}, "
                            "or pass another --out")
        return _drive(config, run_dir, mode, progress, address, resume=False)


def resume_finetune(run_path: str | Path, mode: str = "local", progress: bool = True, address: str | None = None,
                    changes: dict[str, Any] | None = None) -> dict[str, Any]:
    """Continue a run from its last resume save with its saved config. `changes` may set how it
    is spread over processes (RUNTIME_FIELDS: workers, shards...) and raise `online_steps`
    (extending the run); any other field given must keep its saved value. A run that stopped
    before its first save starts again from its config, reusing its cached offline stages."""
    check_writable(run_path, "the run")
    run_dir = RunDir(run_path)
    with run_lock(run_dir.path, _warn):
        if not run_dir.config_file.exists():
            raise UserError(f"'{run_path}' is not a run directory (config.yaml is missing): pass the --out of an earlier "
                            "`o2o finetune`")
        config = _resumed_config(run_dir, changes or {})
        if ResumeStore(run_dir.resume_dir).saves():
            return _drive(config, run_dir, mode, progress, address, resume=True)
        results = [name for name in run_dir.earlier_run_files() if name not in ("config.yaml", "resume")]
        if results:
            raise UserError(f"run '{run_path}' holds results ({', '.join(results)}) but no resume state (resume/ was "
                            "removed): it cannot be continued; start it again in another --out")
        _warn(f"run '{run_path}' stopped before its first resume save: starting it again (cached offline stages are reused)")
        return _drive(config, run_dir, mode, progress, address, resume=False)


def _resumed_config(run_dir: RunDir, changes: dict[str, Any]) -> FinetuneConfig:
    """The saved config with `changes`, refused (one line naming the field) where they touch
    anything but `online_steps` and the runtime fields."""
    saved = run_dir.read_config()
    algo = changes.get("algo", saved["algo"])
    if algo != saved["algo"]:
        raise UserError(f"--resume continues the saved config: 'algo' cannot change (the run is {saved['algo']}, "
                        f"{algo} given); start a new run with another --out")
    before = finetune_config(algo, None, saved)
    config = finetune_config(algo, None, merge_layers(saved, changes))
    for name in type(config).model_fields:
        if name not in RESUMABLE_CHANGES and getattr(config, name) != getattr(before, name):
            raise UserError(f"--resume continues the saved config: '{name}' cannot change ({getattr(before, name)!r} in "
                            f"{run_dir.config_file}, {getattr(config, name)!r} given); only --online-steps and runtime "
                            "fields (--num-rollout-workers, ...) may, or start a new run with another --out")
    return config


def _drive(config: FinetuneConfig, run_dir: RunDir, mode: str, progress: bool, address: str | None, resume: bool) -> dict[str, Any]:
    with _components(config, mode, run_dir, address, announce=not resume) as components:
        return Driver(config, run_dir, components, progress).run(resume=resume)


def _warn(line: str) -> None:
    print(line, file=sys.stderr)
