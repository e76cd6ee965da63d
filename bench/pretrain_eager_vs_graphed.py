"""A pretrainer trained eagerly and on the graphed path, evaluated side by side: issue #16's check
that the graphed pretrainers learn what the eager ones learn, at equal gradient steps.

    python bench/pretrain_eager_vs_graphed.py --dataset FILE --env Hopper-v5 --algo cql
        [--steps 10000] [--eval-every 2500] [--eval-episodes 10] [--seeds 0,1,2]
        [--backends eager,graph] [--set KEY=VALUE ...] [--out DIR]

Per backend and seed, one `run_pretraining` (as `o2o pretrain` runs it, `learner_backend` set)
with an evaluation every `--eval-every` steps. Prints one JSON object: per backend, the steps/s
of each run and, per evaluation step, each seed's normalised score (the return where the data
records no references) and their mean. The graph backend needs CUDA. A measurement, never a
test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from distributed_o2o.algorithms.offline import run_pretraining
from distributed_o2o.config import PretrainConfig, build_config, parse_overrides
from distributed_o2o.data import load_dataset


def scores(records: list[dict]) -> dict[int, float]:
    key = "eval_normalized_score" if "eval_normalized_score" in records[0] else "eval_return_mean"
    return {r["step"]: r[key] for r in records}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--env", required=True)
    parser.add_argument("--algo", default="cql")
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--eval-every", type=int, default=2_500)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--backends", default="eager,graph")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    parser.add_argument("--out", default=None, help="where the checkpoints go (default: a temporary directory)")
    args = parser.parse_args()

    dataset = load_dataset(args.dataset, args.env)
    out = Path(args.out or tempfile.mkdtemp(prefix="pretrain_eager_vs_graphed_"))
    report = {"command": " ".join(["python3", *sys.argv]), "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "device_name": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "torch": torch.__version__,
              "backends": {}}
    for backend in args.backends.split(","):
        runs = {}
        for seed in (int(s) for s in args.seeds.split(",")):
            fields = {"algo": args.algo, "env": args.env, "steps": args.steps,
                      "seed": seed, "learner_backend": backend, "eval_every": args.eval_every,
                      "eval_episodes": args.eval_episodes, "log_every": args.eval_every}
            config = build_config(PretrainConfig, parse_overrides(args.overrides), fields)
            path = run_pretraining(config, dataset, out / f"{backend}_seed{seed}", progress=False)
            records = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
            runs[seed] = {"scores": scores(records), "steps_per_s": records[-1]["steps_per_s"]}
            print(f"{backend} seed {seed}: {runs[seed]}", file=sys.stderr)
        steps = sorted(next(iter(runs.values()))["scores"])
        report["backends"][backend] = {
            "steps_per_s": {seed: run["steps_per_s"] for seed, run in runs.items()},
            "scores": {step: {"seeds": [run["scores"][step] for run in runs.values()],
                              "mean": float(np.mean([run["scores"][step] for run in runs.values()]))} for step in steps},
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
