"""The behaviour-policy zoo shipped in the package: per env, random / medium / expert policy
checkpoints with their measured returns, the reference scores R_min (random) and R_max
(expert), and the medium-replay buffer (or a documented subsample of it).

    distributed_o2o/zoo/<Env-id>/zoo.json              returns, references, provenance
    distributed_o2o/zoo/<Env-id>/{random,medium,expert}/   policy checkpoints (project format)
    distributed_o2o/zoo/<Env-id>/medium-replay.npz     the replay of the SAC run up to "medium"
                                                       (compact: `o2o data make` writes the D4RL layout)

`zoo/build.py` makes an entry from a SAC run directory; `data/make.py` builds datasets from it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distributed_o2o.errors import UserError

ZOO_DIR = Path(__file__).parent
POLICY_QUALITIES = ("random", "medium", "expert")
ENTRY_FILE = "zoo.json"
MEDIUM_REPLAY_FILE = "medium-replay.npz"
MAX_REPLAY_TRANSITIONS = 40_000  # shipped medium-replay cap (keeps the package small: docs/results.md)


@dataclass
class ZooEntry:
    env_id: str
    path: Path
    info: dict[str, Any]

    @property
    def ref_min_score(self) -> float:
        return float(self.info["ref_min_score"])

    @property
    def ref_max_score(self) -> float:
        return float(self.info["ref_max_score"])

    def policy_dir(self, quality: str) -> Path:
        if quality not in POLICY_QUALITIES:
            raise UserError(f"the zoo has no '{quality}' policy: use one of {', '.join(POLICY_QUALITIES)}")
        return self.path / quality

    @property
    def medium_replay_file(self) -> Path:
        return self.path / MEDIUM_REPLAY_FILE


def zoo_envs(root: Path = ZOO_DIR) -> list[str]:
    return sorted(p.parent.name for p in root.glob(f"*/{ENTRY_FILE}"))


def zoo_entry(env_id: str, root: Path = ZOO_DIR) -> ZooEntry:
    """The zoo's entry for `env_id` (a Gymnasium id, or a D4RL name such as hopper-medium-v2)."""
    from distributed_o2o.envs import resolve_env_id  # gymnasium: not needed by `o2o zoo --help`

    resolved = resolve_env_id(env_id)
    path = root / resolved
    if not (path / ENTRY_FILE).is_file():
        raise UserError(f"the zoo has no policies for {resolved} (it has: {', '.join(zoo_envs(root)) or 'none'}): "
                        "build an entry with `o2o zoo build` from a SAC run")
    return ZooEntry(resolved, path, json.loads((path / ENTRY_FILE).read_text()))


def zoo_references(env_id: str, root: Path = ZOO_DIR) -> tuple[float, float] | None:
    """The zoo's (R_min, R_max) for `env_id`, or None when the zoo has no entry for it."""
    try:
        entry = zoo_entry(env_id, root)
    except UserError:
        return None
    return entry.ref_min_score, entry.ref_max_score
