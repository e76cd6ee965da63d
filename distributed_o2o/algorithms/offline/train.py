"""The offline pretraining loop: dataset in, checkpoint (policy, critic, value) out.

On a GPU the steps run on the graphed learner path (runtime/graphed.py: D_off mirrored on the
device, `graph_steps` steps per CUDA graph, compiled) unless `learner_backend` is "eager"; on
a CPU they run eagerly, one `Pretrainer.step` at a time.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from torch import nn

from distributed_o2o.algorithms.base import OfflineData
from distributed_o2o.algorithms.networks import ObsNormalizer
from distributed_o2o.algorithms.offline.bc import BCDetPretrainer, BCPretrainer, Pretrainer
from distributed_o2o.algorithms.offline.cql import CQLPretrainer
from distributed_o2o.algorithms.offline.iql import IQLPretrainer
from distributed_o2o.algorithms.offline.td3bc import TD3BCPretrainer
from distributed_o2o.checkpoint import save_checkpoint
from distributed_o2o.data.scores import reference_scores
from distributed_o2o.errors import UserError
from distributed_o2o.metrics_log import METRICS_FILE, TENSORBOARD_DIR, MetricsLog
from distributed_o2o.progress import progress_bar
from distributed_o2o.runtime.evaluator import Evaluator
from distributed_o2o.runtime.graphed import graphed_updater
from distributed_o2o.runtime.learner import pick_device
from distributed_o2o.runtime.run_dir import Rate

PRETRAINERS: dict[str, type[Pretrainer]] = {
    "bc": BCPretrainer,
    "bc-det": BCDetPretrainer,
    "td3bc": TD3BCPretrainer,
    "iql": IQLPretrainer,
    "cql": CQLPretrainer,
}

# On a CPU, the first steps measure whether torch's default thread count (all cores) trains
# faster than one thread. Networks this small gain little from threads, and where other work
# shares the cores, threads that contend for them made steps 5-10x slower, intermittently
# (docs/performance.md), while one thread stays steady: more threads must win clearly in
# every round of the probe.
THREAD_PROBE_STEPS = 20
THREAD_PROBE_ROUNDS = 3
THREAD_PROBE_MARGIN = 0.8  # the default count's time must be below this fraction of one thread's
THREAD_PROBE_MIN_STEPS = 1000  # shorter runs keep torch's default
EVAL_SEED = 10_000  # plus the run's seed: the evaluator's (its start states hashed with the step)


def fastest_threads(train_step: Callable[[], None], steps: int, rounds: int = THREAD_PROBE_ROUNDS) -> int:
    """Run `steps` training steps at torch's default thread count (warm-up), then `rounds` pairs
    of `steps` at one thread and `steps` at the default; set and return the default only if it
    was faster by the margin in every round, else one."""
    default = torch.get_num_threads()

    def timed(threads: int) -> float:
        torch.set_num_threads(threads)
        start = time.perf_counter()
        for _ in range(steps):
            train_step()
        return time.perf_counter() - start

    timed(default)
    pairs = [(timed(1), timed(default)) for _ in range(rounds)]
    best = default if all(many < THREAD_PROBE_MARGIN * one for one, many in pairs) else 1
    torch.set_num_threads(best)
    return best


_COLUMNS = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")


def set_obs_stats(networks: list[nn.Module], observations: np.ndarray, eps: float) -> None:
    """Give every observation normaliser inside `networks` the dataset's mean and std (+ eps)."""
    mean, std = observations.mean(axis=0), observations.std(axis=0)
    for network in networks:
        for module in network.modules():
            if isinstance(module, ObsNormalizer):
                module.set_stats(mean, std, eps=eps)


