"""`o2o report`: the figures of each group of runs, aggregates over envs, and the files.

Per group (env, dataset, method), over its finished runs (seeds pooled), each an IQM with a 95%
bootstrap CI: the score at the final evaluation; the mean over the last 10% of evaluations and
over the last five; the score just before hand-over (the last evaluation at or before the env step from which the
learnt policy acts: PORL's pre-sample end, WSRL's warm-up end, else step 0); the lowest score
after hand-over; the dip: the score before hand-over minus the lowest within the first 10%
of the online steps after it; and, where the run delivers another policy than the one learning
(a Polyak average, a validated deployment), the learning policy's own lowest after hand-over.
"""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from distributed_o2o.errors import UserError
from distributed_o2o.report.runs import RunRecord, read_runs
from distributed_o2o.report.stats import DEFAULT_REPS, improvement_probability, iqm_curve, iqm_interval


def run_figures(run: RunRecord) -> dict[str, float]:
    """One run's figures (the per-run inputs of the group estimates)."""
    before = run.steps <= run.handover_step
    after = ~before
    window = after & (run.steps <= run.handover_step + 0.1 * run.online_steps)
    if after.any() and not window.any():
        window = run.steps == run.steps[after][0]
    last = max(1, math.ceil(0.1 * len(run.scores)))
    start = float(run.scores[before][-1]) if before.any() else math.nan
    learner = run.learner_scores
    return {
        "final": float(run.scores[-1]),
        "last_10pct": float(run.scores[-last:].mean()),
        "last_5": float(run.scores[-5:].mean()),
        "before_handover": start,
        "lowest_after_handover": float(run.scores[after].min()) if after.any() else math.nan,
        "dip": start - float(run.scores[window].min()) if window.any() else math.nan,
        "learner_lowest_after_handover": float(learner[after].min()) if learner is not None and after.any() else math.nan,
    }


def _estimate(values: list[float], reps: int) -> dict[str, float] | None:
    values = [v for v in values if not math.isnan(v)]
    return iqm_interval(np.array(values), reps).to_dict() if values else None


def build_report(roots: list[str | Path], baseline: str | None = None, reps: int = DEFAULT_REPS) -> dict[str, Any]:
    runs = read_runs(roots)
    finished = [r for r in runs if r.finished]
    groups: dict[tuple[str, str, str], list[RunRecord]] = defaultdict(list)
    for run in sorted(finished, key=lambda r: (r.group, r.seed)):
        groups[run.group].append(run)
    figures_of = {key: [run_figures(r) for r in members] for key, members in groups.items()}
    methods = sorted({key[2] for key in groups})
    if baseline is not None and baseline not in methods:
        raise UserError(f"--baseline '{baseline}' is not a method of these runs (they have: {', '.join(methods)})")
    out_groups = []
    for (env, dataset, method), members in groups.items():
        if len({r.normalised for r in members}) > 1:
            raw = ", ".join(str(r.path) for r in members if not r.normalised)
            raise UserError(f"{env} {method}: some runs have normalised scores and some only raw returns ({raw}): "
                            "report them separately")
        figures = figures_of[env, dataset, method]
        final = _estimate([f["final"] for f in figures], reps)
        group = {"env": env, "dataset": dataset, "method": method, "n_runs": len(members),
                 "seeds": [r.seed for r in members], "score": "normalised" if members[0].normalised else "raw return",
                 "references": ", ".join(sorted({r.references for r in members})), "online_steps": members[0].online_steps,
                 "handover_env_step": members[0].handover_step,
                 "iqm": final["value"], "ci_low": final["ci_low"], "ci_high": final["ci_high"],
                 "final_scores": [f["final"] for f in figures],
                 "wall_time_s_mean": _mean([r.wall_time_s for r in members]),
                 "population_sizes": sorted({r.population for r in members})}
        for name in ("last_10pct", "last_5", "before_handover", "lowest_after_handover", "dip", "learner_lowest_after_handover"):
            group[name] = _estimate([f[name] for f in figures], reps)
        base = _baseline_group(figures_of, env, dataset, baseline) if baseline not in (None, method) else None
        if base is not None:
            finals = np.array([f["final"] for f in base])
            group["baseline_improvement"] = improvement_probability(finals, np.array(group["final_scores"]), reps).to_dict()
        out_groups.append(group)
    return {"command": " ".join(["o2o", *sys.argv[1:]]) if sys.argv and sys.argv[0].endswith("o2o") else None,
            "date": time.strftime("%Y-%m-%d %H:%M %Z"), "machine": f"{platform.node()} ({platform.machine()})",
            "bootstrap_reps": reps, "baseline": baseline, "n_runs": len(runs), "n_unfinished": len(runs) - len(finished),
            "unfinished": [str(r.path) for r in runs if not r.finished], "groups": out_groups,
            "aggregate": _aggregate(groups, figures_of, baseline, reps), "_runs": finished}


