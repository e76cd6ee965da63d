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
