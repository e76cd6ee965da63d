"""`o2o demo`: the main job on its embedded default, end to end on HalfCheetah-v5.

1. A small dataset from the zoo's medium policy (what `o2o data make --quality medium` builds).
2. A BC policy pretrained on it.
3. PORL fine-tuning of that policy on a local Ray instance (or in one process).
4. A before/after table of evaluation returns (normalised by the zoo's references) and the
   learning curve.
"""

from __future__ import annotations

from pathlib import Path

from distributed_o2o.config import DemoConfig


def run_demo(config: DemoConfig, out: str | Path, progress: bool = True) -> dict:
    from rich.console import Console

    from distributed_o2o.algorithms.offline import run_pretraining
    from distributed_o2o.data.make import make_dataset, write_made_dataset
    from distributed_o2o.plotting import plot_curves, read_curve
    from distributed_o2o.runtime.finetune import run_finetune

    console = Console()
    out = Path(out)

    console.rule(f"1. dataset: the zoo's {config.quality} policy")
    dataset = make_dataset(config.env, config.quality, config.dataset_steps, seed=config.seed, progress=progress)
    dataset_file = write_made_dataset(out / "dataset.hdf5", dataset)
    behaviour = dataset.summary()
    console.print(f"{len(dataset)} transitions, behaviour return {behaviour['return_mean']:.1f} "
                  f"(normalised {behaviour['normalized_score_mean']:.1f})")

    console.rule("2. offline pretraining: BC")
    pretrain = config.pretrain.model_copy(update={"env": config.env, "dataset": str(dataset_file), "seed": config.seed})
    policy_dir = run_pretraining(pretrain, dataset, out / "bc", progress=progress)

    console.rule(f"3. online fine-tuning: PORL ({'local Ray' if config.mode == 'ray' else 'one process'})")
    finetune = config.finetune.model_copy(update={"env": config.env, "policy": str(policy_dir), "seed": config.seed,
                                                  "ref_min_score": dataset.ref_min_score, "ref_max_score": dataset.ref_max_score})
    summary = run_finetune(finetune, out / "porl", mode=config.mode, progress=progress)

    plot_curves({"PORL": read_curve(out / "porl")}, out / "curve.png", f"PORL on {config.env} from BC of zoo-{config.quality} data",
                metric="return")
    summary["curve"] = str(out / "curve.png")
    summary["behaviour_return"] = behaviour["return_mean"]
    return summary
