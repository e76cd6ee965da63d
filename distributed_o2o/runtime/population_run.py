"""A population run's checks and its directory's marker.

    RUN/population.yaml     the seeds and the shared config (not `config.yaml`: the run
                            directory itself is no single run, so `o2o report` reads only
                            its sub-runs)
    RUN/seed_<n>/           agent n's sub-run, exactly what `o2o finetune --seed n` writes
                            (config.yaml with `seed: n`, metrics.jsonl, summary.json,
                            checkpoints/, stages/, tb/)
    RUN/resume/             the resume saves of all agents together (resume_state.py)
    RUN/summary.json        the seeds and the run's time breakdown (timings.py), recorded once
                            here: the sub-runs' summaries leave it out
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import yaml

from distributed_o2o.algorithms.population import require_population_support
from distributed_o2o.algorithms.registry import algorithm_class
from distributed_o2o.errors import UserError

POPULATION_FILE = "population.yaml"
# Share of a memory that a population's replay may take before the run is refused.
MEMORY_SHARE = 0.8


def parse_seeds(text: str) -> list[int]:
    """`--seeds 0,1,2` as [0, 1, 2]."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise UserError(f"--seeds '{text}' is not a comma-separated list of integers: pass e.g. --seeds 0,1,2,3,4") from None


def check_seed_options(seed: int | None) -> None:
    """A population takes its seeds from `seeds` alone: refuse a `seed` given beside them."""
    if seed is not None:
        raise UserError("--seeds and --seed both given: a population run takes its seeds from --seeds alone; drop --seed")


def check_population(config, seeds: list[int]) -> None:
    """Refuse, with one line each, a population its method or its seeds cannot make."""
    require_population_support(algorithm_class(config.algo))
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise UserError(f"--seeds {','.join(map(str, seeds))}: give distinct non-negative seeds, e.g. --seeds 0,1,2,3,4")


def write_population_file(path: Path, config, seeds: list[int]) -> None:
    config_dict = {k: v for k, v in config.model_dump().items() if k != "seed"}
    (path / POPULATION_FILE).write_text(yaml.safe_dump({"seeds": list(seeds), "config": config_dict}, sort_keys=False))


def read_population_file(path: Path) -> dict | None:
    """{"seeds", "config"} of the population run at `path`; None where it is no population run."""
    file = path / POPULATION_FILE
    return yaml.safe_load(file.read_text()) if file.exists() else None


def replay_bytes(config, obs_dim: int, act_dim: int, offline_rows: int, num_agents: int) -> tuple[int, int]:
    """(host bytes, learner device bytes) of a population's replay: K online tables on the host
    (every column 4 bytes: obs, next obs, action, reward, terminal, timeout, version, stream),
    D_off once; on a CUDA learner K online rings and D_off in the device mirror (obs, next obs,
    action, reward, terminal) and D_off again as the offline stages' tensors (and timeouts)."""
    host_row = 4 * (2 * obs_dim + act_dim + 6)
    device_row = 4 * (2 * obs_dim + act_dim + 2)
    host = num_agents * config.replay_capacity * host_row + offline_rows * host_row
    device = num_agents * config.replay_capacity * device_row + offline_rows * (2 * device_row + 4)
    return host, device


def check_population_memory(config, inputs, num_agents: int, learner_here: bool) -> None:
    """Refuse before any work a population whose replay would not fit this machine's memory
    (or, for a CUDA learner on this machine, its GPU's), with the figures."""
    offline_rows = 0 if inputs.offline is None else len(inputs.offline["rewards"])
    host, device = replay_bytes(config, inputs.obs_dim, inputs.act_dim, offline_rows, num_agents)
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    fix = "lower replay_capacity (--set replay_capacity=N) or run fewer seeds"
    if host > MEMORY_SHARE * total:
        raise UserError(f"a population of {num_agents} needs about {host / 2**30:.1f} GiB of replay memory "
                        f"({num_agents} x replay_capacity {config.replay_capacity}), more than {MEMORY_SHARE:.0%} of "
                        f"this machine's {total / 2**30:.1f} GiB: {fix}")
    if learner_here and config.runtime.device != "cpu" and torch.cuda.is_available():
        gpu = torch.cuda.get_device_properties(0).total_memory
        if device > MEMORY_SHARE * gpu:
            raise UserError(f"a population of {num_agents} needs about {device / 2**30:.1f} GiB of GPU memory for its "
                            f"replay mirror, more than {MEMORY_SHARE:.0%} of the GPU's {gpu / 2**30:.1f} GiB: {fix}")
