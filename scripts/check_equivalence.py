"""Show that a change leaves seeded `--mode local` fine-tuning bit-identical.

    python scripts/check_equivalence.py run OUT        # run every case with this checkout's code
    python scripts/check_equivalence.py compare A B    # per case: identical, or the first difference

`run` makes a small noisy-PD dataset on Pendulum-v1 and two weak starting policies (BC and
BC-det), fine-tunes each case for a few hundred env steps with tiny networks and tiny offline
stages, and writes per case `OUT/<case>.jsonl`: the evaluation lines of metrics.jsonl, the
TensorBoard training and offline-stage scalars, the hand-over scores and a SHA-256 of every
tensor of the final checkpoint (the policy's weights first). Wall-clock and rate fields are
left out: they are the only values that differ between two runs of the same code (so are the
stage records' ids and paths, which is why the stages show through their scalars).
Run it on the old code, then on the new one, and compare the two directories.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

# Pendulum, a few hundred env steps, evaluations every 100, training scalars every 50.
COMMON = {"env": "Pendulum-v1", "seed": 3, "hidden": [32, 32], "eval_every": 100, "eval_episodes": 2,
          "log_every": 50, "batch_size": 32, "runtime": {"device": "cpu"}}
# Each case: algo, starting policy ("bc", "bc-det" or None), fields.
CASES = {
    "sac": ("sac", None, {"online_steps": 300, "random_start_steps": 100, "learning_starts": 100}),
    "porl": ("porl", "bc", {"online_steps": 300, "presample_steps": 100, "presample_utd": 2, "utd": 1, "num_critics": 4}),
    "porl-constrained": ("porl", "bc", {"online_steps": 300, "presample_steps": 100, "presample_utd": 2, "utd": 1,
                                        "num_critics": 4, "constraint": {"eps_anneal_steps": 200, "lambda_lr": 0.01}}),
    "o2sac": ("o2sac", "bc", {"online_steps": 300, "reevaluate_steps": 40, "align_steps": 40, "utd": 1,
                              "learning_starts": 50, "constraint": {"eps_anneal_steps": 200, "lambda_lr": 0.01}}),
    "o2sac-average": ("o2sac", "bc", {"online_steps": 300, "reevaluate_steps": 40, "align_steps": 40, "utd": 1,
                                      "learning_starts": 50, "policy_average_tau": 0.05,
                                      "constraint": {"reference": "average", "lambda_lr": 0.01}}),
    "o2td3": ("o2td3", "bc-det", {"online_steps": 300, "reevaluate_steps": 40, "align_steps": 40, "learning_starts": 50,
                                  "constraint": {"eps_anneal_steps": 200, "lambda_lr": 0.01}}),
    "o2ppo": ("o2ppo", "bc", {"online_steps": 400, "reevaluate_steps": 40, "value_batch_size": 64, "rollout_steps": 100,
                              "minibatch_size": 50, "epochs": 2, "shaping_end_steps": 300}),
}
VOLATILE = ("wall_time", "per_s", "_time_s")


def volatile(key: str) -> bool:
    return any(part in key for part in VOLATILE)


def make_inputs(root: Path) -> dict[str, str]:
    """The dataset and the BC / BC-det policies pretrained on it (deterministic per seed)."""
    import numpy as np

    from distributed_o2o.algorithms.offline import run_pretraining
    from distributed_o2o.config import PretrainConfig
    from distributed_o2o.data import collect_dataset, load_dataset, write_dataset

    env = COMMON["env"]
    rng = np.random.default_rng(0)

    def noisy_pd(obs):
        theta = np.arctan2(obs[..., 1], obs[..., 0])
        action = np.clip(-(5.0 * theta + obs[..., 2]), -1.0, 1.0)[..., None]
        return np.clip(action + rng.normal(0, 0.3, action.shape), -1, 1).astype(np.float32)

    data = collect_dataset(env, noisy_pd, 1000, seed=0, progress=False)
    dataset = write_dataset(root / "data.hdf5", data, env_id=env, behavior_policy="noisy PD", seed=0)
    paths = {"dataset": str(dataset)}
    for algo in ("bc", "bc-det"):
        config = PretrainConfig(algo=algo, steps=200, batch_size=64, hidden=COMMON["hidden"], seed=0, device="cpu")
        paths[algo] = str(run_pretraining(config, load_dataset(str(dataset), env), root / algo, progress=False))
    return paths


def tensor_digests(checkpoint: Path) -> dict[str, str]:
    """SHA-256 of each tensor of each module file, keyed "module/tensor" (the policy first)."""
    from safetensors.torch import load_file

    files = sorted(checkpoint.glob("*.safetensors"), key=lambda f: (f.stem != "policy", f.stem))
    return {f"{f.stem}/{name}": hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()
            for f in files for name, tensor in sorted(load_file(str(f)).items())}


def tensorboard_scalars(run: Path) -> list[dict]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    return [{"scalar": tag, "step": e.step, "value": e.value} for tag in sorted(events.Tags()["scalars"])
            if not volatile(tag) for e in events.Scalars(tag)]


def records(run: Path) -> list[dict]:
    """What a case's run computed, in a fixed order, without wall-clock fields."""
    lines = [{k: v for k, v in json.loads(line).items() if not volatile(k)}
             for line in (run / "metrics.jsonl").read_text().splitlines()]
    out = [{"metrics": line} for line in lines]
    summary = json.loads((run / "summary.json").read_text())
    out.append({"handover": summary.get("handover")})
    out.extend({"scalar_event": event} for event in tensorboard_scalars(run))
    final = max((run / "checkpoints").iterdir())
    out.extend({"checksum": name, "sha256": digest} for name, digest in tensor_digests(final).items())
    return out


