"""Bad run directories, checkpoints, configs and command-line values: one line naming the
problem and the fix (UserError; exit code 2 in the CLI), nothing mixed, nothing lost."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from distributed_o2o.config import finetune_config
from distributed_o2o.errors import UserError
from distributed_o2o.runtime.finetune import resume_finetune, run_finetune
from distributed_o2o.runtime.run_lock import LOCK_FILE, run_lock

ENV = "Pendulum-v1"
FIELDS = {"env": ENV, "hidden": [16, 16], "eval_episodes": 1, "online_steps": 200, "eval_every": 200,
          "random_start_steps": 100, "learning_starts": 100}


def _config(**fields):
    return finetune_config("sac", None, {**FIELDS, **fields})


# ---------------------------------------------------------------- one run per directory
@pytest.mark.parametrize("earlier", ["metrics.jsonl", "summary.json", "config.yaml", "checkpoints"])
def test_a_new_run_is_refused_where_an_earlier_run_left_files(tmp_path, earlier):
    out = tmp_path / "run"
    out.mkdir()
    (out / earlier).mkdir() if earlier == "checkpoints" else (out / earlier).write_text("{}\n")
    with pytest.raises(UserError, match=rf"already holds a run \({earlier}\): continue it with --resume"):
        run_finetune(_config(), out, progress=False)


def test_a_run_whose_resume_state_was_removed_is_not_continued_nor_overwritten(tmp_path):
    out = tmp_path / "run"
    run_finetune(_config(), out, progress=False)
    before = (out / "metrics.jsonl").read_text()
    for save in (out / "resume").iterdir():
        for file in save.iterdir():
            file.unlink()
        save.rmdir()
    with pytest.raises(UserError, match="already holds a run"):
        run_finetune(_config(), out, progress=False)
    with pytest.raises(UserError, match=r"holds results \(metrics.jsonl, summary.json, checkpoints\) but no resume state"):
        resume_finetune(out, progress=False)
    assert (out / "metrics.jsonl").read_text() == before


def test_a_second_writer_is_refused_while_the_first_holds_the_lock(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with run_lock(out, warn=print):
        with pytest.raises(UserError, match=rf"is being written by process {os.getpid()} on .*delete .*{LOCK_FILE}"):
            run_finetune(_config(), out, progress=False)
    assert not (out / LOCK_FILE).exists()  # released


def test_the_lock_of_a_process_that_is_gone_is_taken_over_with_one_line(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (out / LOCK_FILE).write_text(f"{socket.gethostname()} {gone.pid}\n")
    lines = []
    with run_lock(out, warn=lines.append):
        assert (out / LOCK_FILE).read_text().split() == [socket.gethostname(), str(os.getpid())]
    assert len(lines) == 1 and f"from process {gone.pid} that is gone" in lines[0]


def test_a_lock_from_another_host_is_not_taken_over(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_FILE).write_text("some-other-host 1\n")
    with pytest.raises(UserError, match="process 1 on some-other-host"):
        with run_lock(out, warn=print):
            pass
    assert (out / LOCK_FILE).exists()


# ---------------------------------------------------------------- damaged checkpoints
def _checkpoint(tmp_path):
    from distributed_o2o.algorithms.policies import FAMILIES
    from distributed_o2o.checkpoint import save_checkpoint

    return save_checkpoint(tmp_path / "ck", {"policy": FAMILIES["gaussian"](3, 1, [8])}, env_id=ENV, algo="bc")


def _edit_arch(key, value):
    def edit(meta):
        meta["modules"]["policy"]["arch"][key] = value
    return edit


METADATA_EDITS = {
    "hidden": _edit_arch("hidden", [16]),
    "negative hidden": _edit_arch("hidden", [-5]),
    "arch obs_dim": _edit_arch("obs_dim", 4),
    "unknown family": _edit_arch("family", "nope"),
    "activation": _edit_arch("activation", "nope"),
    "no spaces": lambda meta: meta.pop("spaces"),
    "no modules": lambda meta: meta.update(modules={}),
    "string format_version": lambda meta: meta.update(format_version="1"),
}


def _assert_one_line_exit_2(capsys, args, message):
    from distributed_o2o.cli.main import main

    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and message in err, err


@pytest.mark.parametrize("edit", METADATA_EDITS, ids=list(METADATA_EDITS))
def test_an_edited_checkpoint_metadata_is_one_line(tmp_path, capsys, edit):
    import json

    path = _checkpoint(tmp_path)
    meta = json.loads((path / "metadata.json").read_text())
    METADATA_EDITS[edit](meta)
    (path / "metadata.json").write_text(json.dumps(meta))
    _assert_one_line_exit_2(capsys, ["eval", "--policy", str(path), "--env", ENV, "--episodes", "1"], "is damaged")


@pytest.mark.parametrize("content", [b"", b"\x00" * 7, b"random bytes \xff\xfe" * 20, "truncated"])
def test_damaged_checkpoint_weights_are_one_line(tmp_path, capsys, content):
    path = _checkpoint(tmp_path)
    weights = path / "policy.safetensors"
    weights.write_bytes(weights.read_bytes()[:60] if content == "truncated" else content)
    _assert_one_line_exit_2(capsys, ["eval", "--policy", str(path), "--env", ENV, "--episodes", "1"], "is damaged")


def test_a_metadata_file_holding_a_json_list_is_not_a_checkpoint(tmp_path, capsys):
    path = _checkpoint(tmp_path)
    (path / "metadata.json").write_text("[1, 2]")
    _assert_one_line_exit_2(capsys, ["eval", "--policy", str(path), "--env", ENV, "--episodes", "1"],
                            "is not a distributed_o2o checkpoint")


# ---------------------------------------------------------------- configs, outputs, envs, devices
def test_a_binary_config_file_is_one_line(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_bytes(b"\xff\xfe\x00binary")
    _assert_one_line_exit_2(capsys, ["finetune", "--algo", "sac", "--env", ENV, "--config", str(config), "--out",
                                     str(tmp_path / "run"), "--mode", "local"], "is not a UTF-8 text file")


def _unwritable(path):
    """A directory nobody can create, root included: its parent is a file."""
    path.write_text("")
    return path / "below-a-file"


@pytest.mark.parametrize("command", ["pretrain", "collect", "finetune"])
def test_an_unwritable_out_is_refused_before_any_work(tmp_path, capsys, command):
    locked = _unwritable(tmp_path / "locked")
    args = {"pretrain": ["pretrain", "--algo", "bc", "--dataset", str(tmp_path / "nope.hdf5"), "--out", str(locked / "ck")],
            "collect": ["data", "collect", "--env", ENV, "--policy", "random", "--steps", "10", "--out", str(locked / "d.hdf5")],
            "finetune": ["finetune", "--algo", "sac", "--env", ENV, "--out", str(locked / "run"), "--mode", "local"]}[command]
    # pretrain names no existing dataset: the output is checked first all the same
    _assert_one_line_exit_2(capsys, args, "cannot write")


@pytest.mark.parametrize("source, message", [
    ("def broken(:\n", "importing the env module 'user_env_mod' failed (SyntaxError"),
    ("import gymnasium as gym\nclass Env(gym.Env):\n    def __init__(self):\n        raise RuntimeError('no licence')\n",
     "env 'user_env_mod:Env' could not be created (RuntimeError: no licence)"),
    # A dependency that is not installed: imported by the module, or found missing by the constructor (as gymnasium's
    # CarRacing does without Box2D).
    ("import not_installed_physics\nimport gymnasium as gym\nclass Env(gym.Env):\n    pass\n",
     "the env module 'user_env_mod' needs 'not_installed_physics', which is not installed: install it"),
    ("import gymnasium as gym\nclass Env(gym.Env):\n    def __init__(self):\n        raise gym.error.DependencyNotInstalled("
     "'Box2D is not installed, run pip install gymnasium[box2d]')\n",
     "env 'user_env_mod:Env' could not be created (DependencyNotInstalled: Box2D is not installed"),
])
def test_a_user_env_module_that_fails_is_one_line(tmp_path, capsys, monkeypatch, source, message):
    (tmp_path / "user_env_mod.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "user_env_mod", raising=False)  # another case's module of that name
    _assert_one_line_exit_2(capsys, ["data", "collect", "--env", "user_env_mod:Env", "--policy", "random", "--steps", "10",
                                     "--out", str(tmp_path / "d.hdf5")], message)


def test_unknown_env_kwargs_and_a_missing_cuda_are_one_line(tmp_path, capsys):
    _assert_one_line_exit_2(capsys, ["finetune", "--algo", "sac", "--env", ENV, "--set", "env_kwargs.foo=1", "--out",
                                     str(tmp_path / "a"), "--mode", "local"], "unexpected keyword argument 'foo'")
    import torch

    if not torch.cuda.is_available():
        _assert_one_line_exit_2(capsys, ["finetune", "--algo", "sac", "--env", ENV, "--set", "runtime.device=cuda", "--out",
                                         str(tmp_path / "b"), "--mode", "local"], "device 'cuda' was asked for")


def _read_only_after_the_first_save(monkeypatch, run):
    """From the run's first resume save and the checkpoint of its evaluation on, every write into
    `run` fails as in a directory made read-only (injected: root may write to a read-only directory)."""
    import builtins
    import errno
    import io
    from pathlib import Path

    from distributed_o2o.runtime.resume_state import ResumeStore

    read_only = []

    def guard(original, writes):
        def call(path, *args, **kwargs):
            if (read_only and isinstance(path, (str, bytes, os.PathLike)) and writes(*args, **kwargs)
                    and Path(os.fsdecode(path)).resolve().is_relative_to(run.resolve())):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))
            return original(path, *args, **kwargs)
        return call

    def for_writing(mode="r", *args, **kwargs):
        return any(flag in mode for flag in "wax+")

    for module in (io, builtins):
        monkeypatch.setattr(module, "open", guard(module.open, for_writing))
    for name in ("mkdir", "unlink"):
        monkeypatch.setattr(os, name, guard(getattr(os, name), lambda *args, **kwargs: True))
    from distributed_o2o.runtime import driver

    commit, save_checkpoint, saved = ResumeStore.commit, driver.save_checkpoint, []

    def commit_and_note(self, *args, **kwargs):
        final = commit(self, *args, **kwargs)
        saved.append(True)
        return final

    def checkpoint_then_read_only(*args, **kwargs):
        save_checkpoint(*args, **kwargs)
        if saved:
            read_only.append(True)

    monkeypatch.setattr(ResumeStore, "commit", commit_and_note)
    monkeypatch.setattr(driver, "save_checkpoint", checkpoint_then_read_only)


def test_a_run_directory_made_read_only_mid_run_stops_the_run_with_one_line_and_keeps_its_saves(tmp_path, capsys,
                                                                                              monkeypatch):
    from conftest import latest_save

    out = tmp_path / "run"
    _read_only_after_the_first_save(monkeypatch, out)
    args = ["finetune", "--algo", "sac", "--out", str(out), "--mode", "local", "--quiet", "--online-steps", "400",
            *[f"--set={k}={v}" for k, v in FIELDS.items() if k not in ("env", "online_steps", "hidden")],
            "--env", ENV, "--set", "hidden=[16,16]"]
    _assert_one_line_exit_2(capsys, args, f"cannot write to run directory '{out}' (Permission denied); the run stopped "
                            "at env step 200")
    assert latest_save(out).name == "save-000000000"
    monkeypatch.undo()  # writable again
    # The lock it could not remove names this process, still alive here: a later process takes it over.
    assert (out / LOCK_FILE).read_text().split()[1] == str(os.getpid())
    (out / LOCK_FILE).unlink()
    assert resume_finetune(out, progress=False)["env_steps"] == 400


def test_the_event_writer_thread_failing_to_write_leaves_no_traceback(tmp_path, monkeypatch):
    """TensorBoard writes on a thread of its own; its write error reaches the run at the next
    `scalars` or `flush` (one line), so the thread's own traceback is left out."""
    import errno
    import queue
    import threading

    from tensorboard.summary.writer.event_file_writer import _AsyncWriterThread

    from distributed_o2o.runtime.run_dir import RunDir

    reported = []
    monkeypatch.setattr(threading, "excepthook", lambda args: reported.append(args.exc_type))
    run_dir = RunDir(tmp_path / "run")
    run_dir.scalars(0, {"x": 1.0}, "train")
    run_dir.close()

    class Unwritable:
        def write(self, data):
            raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "run" / "tb" / "events"))

    events = queue.Queue()
    events.put(b"event")
    writer = _AsyncWriterThread(events, Unwritable(), 0)
    writer.start()
    writer.join(timeout=10)
    assert isinstance(writer.exception, PermissionError) and reported == []
    other = threading.Thread(target=os.listdir, args=(str(tmp_path / "missing"),))  # any other thread's error is reported
    other.start()
    other.join(timeout=10)
    assert reported == [FileNotFoundError]


