"""Offline datasets: read D4RL / Minari / own files, write own files, collect new ones.

`load_dataset` specs: `d4rl:<file or name>`, `minari:<id or directory>`, or a plain path to
an HDF5 file in the project's own (D4RL-layout) format.
"""

from __future__ import annotations

import re
from pathlib import Path

from distributed_o2o.data.collect import collect_dataset
from distributed_o2o.data.d4rl import d4rl_path, read_d4rl
from distributed_o2o.data.dataset import OfflineDataset
from distributed_o2o.data.minari import minari_dir, read_minari
from distributed_o2o.data.scores import D4RL_REF_SCORES, normalized_score
from distributed_o2o.data.writer import write_dataset
from distributed_o2o.errors import UserError

__all__ = ["D4RL_REF_SCORES", "OfflineDataset", "collect_dataset", "load_dataset", "normalized_score", "write_dataset"]


def load_dataset(spec: str, env_id: str | None = None, allow_other_env: bool = False) -> OfflineDataset:
    """Read the dataset `spec` names; with `env_id`, check it against that env (data recorded for
    another env is refused unless `allow_other_env`)."""
    prefix, sep, rest = spec.partition(":")
    if sep and re.fullmatch(r"[A-Za-z]\w+", prefix):  # a one-letter prefix is a Windows drive
        if prefix == "d4rl":
            return read_d4rl(d4rl_path(rest), env_id, allow_other_env)
        if prefix == "minari":
            return read_minari(minari_dir(rest), env_id, allow_other_env)
        raise UserError(f"unknown dataset prefix '{prefix}:' in '{spec}': use d4rl:<file or name>, minari:<id or directory>, or a file path")
    return read_d4rl(Path(spec).expanduser(), env_id, allow_other_env)
