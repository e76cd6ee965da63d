"""The resume state survives a kill at any point of a save: `--resume` continues from the last
complete save with counters, weights and replay of one and the same env step; a damaged
newest save falls back to the previous one with one line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import latest_save
from safetensors.torch import load_file

from distributed_o2o.cli.main import main
from distributed_o2o.config import finetune_config
from distributed_o2o.runtime import driver as driver_module
from distributed_o2o.runtime.resume_state import ResumeState
from distributed_o2o.runtime.finetune import resume_finetune, run_finetune

ENV = "Pendulum-v1"
FIELDS = {"env": ENV, "hidden": [16, 16], "eval_episodes": 1, "log_every": 1000, "online_steps": 600, "eval_every": 200,
          "random_start_steps": 100, "learning_starts": 100}
KILLED_SAVE = 400  # the save a kill interrupts; the one before it is at env step 200
FSYNCS_PER_SAVE = 8  # the replay file, the state (two files, two renames), the manifest, the directory, the switch


class Killed(BaseException):
    """A kill -9 stand-in: nothing in the run catches it."""


def _arm_kill(monkeypatch, at: int) -> dict:
    """Kill the run at the `at`-th fsync of the save at KILLED_SAVE. A file being flushed loses
    its second half (the part that had not reached the disk)."""
    seen = {"armed": False, "count": 0}
    original_fsync, original_begin = os.fsync, ResumeState.begin

    def begin(self):
        seen["armed"] = self.counters.env_steps == KILLED_SAVE
        return original_begin(self)

    def fsync(fd):
        if seen["armed"]:
            seen["count"] += 1
            if seen["count"] == at:
                if os.path.isfile(f"/proc/self/fd/{fd}"):
                    path = os.readlink(f"/proc/self/fd/{fd}")
                    with open(path, "r+b") as f:
                        f.truncate(os.path.getsize(path) // 2)
                raise Killed(f"killed at fsync {at}")
        return original_fsync(fd)

    monkeypatch.setattr(ResumeState, "begin", begin)
    monkeypatch.setattr(os, "fsync", fsync)
    return seen


def _record_restore(monkeypatch) -> dict:
    """What a resumed run starts from: its counters, policy weights and replay contents."""
    restored = {}
    original = driver_module.Driver._restore

    def restore(self):
        original(self)
        replay = self.c.replays[0]
        restored.update(env_steps=self.counters.env_steps, updates=self.counters.updates,
                        policy={k: v.clone() for k, v in self.c.learner.algorithm.policy.state_dict().items()},
                        replay_rows=len(replay.online), inserted=replay.online.inserted)

    monkeypatch.setattr(driver_module.Driver, "_restore", restore)
    return restored


def _assert_restored_from(out: Path, restored: dict, step: int) -> None:
    checkpoint = out / "checkpoints" / f"step_{step:09d}"
    extra = json.loads((checkpoint / "metadata.json").read_text())["extra"]
    assert restored["env_steps"] == extra["env_steps"] == step
    assert restored["updates"] == extra["updates"]
    saved_policy = load_file(str(checkpoint / "policy.safetensors"))
    assert all(torch.equal(restored["policy"][k], saved_policy[k]) for k in saved_policy)
    assert restored["replay_rows"] == restored["inserted"] == step


@pytest.mark.parametrize("at", range(1, FSYNCS_PER_SAVE + 1))
def test_a_kill_at_any_point_of_a_save_resumes_from_the_last_complete_save(tmp_path, monkeypatch, at):
    out = tmp_path / "run"
    seen = _arm_kill(monkeypatch, at)
    with pytest.raises(Killed):
        run_finetune(finetune_config("sac", None, FIELDS), out, progress=False)
    assert seen["count"] == at
    monkeypatch.undo()
    restored = _record_restore(monkeypatch)
    summary = resume_finetune(out, progress=False)
    # Only the last fsync comes after the switch: every earlier kill loses the save being written.
    _assert_restored_from(out, restored, KILLED_SAVE if at == FSYNCS_PER_SAVE else KILLED_SAVE - 200)
    assert summary["env_steps"] == 600
    assert [json.loads(line)["env_steps"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [0, 200, 400, 600]


def test_the_save_has_as_many_kill_points_as_the_test_above_walks(tmp_path, monkeypatch):
    seen = _arm_kill(monkeypatch, at=0)
    run_finetune(finetune_config("sac", None, {**FIELDS, "online_steps": 400}), tmp_path / "run", progress=False)
    assert seen["count"] == FSYNCS_PER_SAVE


@pytest.mark.parametrize("damage", ["truncate the state", "edit the manifest", "swap a replay file"])
def test_a_damaged_newest_save_falls_back_to_the_previous_one_with_one_line(tmp_path, monkeypatch, capsys, damage):
    out = tmp_path / "run"
    run_finetune(finetune_config("sac", None, {**FIELDS, "online_steps": 400}), out, progress=False)
    newest, previous = sorted((out / "resume").glob("save-*"), reverse=True)
    if damage == "truncate the state":
        state = newest / "state.safetensors"
        state.write_bytes(state.read_bytes()[:1000])
    elif damage == "edit the manifest":
        (newest / "manifest.json").write_text("{")
    else:
        (newest / "replay.npz").write_bytes((previous / "replay.npz").read_bytes())
    capsys.readouterr()
    restored = _record_restore(monkeypatch)
    (out / "config.yaml").write_text((out / "config.yaml").read_text().replace("online_steps: 400", "online_steps: 600"))
    resume_finetune(out, progress=False)
    lines = [line for line in capsys.readouterr().err.splitlines() if "damaged" in line]
    assert len(lines) == 1 and newest.name in lines[0] and "falling back to the previous save" in lines[0]
    _assert_restored_from(out, restored, 200)


def test_every_save_damaged_is_one_line_and_exit_2(tmp_path, capsys):
    out = tmp_path / "run"
    run_finetune(finetune_config("sac", None, {**FIELDS, "online_steps": 200}), out, progress=False)
    for save in (out / "resume").glob("save-*"):
        (save / "state.json").write_text("garbage")
    capsys.readouterr()
    assert main(["finetune", "--resume", str(out), "--quiet", "--mode", "local"]) == 2
    err = capsys.readouterr().err
    assert "every resume state in" in err and "Traceback" not in err


def test_the_saved_replay_carries_the_save_id_of_its_state(tmp_path):
    out = tmp_path / "run"
    run_finetune(finetune_config("sac", None, {**FIELDS, "online_steps": 200}), out, progress=False)
    save = latest_save(out)
    manifest = json.loads((save / "manifest.json").read_text())
    with np.load(save / "replay.npz") as replay:
        assert str(replay["save_id"]) == manifest["save_id"] == json.loads((save / "state.json").read_text())["save_id"]
