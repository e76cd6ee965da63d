"""Make a zoo entry from a SAC run directory (`o2o finetune --algo sac --config configs/zoo-sac.yaml`).

- expert: of the `expert_candidates` checkpoints with the best training evaluations, the one
  with the best mean return over `episodes` fresh episodes; R_max is that mean.
- random: the run's step-0 checkpoint (the randomly initialised policy); R_min is its mean.
- medium: the first checkpoint whose training evaluation reached R_min + (R_max − R_min)/3 and
  whose `episodes`-episode mean reached R_min + MEDIUM_ACCEPT of that third (else the next such
  one, up to MEDIUM_TRIES).
- medium-replay: the run's replay up to the medium checkpoint's env step, each env's
  transitions put back in time order (so episodes are contiguous rows); if it holds more
  than `max_replay_transitions`, whole episodes are drawn without replacement with a seeded
  generator (in their original order) until the cap, and the entry says so.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np

from distributed_o2o.checkpoint import load_checkpoint, load_policy, save_checkpoint
from distributed_o2o.errors import UserError
from distributed_o2o.evaluation import evaluate_policy
from distributed_o2o.runtime.resume_state import ResumeStore
from distributed_o2o.runtime.run_dir import RunDir
from distributed_o2o.zoo import ENTRY_FILE, MAX_REPLAY_TRANSITIONS, MEDIUM_REPLAY_FILE, ZOO_DIR

EVAL_SEED = 424_242  # differs from every seed a run's evaluator uses
MEDIUM_ACCEPT = 0.8
MEDIUM_TRIES = 5
_DATA_COLUMNS = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")


def build_zoo_entry(run_path: str | Path, out_root: str | Path = ZOO_DIR, *, episodes: int = 100, expert_candidates: int = 3,
                    max_replay_transitions: int = MAX_REPLAY_TRANSITIONS, seed: int = 0,
                    log: Callable[[str], None] = print) -> dict[str, Any]:
    if not (Path(run_path) / "config.yaml").is_file():  # checked before RunDir, which would create the directory
        raise UserError(f"'{run_path}' is not a run directory (config.yaml is missing): pass the --out of a SAC run")
    run = RunDir(run_path)
    config = run.read_config()
    env_id = config["env"]
    evals = [m for m in run.read_metrics() if run.checkpoint_dir(m["env_steps"]).is_dir()]
    if len(evals) < 3 or evals[0]["env_steps"] != 0:
        raise UserError(f"run '{run_path}' has too few checkpoints (need step 0 and at least two more): let it train longer")

    measured_at: dict[int, dict[str, Any]] = {}

    def measure(record: dict) -> dict[str, Any]:
        if record["env_steps"] in measured_at:
            return measured_at[record["env_steps"]]
        policy = load_policy(run.checkpoint_dir(record["env_steps"]), env_id)
        result = evaluate_policy(policy, env_id, episodes, seed=EVAL_SEED, num_envs=10)
        measured = {"env_steps": record["env_steps"], "return_mean": result.return_mean, "return_std": result.return_std,
                    "length_mean": result.length_mean, "episodes": episodes, "training_eval_return": record["return_mean"]}
        log(f"{env_id} step {record['env_steps']}: {result.return_mean:.1f} ± {result.return_std:.1f} over {episodes} episodes")
        measured_at[record["env_steps"]] = measured
        return measured

    best = sorted(evals[1:], key=lambda m: m["return_mean"], reverse=True)[:expert_candidates]
    expert = max((measure(m) for m in best), key=lambda m: m["return_mean"])
    random = measure(evals[0])
    target = random["return_mean"] + (expert["return_mean"] - random["return_mean"]) / 3
    medium = None
    for record in [m for m in evals[1:] if m["return_mean"] >= target][:MEDIUM_TRIES]:
        measured = measure(record)
        if measured["return_mean"] >= random["return_mean"] + MEDIUM_ACCEPT * (target - random["return_mean"]):
            medium = measured
            break
    if medium is None:
        raise UserError(f"no checkpoint of '{run_path}' holds a third of the expert's return over {episodes} episodes: "
                        "evaluate more often (eval_every) or train longer")

    out = Path(out_root) / env_id
    out.mkdir(parents=True, exist_ok=True)
    refs = {"ref_min_score": random["return_mean"], "ref_max_score": expert["return_mean"]}
    policies = {"random": random, "medium": medium, "expert": expert}
    for quality, measured in policies.items():
        modules = load_checkpoint(run.checkpoint_dir(measured["env_steps"]), names=["policy"]).modules
        save_checkpoint(out / quality, modules, env_id=env_id, algo=config["algo"], config=config,
                        extra={"zoo_quality": quality, **measured, **refs})
    replay_info = _subsample(medium_replay(run, medium["env_steps"]), max_replay_transitions, seed)
    save_compact(out / MEDIUM_REPLAY_FILE, replay_info.pop("arrays"))
    entry = {
        # The simulator's version: the measured returns and references hold for it.
        "env_id": env_id, **refs, "mujoco_version": metadata.version("mujoco"), "policies": policies, "medium_replay": replay_info,
        "evaluation": {"episodes": episodes, "seed": EVAL_SEED, "actions": "policy mode (deterministic)"},
        "training_curve": [[m["env_steps"], m["return_mean"]] for m in run.read_metrics()],
        "run_config": config,
    }
    (out / ENTRY_FILE).write_text(json.dumps(entry, indent=1))
    log(f"wrote the zoo entry for {env_id} to {out}")
    return entry


def medium_replay(run: RunDir, env_steps: int) -> dict[str, np.ndarray]:
    """The first `env_steps` transitions the run stored, each env's rows in time order, the
    last row of an episode cut off at that point marked as a timeout."""
    save = ResumeStore(run.resume_dir).latest(warn=print)
    files = save.replay_files() if save is not None else []
    if len(files) != 1:
        raise UserError(f"run '{run.path}' saved {len(files)} replay files; the medium-replay needs the single-shard "
                        "replay (runtime.replay_shards: 1) to know the insertion order")
    with np.load(files[0]) as saved:
        if int(saved["inserted"]) != len(saved["rewards"]):
            raise UserError(f"the replay of '{run.path}' wrapped around (replay_capacity below the run's env steps): "
                            "its first transitions are gone")
        if len(saved["rewards"]) < env_steps:
            raise UserError(f"the replay of '{run.path}' was saved at {len(saved['rewards'])} transitions, before the "
                            f"medium checkpoint at {env_steps}: save the resume state more often (resume_every)")
        arrays = {name: saved[name][:env_steps] for name in _DATA_COLUMNS}
        stream = saved["stream"][:env_steps]
    order = np.argsort(stream, kind="stable")
    arrays = {name: column[order] for name, column in arrays.items()}
    stream = stream[order]
    # An episode also ends where the next row does not continue it (the stream's last row, or
    # an env that was reset because its worker restarted): such rows become timeouts.
    continues = (stream[1:] == stream[:-1]) & np.all(arrays["next_observations"][:-1] == arrays["observations"][1:], axis=1)
    cut = ~np.append(continues, False) & (arrays["terminals"] == 0)
    arrays["timeouts"] = np.where(cut, 1.0, arrays["timeouts"]).astype(np.float32)
    return arrays


def episode_ends(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Per row: does an episode end there (termination or timeout)?"""
    return (arrays["terminals"] > 0) | (arrays["timeouts"] > 0)