def _baseline_group(figures_of: dict[tuple[str, str, str], list[dict[str, float]]], env: str, dataset: str,
                    baseline: str) -> list[dict[str, float]] | None:
    """The baseline's runs' figures to compare a group with: on the same env and dataset, else its
    only group on that env (a method without a dataset, as SAC from scratch, against one with)."""
    if (env, dataset, baseline) in figures_of:
        return figures_of[env, dataset, baseline]
    on_env = [figures for (e, _, m), figures in figures_of.items() if e == env and m == baseline]
    return on_env[0] if len(on_env) == 1 else None


def _aggregate(groups: dict[tuple[str, str, str], list[RunRecord]], figures_of: dict[tuple[str, str, str], list[dict[str, float]]],
               baseline: str | None, reps: int) -> list[dict[str, Any]]:
    """Per method over every env it ran on (normalised scores only): IQM over runs x envs, each
    env cut to the method's smallest run count there (stratified bootstrap needs a full matrix),
    of the final scores and of each run's mean over its last 10% of evaluations (where a method
    swings, which final point each seed ends on is luck)."""
    by_method: dict[str, dict[str, dict[str, np.ndarray]]] = defaultdict(dict)  # method -> task -> figure -> runs
    per_env = defaultdict(int)
    for env, _, method in groups:
        per_env[method, env] += 1
    for (env, dataset, method), members in groups.items():
        if members[0].normalised:  # a task is an env, or env and dataset where a method ran on several
            task = env if per_env[method, env] == 1 else f"{env} / {dataset}"
            figures = figures_of[env, dataset, method]
            by_method[method][task] = {name: np.array([f[name] for f in figures]) for name in ("final", "last_10pct")}
    rows = []
    for method, tasks in by_method.items():
        if len(tasks) < 2:
            continue
        order = sorted(tasks)
        base = by_method.get(baseline or "")
        compared = base is not None and method != baseline and sorted(base) == order
        final, last = (_matrix({t: tasks[t][name] for t in order}, order) for name in ("final", "last_10pct"))
        est = iqm_interval(final, reps)
        row = {"method": method, "tasks": order, "runs_per_task": len(final),
               "iqm": est.value, "ci_low": est.low, "ci_high": est.high, "last_10pct": iqm_interval(last, reps).to_dict()}
        if compared:
            for key, name, matrix in (("baseline_improvement", "final", final), ("baseline_improvement_last_10pct", "last_10pct", last)):
                row[key] = improvement_probability(_matrix({t: base[t][name] for t in order}, order), matrix, reps).to_dict()
        rows.append(row)
    return rows


def _matrix(tasks: dict[str, np.ndarray], order: list[str]) -> np.ndarray:
    n = min(len(tasks[t]) for t in order)
    return np.stack([tasks[t][:n] for t in order], axis=1)


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


# ---------------------------------------------------------------- files
def _fmt(est: dict[str, float] | None, digits: int = 1) -> str:
    return "-" if est is None else f"{est['value']:.{digits}f} [{est['ci_low']:.{digits}f}, {est['ci_high']:.{digits}f}]"


def _wall_cell(group: dict[str, Any]) -> str:
    """The group's mean wall time, saying where its seeds trained as populations (whose wall time
    covers all their seeds, not one)."""
    if group["wall_time_s_mean"] is None:
        return "-"
    wall = f"{group['wall_time_s_mean']:.0f}"
    sizes = [k for k in group["population_sizes"] if k > 1]
    if not sizes:
        return wall
    which = f"population of {sizes[0]}" if len(sizes) == 1 else f"populations of {sizes[0]}–{sizes[-1]}"
    return f"{wall} ({which}{' for some seeds' if 1 in group['population_sizes'] else ''})"


