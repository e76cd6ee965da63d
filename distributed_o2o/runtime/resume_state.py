"""A run's resume state: complete saves side by side, each switched in with one rename.

    resume/save-<env_step:09d>/    one complete save
        state.safetensors, .json   learner state and counters (checkpoint.save_state)
        replay.npz | replay-<j>.npz  each replay shard's table (written by the shard)
        manifest.json              save id, env step, stored transitions, sha256 of every file
    resume/incoming/               the save being written; never read

A save is written completely into `incoming/`, every file flushed to disk, then renamed to its
final name: a kill at any point leaves the previous complete save, or the new one. Every part
carries the save id and the manifest the checksum of every file, so a restore recognises a
damaged or mixed save and falls back to the one before (the two newest are kept).

    ResumeStore   the files: writing `incoming/`, the switch (commit), the newest good save
    ResumeState   the run's side: when a save is due, its two phases (the replay shards write
                  their files while the evaluator plays; the learner state and the counters
                  follow, then the switch), and the restore of components and counters
"""

from __future__ import annotations

import json
import shutil
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distributed_o2o.checkpoint import DamagedState, load_state, save_state
from distributed_o2o.durable import sha256, sync_dir, sync_file
from distributed_o2o.errors import UserError

MANIFEST = "manifest.json"
INCOMING = "incoming"
KEPT = 2  # the newest save and the one a damaged newest falls back to


@dataclass
class Save:
    path: Path
    save_id: str
    env_steps: int
    stored: int  # transitions ever inserted into the replay, summed over its files

    @property
    def state(self) -> Path:
        return self.path / "state"

    def replay_files(self) -> list[Path]:
        return sorted(self.path.glob("replay*.npz"))

    def load_state(self) -> dict:
        return load_state(self.state, self.save_id)


class ResumeStore:
    def __init__(self, resume_dir: str | Path):
        self.dir = Path(resume_dir)
        self.incoming = self.dir / INCOMING
        self.save_id: str | None = None

    def saves(self) -> list[Path]:
        """The completed save directories, newest first (unverified)."""
        return sorted(self.dir.glob("save-*[0-9]"), reverse=True)

    # -- writing
    def begin(self) -> tuple[Path, str]:
        """A fresh `incoming/` directory (what an interrupted save left there is dropped) and
        the new save's id."""
        if self.incoming.exists():
            shutil.rmtree(self.incoming)
        self.incoming.mkdir(parents=True)
        self.save_id = uuid.uuid4().hex[:16]
        return self.incoming, self.save_id

    def commit(self, env_steps: int, stored: int) -> Path:
        """Record the checksums of what `incoming/` holds and switch it in as the newest save."""
        files = {p.name: sha256(p) for p in sorted(self.incoming.iterdir()) if p.is_file()}
        manifest = {"save_id": self.save_id, "env_steps": env_steps, "stored": stored, "files": files}
        (self.incoming / MANIFEST).write_text(json.dumps(manifest, indent=1))
        sync_file(self.incoming / MANIFEST)  # the others were flushed by their writers
        sync_dir(self.incoming)
        final = self.dir / f"save-{env_steps:09d}"
        if final.exists():  # a damaged save of this step that a restore fell back from
            shutil.rmtree(final)
        self.incoming.rename(final)
        sync_dir(self.dir)
        for old in self.saves()[KEPT:]:
            shutil.rmtree(old)
        return final

    # -- reading
    def latest(self, warn: Callable[[str], None]) -> Save | None:
        """The newest save that passes every check; a damaged one is skipped with one line."""
        for path in self.saves():
            try:
                return verify(path)
            except DamagedState as exc:
                warn(f"resume state {path.name} is damaged ({exc}); falling back to the previous save")
        return None