def run(out: Path, cases: list[str]) -> None:
    import torch

    from distributed_o2o.config import finetune_config
    from distributed_o2o.runtime.finetune import run_finetune

    torch.set_num_threads(1)  # one thread: the same reductions in the same order every run
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        inputs = make_inputs(Path(tmp))
        for case in cases:
            algo, start, fields = CASES[case]
            extra = {} if start is None else {"policy": inputs[start]}
            if algo in ("o2sac", "o2td3", "o2ppo"):
                extra["dataset"] = inputs["dataset"]
            config = finetune_config(algo, None, {**COMMON, **extra, **fields})
            run_dir = Path(tmp) / case
            run_finetune(config, run_dir, mode="local", progress=False)
            with open(out / f"{case}.jsonl", "w") as f:
                for record in records(run_dir):
                    f.write(json.dumps(record, sort_keys=True) + "\n")
            print(f"{case}: written {out / f'{case}.jsonl'}", flush=True)


def compare(a: Path, b: Path) -> int:
    """Prints one line per case; returns 1 when any case differs or is missing."""
    status = 0
    for case in CASES:
        files = [a / f"{case}.jsonl", b / f"{case}.jsonl"]
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            print(f"{case}: missing {', '.join(missing)}")
            status = 1
            continue
        left, right = (f.read_text().splitlines() for f in files)
        first = next((i for i, (x, y) in enumerate(zip(left, right)) if x != y), None)
        if first is None and len(left) == len(right):
            print(f"{case}: identical ({len(left)} records)")
            continue
        status = 1
        if first is None:
            print(f"{case}: different: {len(left)} vs {len(right)} records")
        else:
            print(f"{case}: different at record {first + 1}:\n  {a.name}: {left[first]}\n  {b.name}: {right[first]}")
    return status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="run every case, write OUT/<case>.jsonl")
    run_parser.add_argument("out", type=Path)
    run_parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    compare_parser = sub.add_parser("compare", help="compare two output directories")
    compare_parser.add_argument("a", type=Path)
    compare_parser.add_argument("b", type=Path)
    args = parser.parse_args()
    if args.command == "run":
        run(args.out, args.cases)
        return 0
    return compare(args.a, args.b)


if __name__ == "__main__":
    sys.exit(main())
