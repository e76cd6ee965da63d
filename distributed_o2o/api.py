"""The Python API behind `from distributed_o2o import ...`: the CLI's commands as functions.

Config fields are keyword arguments (nested blocks as dicts, e.g. `constraint={"eps_end": 0.5}`),
layered over the schema's defaults and an optional YAML file exactly as the CLI layers them.
Bad input raises `distributed_o2o.UserError` with one line that names the problem and the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distributed_o2o.config import DEFAULT_MODE, finetune_config, pretrain_config
from distributed_o2o.errors import UserError


def finetune(algo: str | None = None, *, out: str | Path, config: str | Path | None = None, mode: str = DEFAULT_MODE,
             address: str | None = None, progress: bool = True, seeds: list[int] | None = None, **fields: Any) -> dict[str, Any]:
    """Fine-tune online, as `o2o finetune` does (the same default mode: a local Ray instance;
    `mode="local"` runs in this process). Returns the run's summary (also in `out/summary.json`);
    with `seeds`, a population run's: {"seeds", "run_dir", "runs": each seed's, in `out/seed_<n>/`}.

        finetune("porl", env="Hopper-v5", policy="ckpt/bc", online_steps=20_000, out="runs/porl")
    """
    from distributed_o2o.runtime.finetune import run_finetune

    cfg = finetune_config(algo, None if config is None else str(config), fields)
    if seeds is not None:
        from distributed_o2o.runtime.population_run import check_seed_options

        check_seed_options(fields.get("seed"))
    return run_finetune(cfg, out, mode, progress=progress, address=address, seeds=seeds)


def resume(run_dir: str | Path, *, mode: str = DEFAULT_MODE, address: str | None = None, progress: bool = True,
           **changes: Any) -> dict[str, Any]:
    """Continue a stopped run from its last checkpoint, as `o2o finetune --resume` does: runtime
    fields may change and `online_steps` may grow (extending the run); nothing else."""
    from distributed_o2o.runtime.finetune import resume_finetune

    return resume_finetune(run_dir, mode, progress=progress, address=address, changes=changes)


def pretrain(algo: str = "bc", dataset: str | None = None, *, out: str | Path, config: str | Path | None = None,
             progress: bool = True, **fields: Any) -> Path:
    """Pretrain a policy offline, as `o2o pretrain` does; returns the checkpoint directory, which
    also holds the losses every `log_every` steps (`metrics.jsonl`, TensorBoard events in `tb/`).

        pretrain("bc", "data/hopper-medium.hdf5", steps=100_000, out="ckpt/bc")
    """
    explicit = {key: value for key, value in {"algo": algo, "dataset": dataset}.items() if value is not None}
    cfg = pretrain_config(config, fields, explicit)
    if cfg.dataset is None:
        raise UserError("no dataset given: pass --dataset (or set `dataset` in the --config file)")
    from distributed_o2o.durable import check_writable

    check_writable(out, "the checkpoint")  # before any work

    from distributed_o2o.algorithms.offline import run_pretraining
    from distributed_o2o.data import load_dataset

    return run_pretraining(cfg, load_dataset(cfg.dataset, cfg.env, cfg.allow_other_env_dataset), out, progress=progress)


def evaluate(policy: str | Path, env: str | None = None, episodes: int = 10, seed: int = 10_000) -> dict[str, Any]:
    """Evaluate a checkpoint's deterministic policy for `episodes` episodes on `env` (default: the
    env the checkpoint records). The result holds the returns, their mean and std, and the
    normalised score (None where no references are known: checkpoint's, else the zoo's)."""
    from distributed_o2o.checkpoint import load_policy, read_metadata
    from distributed_o2o.data.scores import normalized_score, reference_scores
    from distributed_o2o.evaluation import evaluate_policy

    metadata = read_metadata(policy)
    env = env or metadata.get("env_id")
    if env is None:
        raise UserError(f"checkpoint '{policy}' records no env: pass --env (e.g. --env Hopper-v5)")
    result = evaluate_policy(load_policy(policy, env), env, episodes, seed=seed).to_dict()
    extra = metadata.get("extra", {})
    ref_min, ref_max = reference_scores(env, (extra.get("ref_min_score"), extra.get("ref_max_score")))
    score = None if ref_min is None else normalized_score(result["return_mean"], ref_min=ref_min, ref_max=ref_max)
    return {"env": env, **result, "normalized_score": score}