def test_a_diverging_learner_stops_with_one_line_naming_the_step_and_keeps_its_checkpoints(tmp_path):
    from distributed_o2o.runtime.learner import LearnerDiverged

    out = tmp_path / "run"
    config = _config(actor_lr=1e6, critic_lr=1e6, online_steps=600, eval_every=100)
    with pytest.raises(LearnerDiverged, match=r"the learner diverged at env step \d+: .* became non-finite") as info:
        run_finetune(config, out, progress=False)
    assert "\n" not in str(info.value) and "env returned" not in str(info.value)
    from distributed_o2o.checkpoint import load_policy

    for checkpoint in sorted((out / "checkpoints").iterdir()):  # every checkpoint written holds finite weights
        policy = load_policy(checkpoint)
        assert all(torch_finite(p) for p in policy.parameters())


def torch_finite(tensor) -> bool:
    import torch

    return bool(torch.isfinite(tensor).all())


# ---------------------------------------------------------------- no unpickling without consent
def test_convert_rllib_refuses_a_pickled_checkpoint_without_trust_pickle_and_runs_nothing(tmp_path, capsys):
    import pickle

    ran = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(ran), "w"))

    module = tmp_path / "module"
    module.mkdir()
    (module / "class_and_ctor_args.pkl").write_bytes(pickle.dumps(Payload()))
    (module / "metadata.json").write_text("")
    _assert_one_line_exit_2(capsys, ["convert-rllib", "--checkpoint", str(module), "--env", ENV, "--out", str(tmp_path / "pi")],
                            "pass --trust-pickle only for a checkpoint you made yourself or otherwise trust")
    assert not ran.exists()