def verify(path: Path) -> Save:
    """Check a save directory's manifest, every file's checksum and save id; `DamagedState` if any fails."""
    try:
        manifest = json.loads((path / MANIFEST).read_bytes())
        save = Save(path, str(manifest["save_id"]), int(manifest["env_steps"]), int(manifest["stored"]))
        files = dict(manifest["files"])
    except (OSError, ValueError, KeyError, TypeError):
        raise DamagedState(f"{MANIFEST} is missing or unreadable") from None
    present = {p.name for p in path.iterdir()} - {MANIFEST}
    if present != set(files):
        raise DamagedState(f"it holds {sorted(present)}, its manifest lists {sorted(files)}")
    for name, digest in files.items():
        if sha256(path / name) != digest:
            raise DamagedState(f"{name} does not match its checksum")
    inserted = 0
    for file in save.replay_files():
        with np.load(file, allow_pickle=False) as saved:
            if str(saved["save_id"]) != save.save_id:
                raise DamagedState(f"{file.name} belongs to another save")
            inserted += int(saved["inserted"])
    if inserted != save.stored:
        raise DamagedState(f"its replay files hold {inserted} transitions, its manifest counts {save.stored}")
    return save



class ResumeState:
    """The run's resume saves: `counters` (the driver's, restored in place) and the state of
    the learner and the replay shards, reached through the components' transport."""

    def __init__(self, resume_dir: str | Path, components: Any, counters: Any, every: int | None, online_steps: int,
                 agent_records: list[Any] | None = None):
        self.store = ResumeStore(resume_dir)
        self.t, self.c, self.counters = components.transport, components, counters
        self.agent_records = agent_records  # a population's per-agent records (restored in place)
        self.every, self.online_steps = every, online_steps
        self.saved_step: int | None = None  # env step of the save on disk

    def due(self, initial: bool) -> bool:
        """A save at this point: the first, every `resume_every` env steps (each point without
        it), and at the end of the budget."""
        step, every = self.counters.env_steps, self.every
        return initial or every is None or step >= self.online_steps or step // every > (self.saved_step or 0) // every

    def begin(self) -> list:
        """Phase one: the replay shards write their files into the new save; their futures."""
        incoming, save_id = self.store.begin()
        shards = len(self.c.replays)
        names = ["replay.npz"] if shards == 1 else [f"replay-{j}.npz" for j in range(shards)]
        return [self.t.submit(shard, "save", str(incoming / name), save_id) for shard, name in zip(self.c.replays, names)]

    def commit(self, wall_time: float, on_policy: bool) -> None:
        """Phase two, once the shards' files are written: the learner state and the counters,
        then the switch. The replay's inserted counts add up to the stored transitions."""
        counters = {**vars(self.counters), "wall_time": wall_time}
        state = {"learner": self.t.call(self.c.learner, "state"), "counters": counters}
        if self.agent_records is not None:
            state["agents"] = [vars(records) for records in self.agent_records]
        save_state(self.store.incoming / "state", state, self.store.save_id)
        step = self.counters.env_steps
        self.store.commit(step, stored=0 if on_policy else step)
        self.saved_step = step

    def restore(self) -> None:
        """The learner, the replay shards and the counters from the newest good save; every
        component's random streams reseeded for the env step it resumes at."""
        save = self.store.latest(warn=lambda line: print(line, file=sys.stderr))
        if save is None:
            raise UserError(f"every resume state in {self.store.dir} is damaged: the run cannot be continued; start it "
                            "again in another --out")
        state = save.load_state()
        self.t.call(self.c.learner, "load", state["learner"])
        shards = self.c.replays
        self.t.call_all([(shards[k % len(shards)], "load", (str(path),)) for k, path in enumerate(save.replay_files())])
        self.counters.restore(state["counters"])
        for records, saved in zip(self.agent_records or [], state.get("agents", []), strict=True):
            records.restore(saved)
        # Learner first: in local mode the workers' torch seed is the one the shared generator keeps, as at the start.
        step = self.counters.env_steps
        self.t.call_all([(component, "reseed", (step,)) for component in (self.c.learner, *shards, *self.c.workers)])
        self.saved_step = save.env_steps
