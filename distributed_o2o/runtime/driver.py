"""The driver: a run as the design draws it.

    offline stages  → hand-over → online loop → final evaluation

Offline stages are cached per stage (reused when the config outside the runtime fields is
the same); the online loop is online.py, the weights broadcast broadcast.py, the resume saves
resume_state.py. Evaluations (each with its checkpoint, and with a resume save when one is
due) start at the start, at every `eval_every` boundary of the online loop and at the end; each
plays beside the training and is recorded once its episodes are played.
The driver reaches every component through a transport (transport.py), so the same code runs
in one process or over Ray actors.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields
from typing import Any

from rich.console import Console

from distributed_o2o.checkpoint import DamagedState, load_state, save_checkpoint, save_state
from distributed_o2o.errors import UserError, first_line
from distributed_o2o.progress import progress_bar
from distributed_o2o.provenance import provenance
from distributed_o2o.runtime.broadcast import Broadcast
from distributed_o2o.runtime.components import Components
from distributed_o2o.runtime.online import OnlineLoop
from distributed_o2o.runtime.resume_state import ResumeState
from distributed_o2o.runtime.run_dir import Rate, RunDir
from distributed_o2o.runtime.timings import PRESAMPLE, Timings
from distributed_o2o.runtime.transport import ComponentFailed


class RunAborted(RuntimeError):
    """A component the run cannot go on without died; the message says how to resume."""


@dataclass
class AgentRecords:
    """What is one agent's own in a run (a population keeps one per agent)."""

    eval_env_steps: int = 0  # extra interaction spent on evaluation episodes, reported separately
    best_return: float = -math.inf
    initial: dict | None = None
    handover: dict = field(default_factory=dict)

    def restore(self, saved: dict) -> None:
        """Take the saved values (in place: the online loop and the resume state share these)."""
        restored = type(self)(**saved)
        for f in fields(self):
            setattr(self, f.name, getattr(restored, f.name))


@dataclass
class Counters(AgentRecords):
    """A run's counters (a single agent's records with them: the resume state saves them)."""

    env_steps: int = 0
    updates: int = 0
    owed_updates: float = 0.0  # earned by inserted transitions, not yet started
    wall_time: float = 0.0
    rollout_failures: int = 0  # rollout worker deaths (what they had in flight was never counted nor stored)


@dataclass
class Seat:
    """One agent's place in a run: its config (its seed), run directory, evaluator and records.
    `agent` is the argument that names it in the learner's per-agent calls: () for a single
    agent, (k,) for agent k of a population."""

    config: Any
    run_dir: RunDir
    evaluator: Any
    records: AgentRecords
    agent: tuple[int, ...] = ()

    @property
    def label(self) -> str:
        return f" (seed {self.config.seed})" if self.agent else ""

    def pick(self, value: Any) -> Any:
        """This agent's share of a value the learner returns for all its agents."""
        return value[self.agent[0]] if self.agent else value


@dataclass
class PendingEvaluation:
    """An evaluation started at one point and not yet recorded: the point, and per seat the
    evaluator calls' futures by metric prefix, the weights they play, the prefix of a validated
    deployment's candidate and the checkpoint's modules as they were at the point."""

    env_steps: int
    updates: int
    updates_per_s: float
    wall_time_s: float
    initial: bool
    seats: list[tuple[dict[str, Any], dict[str, dict], str | None, dict]] = field(default_factory=list)