def save_compact(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Rows whose episodes are contiguous, without the next observations that repeat the next
    row's observation: only episode ends keep theirs (`load_compact` restores the column)."""
    ends = episode_ends(arrays)
    np.savez_compressed(path, **{k: arrays[k] for k in _DATA_COLUMNS if k != "next_observations"},
                        end_next_observations=arrays["next_observations"][ends])


def load_compact(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as saved:
        arrays = {name: saved[name] for name in saved.files}
    ends = episode_ends(arrays)
    next_obs = np.empty_like(arrays["observations"])
    next_obs[:-1] = arrays["observations"][1:]
    next_obs[ends] = arrays.pop("end_next_observations")
    return {**arrays, "next_observations": next_obs}


def _subsample(arrays: dict[str, np.ndarray], cap: int, seed: int) -> dict[str, Any]:
    """Whole episodes, at most `cap` transitions, drawn with a seeded generator, kept in order."""
    ends = np.flatnonzero(episode_ends(arrays))
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    info = {"full_transitions": int(len(arrays["rewards"])), "full_episodes": int(len(ends))}
    if info["full_transitions"] <= cap:
        return {**info, "arrays": arrays, "transitions": info["full_transitions"], "episodes": info["full_episodes"],
                "subsampled": False, "selection": "all of it"}
    chosen, total = [], 0
    for episode in np.random.default_rng(seed).permutation(len(ends)):
        if total + lengths[episode] <= cap:
            chosen.append(episode)
            total += lengths[episode]
    chosen.sort()
    rows = np.concatenate([np.arange(starts[e], ends[e] + 1) for e in chosen])
    selection = (f"{len(chosen)} of {len(ends)} episodes drawn without replacement by numpy default_rng({seed}).permutation, "
                 f"taken while they fit in {cap} transitions, kept in time order")
    return {**info, "arrays": {name: column[rows] for name, column in arrays.items()}, "transitions": int(total),
            "episodes": len(chosen), "subsampled": True, "selection": selection}
