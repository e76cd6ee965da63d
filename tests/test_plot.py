"""`o2o plot`: learning curves from run directories without TensorBoard."""

from __future__ import annotations

import json

import pytest

from distributed_o2o.cli.main import main
from distributed_o2o.plotting import pretraining_panels


def _run(path, scores):
    path.mkdir(parents=True)
    lines = [{"env_steps": 1000 * i, "return_mean": 10.0 * i, "return_std": 1.0, "normalized_score": score}
             for i, score in enumerate(scores)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return str(path)


def _pretrained(path, losses=("actor_loss",)):
    """A pretraining checkpoint's metrics.jsonl (as `o2o pretrain --out` writes it)."""
    path.mkdir(parents=True)
    lines = [{"step": 100 * i, **{loss: 1.0 / i for loss in losses}, "steps_per_s": 50.0, "wall_time_s": 2.0 * i}
             for i in range(1, 4)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return str(path)


def test_plot_draws_the_losses_of_pretraining_checkpoints(tmp_path, capsys):
    bc, iql = _pretrained(tmp_path / "bc"), _pretrained(tmp_path / "iql", ("actor_loss", "critic_loss", "value_loss"))
    out = tmp_path / "losses.png"
    assert main(["plot", bc, iql, "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    height, width, _ = matplotlib.image.imread(out).shape
    assert height > width  # one panel per loss, stacked (an evaluation plot is 6 x 4 in)


def test_a_pretraining_plot_puts_the_evaluations_above_the_losses(tmp_path):
    losses = [{"step": 100, "actor_loss": 1.0}, {"step": 200, "actor_loss": 0.5, "critic_loss": 2.0}]
    scored = [{"step": 100, "actor_loss": 1.0, "eval_return_mean": 900.0, "eval_normalized_score": 30.0}]
    unscored = [{"step": 100, "actor_loss": 1.0, "eval_return_mean": -150.0}]

    assert pretraining_panels({"a": losses}) == ["actor_loss", "critic_loss"]
    assert pretraining_panels({"a": losses, "b": scored}) == ["eval_normalized_score", "actor_loss", "critic_loss"]
    assert pretraining_panels({"b": scored, "c": unscored}) == ["eval_return_mean", "actor_loss"]
    paths = {}
    for name, lines in (("plain", losses), ("evaluated", scored + losses[1:])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        paths[name] = tmp_path / f"{name}.png"
        assert main(["plot", str(tmp_path / name), "--out", str(paths[name])]) == 0
    import matplotlib.image

    heights = {name: matplotlib.image.imread(path).shape[0] for name, path in paths.items()}
    assert heights["evaluated"] > heights["plain"]  # one panel more


def test_plot_draws_one_png_for_several_runs(tmp_path, capsys):
    a, b = _run(tmp_path / "a", [1.0, 2.0, 3.0]), _run(tmp_path / "b", [None, None])
    out = tmp_path / "figs" / "curve.png"
    assert main(["plot", a, b, "--out", str(out), "--title", "two runs"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


@pytest.mark.parametrize("args, message", [
    (["{b}", "--metric", "score"], "a run has no normalised scores (no references known): plot --metric return"),
    (["{tmp}/missing"], "has no metrics.jsonl: pass the --out directory of an `o2o finetune` run (or of an `o2o pretrain`"),
    (["{a}", "--metric", "median"], "unknown metric 'median'"),
    (["{a}", "{p}"], "pretraining checkpoints (losses against gradient steps) and fine-tuning runs (evaluations "
                     "against env steps) do not share an axis: plot them separately"),
    (["{p}", "--metric", "return"], "--metric return is for fine-tuning runs"),
])
def test_plot_refuses_what_it_cannot_draw(args, message, tmp_path, capsys):
    a, b, p = _run(tmp_path / "a", [1.0]), _run(tmp_path / "b", [None]), _pretrained(tmp_path / "p")
    argv = [arg.format(a=a, b=b, p=p, tmp=tmp_path) for arg in args]
    assert main(["plot", *argv, "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "missing").exists()