class Driver:
    """Drives one run. A population run (`components.seeds`) has one sub-run per seed, each in
    `run_dir / seed_<n>` and written as a separate run with that seed writes it. `timings`
    counts where the run's time goes (timings.py); the learner's parts join it at the end."""

    def __init__(self, config, run_dir: RunDir, components: Components, progress: bool = True,
                 timings: Timings | None = None):
        self.config, self.run_dir, self.c = config, run_dir, components
        self.timings = timings or Timings()
        self.t = components.transport
        self.counters = Counters()
        self.console = Console(stderr=True, quiet=not progress)
        self.progress = progress
        if components.seeds is None:
            self.seats = [Seat(config, run_dir, components.evaluator, self.counters)]
        else:
            self.seats = [Seat(config.model_copy(update={"seed": seed}), RunDir(run_dir.path / f"seed_{seed}"),
                               evaluator, AgentRecords(), (k,))
                          for k, (seed, evaluator) in enumerate(zip(components.seeds, components.evaluator, strict=True))]
        self.last_eval: dict[str, Any] | None = None  # the newest recorded evaluation line
        self.last_eval_step = 0  # the point of the newest evaluation started
        self.evaluation: PendingEvaluation | None = None
        self.presample: tuple[int, float] | None = None  # (hand-over step, loop start) while a pre-sample runs
        self.on_policy = False
        self.segment_start = time.perf_counter()
        self.eval_rate = Rate()  # updates/s between evaluations (of this segment after a resume)
        self.broadcast = Broadcast(self.t, components.learner, components.workers, config.runtime.broadcast_every)
        self.online = OnlineLoop(config, components, self.counters, self.broadcast, [s.run_dir for s in self.seats],
                                 self.console, progress, self.timings)
        self.resume = ResumeState(run_dir.resume_dir, components, self.counters, config.resume_every, config.online_steps,
                                  None if components.seeds is None else [seat.records for seat in self.seats])

    # ------------------------------------------------------------------ entry
    def run(self, resume: bool = False) -> dict[str, Any]:
        try:
            return self._run(resume)
        except ComponentFailed as exc:
            raise RunAborted(self._abort_message(exc)) from None
        except OSError as exc:  # the run directory (or a file in it) stopped being writable
            if not self.run_dir.holds(exc.filename):
                raise
            raise UserError(f"cannot write to run directory '{self.run_dir.path}' ({exc.strerror or exc}); the run "
                            f"stopped at env step {self.counters.env_steps}, what it saved is kept: make the directory "
                            f"writable again, and {self._how_to_continue()}") from None

    def _run(self, resume: bool) -> dict[str, Any]:
        self.segment_start = time.perf_counter()
        self.eval_rate = Rate()
        self.on_policy = self.t.call(self.c.learner, "is_on_policy")
        if resume:
            with self.timings.part("resume"):
                self._restore()
        self.online.plan(self.on_policy)  # refuses a configuration that would stall, before any work
        # On a resume too: an extended budget or new runtime fields hold for later resumes.
        for seat in self.seats:
            seat.run_dir.write_config(seat.config.model_dump())
        if not resume:
            with self.timings.part("offline_stages"):
                self._offline_stages()
            with self.timings.part("handover"):
                self._handover()
            self._evaluate_and_save(initial=True)
        else:  # the resume state is the state before its point's evaluation: play it again
            with self.timings.part("evaluations"):
                self._start_evaluation(initial=self.counters.env_steps == 0)
            self._record_evaluation()
        # A stage before the hand-over still ahead (PORL's pre-sample): timed until the loop passes it.
        presample_end = self.t.call(self.c.learner, "handover_step")
        self.presample = (presample_end, time.perf_counter()) if self.counters.env_steps < presample_end else None
        with self.timings.part("online"):  # its evaluations and waiting are counted as such
            self.online.run(self.on_policy, at_boundary=self._at_boundary, status=self._bar_text,
                            tick=self._record_evaluation)
        self._evaluate_if_due(final=True)
        with self.timings.part("evaluations"):
            self._record_evaluation(wait=True)
        return self._finish()

    def _abort_message(self, exc: ComponentFailed) -> str:
        reason = first_line(exc.reason)
        return (f"the {exc.role} actor {exc.name} died ({reason}); the run stopped at env step {self.counters.env_steps}: "
                f"{self._how_to_continue()}")

    def _how_to_continue(self) -> str:
        if self.resume.saved_step is None:
            return f"`o2o finetune --resume {self.run_dir.path}` starts it again, reusing the cached offline stages"
        return (f"`o2o finetune --resume {self.run_dir.path}` continues from the last checkpoint (env step "
                f"{self.resume.saved_step}) with the replay contents")

    # ------------------------------------------------------------------ offline stages, hand-over
    def _offline_stages(self) -> None:
        """Each stage, or its cached result (every agent's, for a population: each sub-run
        caches its agent's, as a separate run would)."""
        keys = [RunDir.stage_key(seat.config.model_dump()) for seat in self.seats]
        for name, steps in self.t.call(self.c.learner, "stage_plan"):
            cached = [self._cached_stage(seat.run_dir.stage_file(name), name, key) for seat, key in zip(self.seats, keys)]
            if all(state is not None for state in cached):
                self.console.print(f"[green]stage {name}: reusing the cached result in "
                                   f"{self.seats[0].run_dir.stage_file(name).parent}")
                self.t.call(self.c.learner, "load", cached if self.c.seeds is not None else cached[0])
                continue
            chunk = max(1, min(1000, steps // 100 or 1))
            with progress_bar(self.console, self.progress) as bar:
                task = bar.add_task(f"stage {name}", total=steps)
                done = 0
                while done < steps:
                    n = min(chunk, steps - done)
                    metrics = self.t.call(self.c.learner, "run_stage", name, n)
                    done += n
                    for seat in self.seats:
                        seat.run_dir.scalars(done, seat.pick(metrics), f"stage_{name}")
                    bar.update(task, completed=done, description=f"stage {name} {_brief(self.seats[0].pick(metrics))}")
            for seat, key in zip(self.seats, keys):
                save_state(seat.run_dir.stage_file(name),
                           {"stage_key": key, "learner": self.t.call(self.c.learner, "state", *seat.agent)})

    def _cached_stage(self, cache, name: str, key: str) -> dict | None:
        """The learner state cached for stage `name` under `key`, else None."""
        if not cache.with_suffix(".json").exists():
            return None
        try:
            cached = load_state(cache)
        except DamagedState as exc:
            self.console.print(f"[yellow]stage {name}: the cached result is damaged ({exc}); computing it again")
            return None
        return cached["learner"] if cached.get("stage_key") == key else None

    def _handover(self) -> None:
        metrics, spent = self.t.call(self.c.learner, "handover", self.c.evaluator)
        for seat in self.seats:
            seat.records.eval_env_steps += seat.pick(spent)
            seat.records.handover = seat.pick(metrics)
            if seat.records.handover:
                self.console.print(f"hand-over{seat.label}: {_brief(seat.records.handover)}")

    # ------------------------------------------------------------------ evaluation
    def _at_boundary(self) -> None:
        """Where the online loop stops between chunks: the pre-sample's time once the loop has
        passed the hand-over step, then any evaluation due."""
        if self.presample is not None and self.counters.env_steps >= self.presample[0]:
            self.timings.add(PRESAMPLE, time.perf_counter() - self.presample[1])
            self.presample = None
        self._evaluate_if_due()

    def _evaluate_if_due(self, final: bool = False) -> None:
        """The evaluation trigger: at the first point past each `eval_every` boundary; at the
        end (`final`), wherever the run went on after its last evaluation."""
        step, last = self.counters.env_steps, self.last_eval_step
        every = self.config.eval_every
        if (step > last) if final else (step // every > last // every):
            self._evaluate_and_save()

    def _evaluate_and_save(self, initial: bool = False) -> None:
        """At a point where nothing is in flight: finish recording the previous evaluation, save
        the resume state when due, then start this point's evaluation. The resume state is the
        state before this point's evaluation (a resumed run plays it again: same weights, same
        start states, same lines); the evaluation plays on beside the training."""
        with self.timings.part("evaluations"):
            self._record_evaluation(wait=True)
        self.online.settle_syncs()
        due = self.resume.due(initial)
        with self.timings.part("resume"):
            saves = self.resume.begin() if due else []
        with self.timings.part("evaluations"):
            self._start_evaluation(initial)
        with self.timings.part("resume"):
            for future in saves:  # the replay files are written while the evaluators play
                self.t.get(future)
            if due:  # at a quiet point: nothing running or reserved
                self.counters.owed_updates = self.online.owed_updates()
                self.resume.commit(self._wall_time(), self.on_policy)
        self._record_evaluation()  # at once where the transport is local: before the training moves on

    def _start_evaluation(self, initial: bool) -> None:
        """Every agent's evaluation, each on its own evaluator (a population's all at once), of
        the policies as they are now (`Algorithm.evaluation_policies`); recorded by
        `_record_evaluation` once all are played."""
        self.broadcast.publish_now()
        arch = self.t.call(self.c.learner, "policy_arch")
        c = self.counters
        self.evaluation = PendingEvaluation(c.env_steps, c.updates, round(self.eval_rate(c.updates), 2),
                                            round(self._wall_time(), 1), initial)
        for seat in self.seats:
            runs, candidate = self.t.call(self.c.learner, "evaluation_weights", *seat.agent)
            futures = {prefix: self.t.submit(seat.evaluator, "evaluate", arch, weights, deterministic, c.env_steps)
                       for prefix, (weights, deterministic) in runs.items()}
            modules = self.t.call(self.c.learner, "checkpoint_modules", *seat.agent)
            self.evaluation.seats.append((futures, {prefix: weights for prefix, (weights, _) in runs.items()}, candidate,
                                          modules))
        self.last_eval_step = c.env_steps

    def _record_evaluation(self, wait: bool = False) -> None:
        """Record the evaluation in play once every agent's episodes are played (with `wait`,
        waiting for them). The online loop calls this between its steps (`OnlineLoop.run`'s tick)."""
        evaluation = self.evaluation
        if evaluation is None:
            return
        futures = [f for started in evaluation.seats for f in started[0].values()]
        if not wait and len(self.t.wait(futures, num_returns=len(futures), timeout=0)) < len(futures):
            return
        self.evaluation = None
        for seat, started in zip(self.seats, evaluation.seats, strict=True):
            self.last_eval = self._record_agent_evaluation(seat, evaluation, *started)

    def _record_agent_evaluation(self, seat: Seat, evaluation: PendingEvaluation, futures: dict[str, Any],
                                 weights: dict[str, dict], candidate: str | None, modules: dict) -> dict[str, Any]:
        """The agent's evaluation line, metrics and checkpoint, and what its learner learns from
        the scores (of the weights as scored)."""
        mine, learner, step = seat.records, self.c.learner, evaluation.env_steps
        records = {prefix: self.t.get(future) for prefix, future in futures.items()}
        mine.eval_env_steps += sum(r.pop("env_steps") for r in records.values())
        record = records[""]
        self.t.call(learner, "on_evaluation", record["return_mean"], step, weights[""], *seat.agent)
        line = {"env_steps": step, "updates": evaluation.updates, "eval_env_steps": mine.eval_env_steps,
                "return_mean": record["return_mean"], "return_std": record["return_std"],
                "normalized_score": record["normalized_score"], "episodes": record["episodes"],
                **{f"{prefix}return_mean": r["return_mean"] for prefix, r in records.items() if prefix},
                "wall_time_s": evaluation.wall_time_s, "updates_per_s": evaluation.updates_per_s}
        run_dir = seat.run_dir
        run_dir.append_metrics(line)
        run_dir.scalars(step, {k: v for k, v in line.items() if isinstance(v, (int, float)) and k != "env_steps"}, "eval")
        run_dir.flush()
        if evaluation.initial:
            mine.initial = line
        mine.best_return = max(mine.best_return, record["return_mean"])
        with self.timings.part("checkpoints"):
            save_checkpoint(run_dir.checkpoint_dir(step), modules, env_id=seat.config.env, algo=seat.config.algo,
                            config=seat.config.model_dump(),
                            extra={"env_steps": step, "updates": evaluation.updates, "eval": line, **self.c.references})
        # A candidate that passes is deployed from here on (after the checkpoint of the policy this
        # line scored): the next point's fresh episodes report it.
        if candidate is not None:
            self.t.call(learner, "offer_candidate", records[candidate]["return_mean"], weights[candidate], *seat.agent)
        return line

    def _bar_text(self) -> str:
        return "online" if self.last_eval is None else f"online  eval return {self.last_eval['return_mean']:.1f}"

    # ------------------------------------------------------------------ resume, summary
    def _restore(self) -> None:
        self.resume.restore()
        c = self.counters
        self.eval_rate = Rate(c.updates)
        for seat in self.seats:  # the resumed point's evaluation is played again
            seat.run_dir.truncate_metrics(c.env_steps - 1)
        records = self.seats[-1].run_dir.read_metrics()
        self.last_eval = records[-1] if records else None
        self.console.print(f"resuming at env step {c.env_steps} ({c.updates} updates)")
        if self.config.online_steps < c.env_steps:
            raise UserError(f"the run is at env step {c.env_steps}: pass --online-steps of at least that "
                            f"to extend it (got {self.config.online_steps})")

    def _wall_time(self) -> float:
        """Seconds of this run, summed over resumed segments."""
        return self.counters.wall_time + time.perf_counter() - self.segment_start

    def _finish(self) -> dict[str, Any]:
        """The summaries, written into the run directories, which are closed: the run's, or for a
        population {"seeds", "runs": each sub-run's}. The learner's parts join `timings` here."""
        for name, seconds in self.t.call(self.c.learner, "time_spent").items():
            self.timings.add(name, seconds)
        summaries = [self._finish_agent(seat) for seat in self.seats]
        self.run_dir.close()
        if self.c.seeds is None:
            return summaries[0]
        return {"seeds": self.c.seeds, "run_dir": str(self.run_dir.path), "runs": summaries}

    def _finish_agent(self, seat: Seat) -> dict[str, Any]:
        c, mine, run_dir = self.counters, seat.records, seat.run_dir
        records = run_dir.read_metrics()
        best = max(records, key=lambda r: r["return_mean"]) if records else None
        wall_time = self._wall_time()
        summary = {"algo": seat.config.algo, "env": seat.config.env, "seed": seat.config.seed, "initial": mine.initial,
                   "final": records[-1] if records else None, "best": best,
                   "best_checkpoint": str(run_dir.checkpoint_dir(best["env_steps"])) if best else None,
                   "env_steps": c.env_steps, "updates": c.updates, "updates_per_s": c.updates / max(wall_time, 1e-9),
                   "eval_env_steps": mine.eval_env_steps, "rollout_failures": c.rollout_failures, "handover": mine.handover,
                   "handover_env_step": self.t.call(self.c.learner, "handover_step"),
                   "wall_time_s": wall_time, "run_dir": str(run_dir.path), **provenance()}
        run_dir.write_summary(summary)
        run_dir.close()
        return summary


def _brief(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.3g}" for k, v in list(metrics.items())[:4])
