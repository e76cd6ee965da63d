"""`--mode local` against a plain single-process SAC: env steps/s once learning has started.

    python bench/local_vs_reference.py --reference PATH/ref_sac.py [--env Hopper-v5] [--steps 20000]
        [--eval-every 5000] [--seed 0]

Both run SAC on one env with the same settings (2x256 networks, two critics without LayerNorm,
batch 256, one update per env step, 5,000 uniform random steps before the first update, one
evaluation episode every `--eval-every` env steps), each in a process of its own: side by side on
GPUs 0 and 1 where there are two, else one after the other. The reference script is a baseline
run beside the project, not part of it: pass its path (on a lent machine, carry a copy in an
ignored folder). Its rate is the mean `steps_per_s` of its evaluation lines past the random
phase (evaluations excluded); ours is `train/updates` against wall time in the run's TensorBoard
scalars past the random phase (its one-episode evaluations included). Prints one JSON object on
stdout: both rates, their ratio (issue #16's target: ours >= 0.8 of the reference's), both
processes' wall times and final evaluation returns (one seed: a sanity check, not a comparison
of learning). A measurement, never a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from end_to_end import scalar_rate  # bench/ is on sys.path when this file runs as a script
from rollout import log, machine

RANDOM_STEPS = 5000  # the reference's fixed random phase; ours is set to match


def gpus() -> int:
    import torch

    return torch.cuda.device_count()


def start(command: list[str], gpu: int | None, log_file: Path) -> tuple[subprocess.Popen, float]:
    env = dict(os.environ) if gpu is None else {**os.environ, "CUDA_VISIBLE_DEVICES": str(gpu)}
    with open(log_file, "w") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT), time.perf_counter()


def finish(process: subprocess.Popen, started: float, log_file: Path) -> float:
    if process.wait() != 0:
        raise SystemExit(f"{' '.join(process.args[:4])} ... failed; its output: {log_file}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", required=True, type=Path, help="path of the reference script (ref_sac.py)")
    parser.add_argument("--env", default="Hopper-v5")
    parser.add_argument("--steps", type=int, default=20_000, help="env steps of each run, the random phase included")
    parser.add_argument("--eval-every", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not args.reference.is_file():
        raise SystemExit(f"no reference script at {args.reference}: pass --reference PATH/ref_sac.py")
    if args.steps <= RANDOM_STEPS + args.eval_every:
        raise SystemExit(f"--steps must exceed {RANDOM_STEPS} random steps plus one --eval-every")
    side_by_side = gpus() >= 2
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        reference = [sys.executable, str(args.reference), args.env, str(args.seed), str(args.steps), str(tmp / "ref.jsonl"),
                     "--eval-every", str(args.eval_every), "--eval-episodes", "1"]
        ours = [sys.executable, "-m", "distributed_o2o.cli.main", "finetune", "--algo", "sac", "--env", args.env,
                "--mode", "local", "--seed", str(args.seed), "--online-steps", str(args.steps), "--quiet",
                "--out", str(tmp / "ours"), "--set", f"eval_every={args.eval_every}", "--set", "eval_episodes=1",
                "--set", f"random_start_steps={RANDOM_STEPS}", "--set", f"learning_starts={RANDOM_STEPS}",
                "--set", "critic_layer_norm=false", "--set", "log_every=500"]
        log(f"running the two {'side by side on GPUs 0 and 1' if side_by_side else 'one after the other'}")
        if side_by_side:
            runs = [start(reference, 0, tmp / "ref.log"), start(ours, 1, tmp / "ours.log")]
            walls = [finish(*runs[0], tmp / "ref.log"), finish(*runs[1], tmp / "ours.log")]
        else:
            walls = [finish(*start(reference, None, tmp / "ref.log"), tmp / "ref.log"),
                     finish(*start(ours, None, tmp / "ours.log"), tmp / "ours.log")]
        lines = [json.loads(line) for line in (tmp / "ref.jsonl").read_text().splitlines()]
        learning = [line["steps_per_s"] for line in lines if line["step"] > RANDOM_STEPS + args.eval_every // 2]
        reference_rate = sum(learning) / len(learning)
        ours_rate = scalar_rate(tmp / "ours", "train/updates", RANDOM_STEPS)[0]
        ours_final = json.loads((tmp / "ours" / "summary.json").read_text())["final"]["return_mean"]
    print(json.dumps({**machine("cuda" if gpus() else "cpu"), "env": args.env, "steps": args.steps, "seed": args.seed,
                      "side_by_side": side_by_side,
                      "reference": {"env_steps_per_s": round(reference_rate, 1), "process_wall_s": round(walls[0], 1),
                                    "final_return": round(lines[-1]["return"], 1)},
                      "local_mode": {"env_steps_per_s": round(ours_rate, 1), "process_wall_s": round(walls[1], 1),
                                     "final_return": round(ours_final, 1)},
                      "ratio": round(ours_rate / reference_rate, 3)}, indent=2))


if __name__ == "__main__":
    main()
