"""Progress output where no terminal shows a live bar, and the pretraining thread probe."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
import torch
from rich.console import Console

from distributed_o2o.algorithms.offline.train import fastest_threads
from distributed_o2o.config import FINETUNE_CONFIGS, finetune_config
from distributed_o2o.progress import PlainProgress, progress_bar
from distributed_o2o.runtime.finetune import run_finetune


def _plain_console() -> tuple[Console, io.StringIO]:
    stream = io.StringIO()
    return Console(file=stream, force_terminal=False, width=200), stream


def test_without_a_terminal_progress_is_plain_lines_every_few_seconds():
    console, stream = _plain_console()
    bar = progress_bar(console, every_s=3600)
    assert isinstance(bar, PlainProgress)
    with bar:
        task = bar.add_task("online", total=100)
        bar.update(task, completed=50, description="online  eval return -3.0")
        assert stream.getvalue() == ""  # not yet due
        bar.update(task, completed=100)
    assert stream.getvalue().startswith("online  eval return -3.0: 100/100 (100%), 0:00:00 elapsed")

    console, stream = _plain_console()
    with progress_bar(console, every_s=0.0) as bar:
        task = bar.add_task("collecting", total=10)
        bar.advance(task, 4)
    assert stream.getvalue().startswith("collecting: 4/10 (40%)") and "left" in stream.getvalue()


def test_a_run_whose_output_is_not_a_terminal_reports_progress(tmp_path, capsys):
    config = finetune_config("sac", None, {"env": "Pendulum-v1", "online_steps": 200, "eval_every": 200, "eval_episodes": 1,
                                           "random_start_steps": 100, "learning_starts": 100, "hidden": [16, 16]})
    run_finetune(config, tmp_path / "run", progress=True)
    err = capsys.readouterr().err
    assert "online  eval return" in err and ": 200/200 (100%)" in err


@pytest.mark.parametrize("seconds_per_step, expected", [
    ({1: 0.002, 2: 0.004}, 1),  # more threads slower
    ({1: 0.004, 2: 0.0018}, 2),  # more threads clearly faster
    ({1: 0.004, 2: 0.0036}, 1),  # only slightly faster: one thread, which contention does not slow down
])
def test_pretraining_takes_more_threads_only_when_they_win_clearly(seconds_per_step, expected):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert fastest_threads(lambda: time.sleep(seconds_per_step[torch.get_num_threads()]), 5) == expected
        assert torch.get_num_threads() == expected
    finally:
        torch.set_num_threads(before)


def test_a_long_cpu_run_is_announced_with_its_estimate_and_the_cpu_preset(tmp_path, capsys, monkeypatch):
    from distributed_o2o.runtime import finetune as finetune_module
    from distributed_o2o.runtime.cpu_check import cpu_note, planned_updates

    spec = finetune_config("porl", None, {"env": "Hopper-v5"})
    assert planned_updates(spec) == 5000 * 10 + 95_000 * 4
    assert "430,000 gradient updates" in cpu_note(spec, 11, 3) and "--config configs/cpu/porl.yaml" in cpu_note(spec, 11, 3)
    monkeypatch.setattr(finetune_module, "build_local_components",
                        lambda config, inputs, seeds: (_ for _ in ()).throw(RuntimeError("stop here")))
    with pytest.raises(RuntimeError, match="stop here"):  # the note comes after the input checks, before any work
        run_finetune(finetune_config("sac", None, {"env": "Hopper-v5", "online_steps": 10_000_000}), tmp_path / "run",
                     mode="local", progress=False)
    assert capsys.readouterr().err.startswith("note: no GPU: ")


@pytest.mark.parametrize("algo", sorted(FINETUNE_CONFIGS))
def test_every_method_has_a_cpu_preset_that_needs_no_note(algo):
    from distributed_o2o.runtime.cpu_check import cpu_note, cpu_preset

    preset = Path(__file__).resolve().parents[1] / cpu_preset(algo)
    config = finetune_config(None, str(preset))
    assert config.algo == algo and cpu_note(config, 11, 3) is None  # Hopper's widths
    assert cpu_note(finetune_config(algo), 11, 3) is not None  # the specification's sizes do get one