def run_pretraining(config, dataset, out_dir: str | Path, progress: bool = True) -> Path:
    """Train `config.algo` for `config.steps` gradient steps on `dataset`; write the checkpoint to `out_dir`,
    with `metrics.jsonl` and TensorBoard events (`tb/`) beside it: every `config.log_every` steps, the
    means of the pretrainer's scalars since the last line, steps/s and the wall time; every
    `config.eval_every` steps (if set) also the policy's evaluation (`evaluate_pretrained`).

    `config` is a PretrainConfig; `dataset` anything with the OfflineDataset columns, `env_id`,
    `obs_dim`, `act_dim` and the reference scores.
    """
    start = time.perf_counter()
    if config.eval_every and not dataset.env_id:
        raise UserError("eval_every needs the env the dataset is for: pass --env ENV (or --set eval_every=0)")
    log = fresh_log(out_dir)
    torch.manual_seed(config.seed)
    device = pick_device(config.device)
    pretrainer = PRETRAINERS[config.algo](config, dataset.obs_dim, dataset.act_dim, device)
    if config.normalize_obs:
        set_obs_stats(pretrainer.networks(), dataset.observations, config.obs_norm_eps)
    arrays = {name: getattr(dataset, name) for name in _COLUMNS}
    graphed = graphed_updater(config, pretrainer, dataset.obs_dim, dataset.act_dim, device, capacity=0)
    if graphed is not None:
        graphed.set_offline(arrays)
    else:
        data = OfflineData(arrays, device)

    interval: dict[str, list[float]] = defaultdict(list)  # the pretrainer's scalars since the last log line
    references = reference_scores(dataset.env_id, (dataset.ref_min_score, dataset.ref_max_score))
    evaluator = Evaluator(dataset.env_id, config.eval_episodes, EVAL_SEED + config.seed, config.env_kwargs, *references)

    def train_step() -> None:
        for key, value in pretrainer.step(data.sample(config.batch_size)).items():
            interval[key].append(value)

    def train(steps: int) -> dict[str, float]:
        """`steps` more steps; the means of the scalars since the last call."""
        if graphed is not None:
            return graphed.run_phase(steps, pretrainer.prepare(0), offline_ratio=1.0)
        for _ in range(steps):
            train_step()
        means = {key: float(np.mean(values)) for key, values in interval.items()}
        interval.clear()
        return means

    columns = (TextColumn("{task.description}"), BarColumn(bar_width=20), MofNCompleteColumn(), TimeRemainingColumn(),
               TextColumn("{task.fields[metrics]}"))
    console = Console(stderr=True, quiet=not progress)
    default_threads = torch.get_num_threads()
    rate, losses = Rate(), {}
    try:
        done, threads = 0, config.threads or default_threads
        torch.set_num_threads(threads)
        if config.threads is None and device.type == "cpu" and threads > 1 and config.steps >= THREAD_PROBE_MIN_STEPS:
            done = (2 * THREAD_PROBE_ROUNDS + 1) * THREAD_PROBE_STEPS
            threads = fastest_threads(train_step, THREAD_PROBE_STEPS)
            console.print(f"pretraining with {threads} torch thread(s) (measured on the first steps: one against "
                          f"{default_threads}; `--set threads=N` fixes it)", soft_wrap=True)
        with progress_bar(console, progress, columns=columns) as bar:
            task = bar.add_task(f"{config.algo} pretraining", total=config.steps, completed=done, metrics="")
            step = done
            while step < config.steps:  # up to the next log line or evaluation at a time
                count = min(config.log_every - step % config.log_every, config.steps - step)
                if config.eval_every:
                    count = min(count, config.eval_every - step % config.eval_every)
                means = train(count)
                step += count
                line = {"step": step, **means, "steps_per_s": round(rate(step), 2)}
                if config.eval_every and step % config.eval_every == 0:
                    line.update(evaluate_pretrained(pretrainer, evaluator, step))
                    rate = Rate(step)  # the next line's rate counts training, not this evaluation
                line["wall_time_s"] = round(time.perf_counter() - start, 2)
                log.append_metrics(line)
                log.scalars(step, {key: value for key, value in line.items() if key != "step"}, "pretrain")
                log.flush()
                losses = {key: value for key, value in means.items() if key.endswith("loss")}
                bar.update(task, completed=step, metrics=" ".join(f"{key}={value:.3g}" for key, value in losses.items()))
    finally:
        torch.set_num_threads(default_threads)
        log.close()

    # The dataset's normalised-score references travel with the policy (fine-tuning and `o2o eval` read them).
    ref_min, ref_max = references
    save_checkpoint(out_dir, pretrainer.modules(), env_id=dataset.env_id, algo=config.algo, config=config.model_dump(),
                    extra={"steps": config.steps, "dataset": config.dataset, "ref_min_score": ref_min, "ref_max_score": ref_max,
                           "torch_threads": threads, "graphed": graphed is not None, "wall_time_s": round(time.perf_counter() - start, 2),
                           "final_losses": losses})
    return Path(out_dir)


def evaluate_pretrained(pretrainer: Pretrainer, evaluator: Evaluator, step: int) -> dict[str, float]:
    """The policy scored by `evaluator` (fine-tuning's, seeded EVAL_SEED + the run's seed: fresh start
    states at each evaluation): the mean return, its std, the normalised score where the references are
    known, and the seconds it took (left out of the steps/s of every line)."""
    start = time.perf_counter()
    policy = pretrainer.modules()["policy"]
    result = evaluator.evaluate(policy.arch(), policy.state_dict(), env_step=step)
    record = {"eval_return_mean": result["return_mean"], "eval_return_std": result["return_std"]}
    if result["normalized_score"] is not None:
        record["eval_normalized_score"] = result["normalized_score"]
    return {**record, "eval_s": round(time.perf_counter() - start, 2)}


def fresh_log(out_dir: str | Path) -> MetricsLog:
    """The checkpoint directory's training records, emptied of an earlier pretraining's (its
    checkpoint is overwritten too); a fine-tuning run directory is refused, not mixed into."""
    out_dir = Path(out_dir)
    if (out_dir / "config.yaml").is_file():
        raise UserError(f"'{out_dir}' is a fine-tuning run directory (it holds config.yaml): pass another --out for the "
                        "pretrained checkpoint")
    (out_dir / METRICS_FILE).unlink(missing_ok=True)
    for events in (out_dir / TENSORBOARD_DIR).glob("events.out.tfevents.*"):
        events.unlink()
    return MetricsLog(out_dir)