def write_markdown(report: dict[str, Any], path: Path, curve_files: dict[str, str]) -> None:
    lines = ["# Report", ""]
    if report["command"]:
        lines.append(f"Command: `{report['command']}`  ")
    lines += [f"Made {report['date']} on {report['machine']}. {report['n_runs']} runs read, "
              f"{report['n_unfinished']} unfinished and left out.", "",
              "Each figure: interquartile mean (IQM) over a group's runs (seeds) with its 95% stratified bootstrap "
              f"confidence interval (rliable, percentile method, {report['bootstrap_reps']:,} resamples). "
              "*final*: the last evaluation; *last 10%*, *last 5*: each run's mean over its last 10% of evaluations, "
              "over its last five; *before*: the last evaluation at or before hand-over (the env step from which the "
              "learnt policy acts); *lowest after*: the lowest evaluation after it; *dip*: before minus the lowest "
              "within the first 10% of online steps after hand-over; *learner's lowest after*: where the run delivers "
              "another policy than the one learning (a Polyak average, a validated deployment), the learning policy's "
              "own lowest evaluation after hand-over (its mode, `online_return_mean`); *wall s*: the mean of the runs' "
              "wall times, where the seeds of a population run share one (the cell says so). Env steps include any "
              "pre-sample stage.", ""]
    baseline = report["baseline"]
    by_env: dict[str, list[dict]] = defaultdict(list)
    for group in report["groups"]:
        by_env[group["env"]].append(group)
    for env, groups in by_env.items():
        lines += [f"## {env}", ""]
        header = ["method", "dataset", "runs", "final", "last 10%", "last 5", "before", "lowest after", "dip",
                  "learner's lowest after", "score", "wall s"]
        if baseline:
            header.append(f"P({baseline} > method)")
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for g in groups:
            row = [g["method"], g["dataset"], str(g["n_runs"]), _fmt({"value": g["iqm"], "ci_low": g["ci_low"], "ci_high": g["ci_high"]}),
                   _fmt(g["last_10pct"]), _fmt(g["last_5"]), _fmt(g["before_handover"]), _fmt(g["lowest_after_handover"]),
                   _fmt(g["dip"]), _fmt(g["learner_lowest_after_handover"]),
                   g["score"] + ("" if g["score"] == "raw return" else f" ({g['references']} references)"),
                   _wall_cell(g)]
            if baseline:
                row.append(_fmt(g.get("baseline_improvement"), 2))
            lines.append("| " + " | ".join(row) + " |")
        if env in curve_files:
            lines += ["", f"![{env}]({curve_files[env]})"]
        lines.append("")
    if report["aggregate"]:
        header = ["method", "envs", "runs per env", "final", "last 10%"]
        if baseline:
            header += [f"P({baseline} > method), final", f"P({baseline} > method), last 10%"]
        lines += ["## All envs", "", "IQM over runs x envs of normalised scores, the final one and each run's mean over its "
                  "last 10% of evaluations (each env cut to the method's smallest run count).", "",
                  "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in report["aggregate"]:
            cells = [row["method"], ", ".join(row["tasks"]), str(row["runs_per_task"]),
                     _fmt({"value": row["iqm"], "ci_low": row["ci_low"], "ci_high": row["ci_high"]}), _fmt(row["last_10pct"])]
            if baseline:
                cells += [_fmt(row.get(key), 2) for key in ("baseline_improvement", "baseline_improvement_last_10pct")]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    path.write_text("\n".join(lines))


def plot_curves(runs: list[RunRecord], out: Path, reps: int) -> dict[str, str]:
    """One PNG per env: the IQM curve of each group with its CI band; returns env -> file name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_env: dict[str, dict[tuple[str, str], list[RunRecord]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        by_env[run.env][run.dataset, run.method].append(run)
    files = {}
    for env, groups in by_env.items():
        fig, ax = plt.subplots(figsize=(7, 4.5))
        several_datasets = len({d for d, _ in groups}) > 1
        for (dataset, method), members in sorted(groups.items()):
            common = sorted(set.intersection(*(set(r.steps.tolist()) for r in members)))
            scores = np.array([[r.scores[list(r.steps).index(s)] for s in common] for r in members])
            mid, low, high = iqm_curve(scores, reps)
            label = f"{method} ({dataset})" if several_datasets and dataset != "-" else method
            line, = ax.plot(common, mid, label=f"{label}, {len(members)} runs")
            ax.fill_between(common, low, high, alpha=0.2, color=line.get_color())
            if members[0].handover_step > 0:
                ax.axvline(members[0].handover_step, color=line.get_color(), linestyle=":", linewidth=1)
        ax.set_xlabel("env steps (pre-sample included)")
        ax.set_ylabel("normalised score" if runs[0].normalised else "return")
        ax.set_title(f"{env}: IQM over seeds, 95% bootstrap CI (dotted: hand-over)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        name = f"curves-{env}.png"
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        files[env] = name
    return files


def write_report(roots: list[str | Path], out: str | Path, baseline: str | None = None, reps: int = DEFAULT_REPS) -> dict[str, Any]:
    report = build_report(roots, baseline, reps)
    runs = report.pop("_runs")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    curve_files = plot_curves(runs, out, reps) if runs else {}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    write_markdown(report, out / "report.md", curve_files)
    return report
