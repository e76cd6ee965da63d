"""The driver: sequences offline stages, hand-over, interaction, updates, evaluation and
checkpoints. It reaches every component through a transport (see transport.py), so the same
code runs in one process or over Ray actors.

Off-policy interaction is a loop over futures: rollout chunks go from a worker straight into
a replay shard (the insert is submitted with the collect's future as its argument), the
learner pulls its batches from the shards itself, and the driver only counts, decides what
to start next and keeps the books. With `LocalTransport` every call finishes at `submit`, so
the same loop runs sequentially: collect, insert, update, publish, in that order.
"""

from __future__ import annotations

import bisect
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rich.console import Console

from distributed_o2o.checkpoint import DamagedState, load_state, save_checkpoint, save_state
from distributed_o2o.config import RUNTIME_FIELDS
from distributed_o2o.errors import UserError, first_line
from distributed_o2o.progress import progress_bar
from distributed_o2o.provenance import provenance
from distributed_o2o.runtime.replay import RateLimiter, check_rate_limits
from distributed_o2o.runtime.resume_state import ResumeStore
from distributed_o2o.runtime.run_dir import Rate, RunDir
from distributed_o2o.runtime.transport import ComponentFailed

# A rollout worker that Ray is restarting is asked again after this long, and given up if it
# delivers nothing for RESTART_TIMEOUT_S (no node can take it).
RETRY_DELAY_S = 0.5
RESTART_TIMEOUT_S = 300.0


class RunAborted(RuntimeError):
    """A component the run cannot go on without died; the message says how to resume."""


@dataclass
class Components:
    """Handles to the parts of a run (plain objects or actor handles, per the transport)."""

    transport: Any
    learner: Any
    workers: list[Any]
    replays: list[Any]  # the replay shards
    evaluator: Any
    envs_per_worker: int
    chunk_transitions: int  # transitions per collect call at most (off-policy; at least one vector step)
    collects_per_worker: int  # collect calls queued per worker, so it never waits for the driver
    max_updates_per_call: int  # updates the learner runs per call at most
    shard_capacity: int
    # Normalised-score references ({"ref_min_score", "ref_max_score"}), recorded in checkpoints.
    references: dict = field(default_factory=dict)


@dataclass
class Counters:
    env_steps: int = 0
    updates: int = 0
    eval_env_steps: int = 0  # extra interaction spent on evaluation episodes, reported separately
    owed_updates: float = 0.0  # earned by inserted transitions, not yet started
    best_return: float = -math.inf
    wall_time: float = 0.0
    rollout_failures: int = 0  # rollout worker deaths (what they had in flight was never counted nor stored)
    initial: dict | None = None
    handover: dict = field(default_factory=dict)


class Schedule:
    """The algorithm's acting spec and owed updates per env step, fetched once as runs.

    Transition t (the one that brings the count to t) earns `updates_due(t)` updates, none
    while t < `min_replay_size`; the transition taken at count t acts with `acting(t)`.
    Past the fetched range the last run continues.
    """

    def __init__(self, runs: list[tuple[int, Any, float]], min_replay_size: int):
        self.starts = [r[0] for r in runs]
        self.specs = [r[1] for r in runs]
        self.utds = [r[2] for r in runs]
        self.min_replay_size = min_replay_size

    def _index(self, t: int) -> int:
        return max(0, bisect.bisect_right(self.starts, t) - 1)

    def acting(self, t: int):
        return self.specs[self._index(t)]

    def next_change(self, t: int) -> float:
        """The first count after t at which the acting spec changes (inf if none)."""
        spec = self.acting(t)
        for i in range(self._index(t) + 1, len(self.starts)):
            if self.specs[i] != spec:
                return self.starts[i]
        return math.inf

    def earned(self, lo: int, hi: int) -> float:
        """Updates earned by the transitions that take the count from lo to hi."""
        total, a = 0.0, max(lo + 1, self.min_replay_size)
        i = self._index(a)
        while a <= hi:
            last = self.starts[i + 1] - 1 if i + 1 < len(self.starts) else hi
            b = min(last, hi)
            total += self.utds[i] * (b - a + 1)
            a, i = b + 1, i + 1
        return total

    def utd(self, t: int) -> float:
        """Updates earned by transition t."""
        return 0.0 if t < self.min_replay_size else self.utds[self._index(t)]

    def utd_values(self) -> set[float]:
        """The UTDs of the run that earn updates."""
        ends = self.starts[1:] + [math.inf]
        return {u for u, end in zip(self.utds, ends) if u > 0 and end > self.min_replay_size}


@dataclass
class _Flight:
    """A call in flight: what it is and what the books reserved for it."""

    kind: str  # insert | update | publish | sync
    worker: int = -1
    shard: int = -1
    transitions: int = 0
    reserved: float = 0.0
    updates: int = 0


class Driver:
    def __init__(self, config, run_dir: RunDir, components: Components, progress: bool = True):
        self.config, self.run_dir, self.c = config, run_dir, components
        self.t = components.transport
        self.counters = Counters()
        self.console = Console(stderr=True, quiet=not progress)
        self.progress = progress
        self.config_dict = config.model_dump()
        self.last_eval: dict[str, Any] | None = None
        self.saved_step: int | None = None  # env step of the resume state on disk
        self.store = ResumeStore(run_dir.resume_dir)
        self.on_policy = False
        self.segment_start = time.perf_counter()
        self.train_metrics: list[dict[str, float]] = []
        self.episode_returns: list[float] = []
        self.staleness: list[tuple[float, int]] = []  # (learner version - mean acting version, transitions)
        # Interaction state (set up by _start_online).
        n = len(components.workers)
        self.pending: dict[Any, _Flight] = {}
        self.live = [True] * n  # False: given up
        self.down_since: list[float | None] = [None] * n  # restarting since (monotonic time)
        self.retry_at = [0.0] * n
        self.queued = [0] * n  # collect calls in flight per worker
        self.sent: list[tuple[int, Any] | None] = [None] * n  # (version, spec) each worker acts with
        self.next_worker = 0
        self.issued = 0  # transitions in collect calls in flight
        self.shard_sizes = [0] * len(components.replays)
        self.shard_load = [0] * len(components.replays)  # inserted + in flight, for routing
        self.published: tuple[int, Any] | None = None  # (version, weights) the workers should act with
        self.publishing = False
        self.learner_version = 0
        self.updating = False
        self.spec = None
        self.schedule: Schedule | None = None
        self.limiter: RateLimiter | None = None

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
        self.eval_rate = Rate()  # updates/s between evaluations (of this segment after a resume)
        on_policy = self.on_policy = self.t.call(self.c.learner, "is_on_policy")
        if resume:
            self._restore()
            if self.config.online_steps < self.counters.env_steps:
                raise UserError(f"the run is at env step {self.counters.env_steps}: pass --online-steps of at least that "
                                f"to extend it (got {self.config.online_steps})")
        self._plan_online(on_policy)  # refuses a configuration that would stall, before any work
        # On a resume too: an extended budget or new runtime fields hold for later resumes.
        self.run_dir.write_config(self.config_dict)
        if not resume:
            self._offline_stages()
            self._handover()
            self._evaluate_and_save(initial=True)
        if on_policy:
            self._online_on_policy()
        else:
            self._online_off_policy()
        if self.counters.env_steps > self.last_eval["env_steps"]:
            self._evaluate_and_save()
        summary = self._summary()
        self.run_dir.write_summary(summary)
        self.run_dir.close()
        return summary

    def _abort_message(self, exc: ComponentFailed) -> str:
        reason = first_line(exc.reason)
        return (f"the {exc.role} actor {exc.name} died ({reason}); the run stopped at env step {self.counters.env_steps}: "
                f"{self._how_to_continue()}")

    def _how_to_continue(self) -> str:
        if self.saved_step is None:
            return f"`o2o finetune --resume {self.run_dir.path}` starts it again, reusing the cached offline stages"
        return (f"`o2o finetune --resume {self.run_dir.path}` continues from the last checkpoint (env step "
                f"{self.saved_step}) with the replay contents")

    # ------------------------------------------------------------------ offline stages
    def _offline_stages(self) -> None:
        # Runtime fields (workers, shards, limiter...) do not change what a stage computes.
        key = RunDir.stage_key({k: v for k, v in self.config_dict.items() if k not in RUNTIME_FIELDS})
        for name, steps in self.t.call(self.c.learner, "stage_plan"):
            cache = self.run_dir.stage_file(name)
            if cache.with_suffix(".json").exists():
                try:
                    cached = load_state(cache)
                except DamagedState as exc:
                    self.console.print(f"[yellow]stage {name}: the cached result is damaged ({exc}); computing it again")
                    cached = {}
                if cached.get("stage_key") == key:
                    self.console.print(f"[green]stage {name}: reusing the cached result in {cache.parent}")
                    self.t.call(self.c.learner, "load", cached["learner"])
                    continue
            chunk = max(1, min(1000, steps // 100 or 1))
            with self._bar() as bar:
                task = bar.add_task(f"stage {name}", total=steps)
                done = 0
                while done < steps:
                    n = min(chunk, steps - done)
                    metrics = self.t.call(self.c.learner, "run_stage", name, n)
                    done += n
                    self.run_dir.scalars(done, metrics, f"stage_{name}")
                    bar.update(task, completed=done, description=f"stage {name} {_brief(metrics)}")
            save_state(cache, {"stage_key": key, "learner": self.t.call(self.c.learner, "state")})

    def _handover(self) -> None:
        metrics, spent = self.t.call(self.c.learner, "handover", self.c.evaluator)
        self.counters.eval_env_steps += spent
        self.counters.handover = metrics
        if metrics:
            self.console.print(f"hand-over: {_brief(metrics)}")

    # ------------------------------------------------------------------ interaction: shared
    def _plan_online(self, on_policy: bool) -> None:
        """Fetch the schedule (acting spec and updates due per env step) and size the rate
        limiter's band; refuse limits under which no update could run or both sides would stall."""
        cfg, c = self.config, self.counters
        self.schedule = Schedule(self.t.call(self.c.learner, "schedule", c.env_steps, max(cfg.online_steps, c.env_steps + 1)),
                                 cfg.min_replay_size)
        if on_policy:
            return
        # The chunk that earns the most updates, over the UTDs of the run.
        chunk, utd = max(((self._chunk_steps(u) * self.c.envs_per_worker, u) for u in self.schedule.utd_values()),
                         key=lambda c: c[0] * c[1], default=(0, 0.0))
        tolerance = cfg.samples_per_insert_tolerance
        check_rate_limits(min_replay_size=cfg.min_replay_size, capacity=cfg.replay_capacity, online_steps=cfg.online_steps,
                          chunk=chunk, utd=utd, batch_size=cfg.batch_size, tolerance=tolerance)
        if tolerance is None:  # room for a chunk per worker and one learner call
            max_lag = len(self.c.workers) * chunk * utd + self.c.max_updates_per_call
        else:
            max_lag = tolerance / cfg.batch_size
        self.limiter = RateLimiter(max_lag, owed=c.owed_updates)

    def _chunk_steps(self, utd: float) -> int:
        """Vector steps per collect call: up to `chunk_transitions`, and about one learner call's
        worth of updates at this UTD, so a chunk never puts the learner far behind."""
        transitions = self.c.chunk_transitions if utd <= 0 else min(self.c.chunk_transitions, self.c.max_updates_per_call / utd)
        return max(1, int(transitions) // self.c.envs_per_worker)

    def _start_online(self) -> None:
        """Give every worker the current weights and acting spec."""
        c = self.counters
        self.shard_sizes = list(self.t.call_all([(r, "size", ()) for r in self.c.replays]))
        self.shard_load = list(self.shard_sizes)
        self.published = self.t.call(self.c.learner, "weights")
        self.learner_version = self.published[0]
        self._set_spec(self.schedule.acting(c.env_steps))

    def _set_spec(self, spec, ordered: bool = False) -> None:
        self.spec = spec
        for i in range(len(self.c.workers)):
            self._sync_worker(i, ordered)

    def _sync_worker(self, i: int, ordered: bool = False) -> None:
        """Give worker i the newest weights and the current acting spec if it lacks them.

        A new spec (or a worker that restarted, or `ordered`) goes through `set_weights`, which
        runs before the worker's next collect; newer weights alone are offered and taken up at
        the worker's next vector step, even inside a chunk already running."""
        if not self._available(i):
            return
        version, weights = self.published
        sent = self.sent[i]
        if sent == (version, self.spec):
            return
        if sent is None or sent[1] != self.spec or ordered:
            payload = weights if sent is None or sent[0] != version else None
            future = self.t.submit(self.c.workers[i], "set_weights", version, payload, self.spec)
        else:
            future = self.t.submit(self.c.workers[i], "offer_weights", version, weights)
        self.pending[future] = _Flight("sync", worker=i)
        self.sent[i] = (version, self.spec)

    def _worker_failed(self, i: int, exc: ComponentFailed) -> None:
        """A rollout worker died: what it had in flight is lost (never counted, never stored).
        Ray restarts it; it is asked again after a short delay and then gets the weights anew."""
        now = time.monotonic()
        self.sent[i] = None
        self.retry_at[i] = now + RETRY_DELAY_S
        if self.down_since[i] is None:
            self.down_since[i] = now
            self.counters.rollout_failures += 1
            if not exc.permanent:
                self.console.print(f"[yellow]{exc.name} died ({first_line(exc.reason)}): its chunk in flight is lost, "
                                   "stored transitions are kept; Ray restarts it")
        if exc.permanent or now - self.down_since[i] > RESTART_TIMEOUT_S:
            self.live[i] = False
            self.console.print(f"[red]{exc.name} is gone ({first_line(exc.reason)}): going on without it")
            if not any(self.live):
                raise ComponentFailed(exc.name, f"every rollout worker is gone; the last: {exc.reason}")

    def _available(self, i: int) -> bool:
        return self.live[i] and time.monotonic() >= self.retry_at[i]

    def _next_retry(self) -> float | None:
        """Seconds until a restarting worker may be asked again (None: none is waiting)."""
        waits = [self.retry_at[i] for i in range(len(self.live)) if self.live[i] and self.down_since[i] is not None]
        return max(0.0, min(waits) - time.monotonic()) if waits else None

    def _count(self, receipt, worker: int) -> float:
        """Book an inserted fragment (env steps, episodes, staleness); returns the updates it earned."""
        c = self.counters
        before = c.env_steps
        c.env_steps += receipt.transitions
        self.down_since[worker] = None
        self.episode_returns.extend(receipt.episode_returns)
        self.staleness.append((self.learner_version - receipt.version, receipt.transitions))
        return self.schedule.earned(before, c.env_steps)

    # ------------------------------------------------------------------ interaction: off-policy
    def _online_off_policy(self) -> None:
        cfg, c = self.config, self.counters
        self._start_online()
        with self._bar() as bar:
            self._task = bar.add_task("online", total=cfg.online_steps, completed=c.env_steps)
            self._rates = (Rate(c.env_steps), Rate(c.updates))
            self._next_log = c.env_steps + cfg.log_every
            while c.env_steps < cfg.online_steps:
                if self.schedule.acting(c.env_steps) != self.spec:
                    self._set_spec(self.schedule.acting(c.env_steps))
                eval_boundary = (c.env_steps // cfg.eval_every + 1) * cfg.eval_every
                horizon = min(cfg.online_steps, eval_boundary, self.schedule.next_change(c.env_steps))
                self._pump(horizon, bar)
                if c.env_steps // cfg.eval_every > self.last_eval["env_steps"] // cfg.eval_every:
                    self._evaluate_and_save()
                bar.update(self._task, completed=min(c.env_steps, cfg.online_steps), description=self._bar_text())

    def _pump(self, horizon: int, bar: Progress) -> None:
        """Run collection, insertion, updates and publishing until `horizon` env steps are in
        the replay and every owed update is done. Nothing is collected past `horizon` (an eval
        boundary, a change of acting spec, or the budget), so those points see a quiet system."""
        while True:
            if self.pending:
                self._handle(self.t.wait(list(self.pending), num_returns=1, timeout=0), bar)
            if self._start_publish() or self._start_update() or self._start_collect(horizon):
                continue
            retry = self._next_retry() if self.counters.env_steps + self.issued < horizon else None
            if not self.pending:
                if retry is None:
                    return
                time.sleep(retry)  # every worker that could collect is restarting
                continue
            self._handle(self.t.wait(list(self.pending), num_returns=1, timeout=retry), bar)

    def _start_publish(self) -> bool:
        if self.publishing or self.learner_version - self.published[0] < self.config.broadcast_every:
            return False
        self.pending[self.t.submit(self.c.learner, "weights")] = _Flight("publish")
        self.publishing = True
        return True

    def _start_update(self) -> bool:
        if self.updating or self.limiter.owed < 1:
            return False
        n = self.limiter.start(self.c.max_updates_per_call)
        # Labelled with the step of the newest transition taken (count - 1): at a phase boundary
        # (e.g. the end of PORL's pre-sample) the updates still owed were earned before it and
        # must run in the phase that earned them, not the next one.
        future = self.t.submit(self.c.learner, "update_from_replay", n, self.counters.env_steps - 1, list(self.shard_sizes))
        self.pending[future] = _Flight("update", updates=n)
        self.updating = True
        return True

    def _start_collect(self, horizon: int) -> bool:
        position = self.counters.env_steps + self.issued
        if position >= horizon:
            return False
        workers = len(self.c.workers)
        for offset in range(workers):
            i = (self.next_worker + offset) % workers
            if self._available(i) and self.queued[i] < self.c.collects_per_worker:
                break
        else:
            return False
        envs = self.c.envs_per_worker
        steps = min(self._chunk_steps(self.schedule.utd(position + 1)), -(-(horizon - position) // envs))
        n = steps * envs
        reserved = self.schedule.earned(position, position + n)
        if not self.limiter.try_reserve(reserved):
            return False
        self._sync_worker(i)
        shard = int(np.argmin(self.shard_load))
        collected = self.t.submit(self.c.workers[i], "collect", steps)
        inserted = self.t.submit(self.c.replays[shard], "add_fragment", collected)
        self.pending[inserted] = _Flight("insert", worker=i, shard=shard, transitions=n, reserved=reserved)
        self.issued += n
        self.queued[i] += 1
        self.shard_load[shard] += n
        self.next_worker = (i + 1) % workers
        return True

    def _handle(self, ready: list, bar: Progress) -> None:
        for future in ready:
            flight = self.pending.pop(future)
            try:
                result = self.t.get(future)
            except ComponentFailed as exc:
                if exc.role != "rollout" or flight.worker < 0:
                    raise
                self._lost(flight, exc)
                continue
            if flight.kind == "insert":
                self._inserted(flight, result, bar)
            elif flight.kind == "update":
                version, metrics = result
                self.limiter.finish(flight.updates)
                self.counters.updates += flight.updates
                self.learner_version = version
                self.train_metrics.append(metrics)
                self.updating = False
            elif flight.kind == "publish":
                self.published = result
                self.publishing = False
                for i in range(len(self.c.workers)):
                    self._sync_worker(i)

    def _lost(self, flight: _Flight, exc: ComponentFailed) -> None:
        if flight.kind == "insert":
            self.issued -= flight.transitions
            self.queued[flight.worker] -= 1
            self.shard_load[flight.shard] -= flight.transitions
            self.limiter.settle(flight.reserved, 0.0)
        self._worker_failed(flight.worker, exc)

    def _inserted(self, flight: _Flight, receipt, bar: Progress) -> None:
        cfg, c = self.config, self.counters
        self.issued -= flight.transitions
        self.queued[flight.worker] -= 1
        self.shard_sizes[flight.shard] = min(self.shard_sizes[flight.shard] + receipt.transitions, self.c.shard_capacity)
        self.limiter.settle(flight.reserved, self._count(receipt, flight.worker))
        if c.env_steps >= self._next_log:
            self._log_training(self._rates[0](c.env_steps), self._rates[1](c.updates))
            while self._next_log <= c.env_steps:
                self._next_log += cfg.log_every
        bar.update(self._task, completed=min(c.env_steps, cfg.online_steps), description=self._bar_text())

    # ------------------------------------------------------------------ interaction: on-policy
    def _online_on_policy(self) -> None:
        """Synchronous rounds: every worker collects a fragment with the newest weights, the
        fragments queue in the replay shards, the learner takes them all for one update."""
        cfg, c = self.config, self.counters
        self._start_online()
        workers = len(self.c.workers)
        vector_steps = max(1, self.t.call(self.c.learner, "rollout_steps") // (self.c.envs_per_worker * workers))
        with self._bar() as bar:
            task = bar.add_task("online", total=cfg.online_steps, completed=c.env_steps)
            env_rate, update_rate = Rate(c.env_steps), Rate(c.updates)
            while c.env_steps < cfg.online_steps:
                self._set_spec(self.schedule.acting(c.env_steps), ordered=True)  # on-policy: before the collect
                rounds = {}
                for i in range(workers):
                    if self._available(i):
                        collected = self.t.submit(self.c.workers[i], "collect", vector_steps)
                        rounds[self.t.submit(self.c.replays[i % len(self.c.replays)], "put_fragment", collected)] = i
                arrived = 0
                for future, i in rounds.items():
                    try:
                        receipt = self.t.get(future)
                    except ComponentFailed as exc:
                        if exc.role != "rollout":
                            raise
                        self._worker_failed(i, exc)
                        continue
                    self._count(receipt, i)
                    arrived += 1
                self._settle_syncs()
                if not arrived:
                    time.sleep(self._next_retry() or 0.0)
                    continue
                self.learner_version, metrics = self.t.call(self.c.learner, "update_on_policy", arrived, c.env_steps)
                self.train_metrics.append(metrics)
                c.updates += 1
                self.published = self.t.call(self.c.learner, "weights")
                self._log_training(env_rate(c.env_steps), update_rate(c.updates))
                if c.env_steps // cfg.eval_every > self.last_eval["env_steps"] // cfg.eval_every:
                    self._evaluate_and_save()
                bar.update(task, completed=min(c.env_steps, cfg.online_steps), description=self._bar_text())

    def _settle_syncs(self) -> None:
        """Collect the weight updates sent to workers (a dead worker shows up here too)."""
        for future in [f for f, flight in self.pending.items() if flight.kind == "sync"]:
            flight = self.pending.pop(future)
            try:
                self.t.get(future)
            except ComponentFailed as exc:
                if exc.role != "rollout":
                    raise
                self._worker_failed(flight.worker, exc)

    # ------------------------------------------------------------------ evaluation, logging
    def _evaluate_and_save(self, initial: bool = False) -> None:
        """Evaluate, checkpoint and (when due) save the resume state, at a point where nothing is
        in flight (the replay files are written while the evaluator plays its episodes)."""
        self._settle_syncs()
        step, every = self.counters.env_steps, self.config.resume_every
        due = (initial or every is None or step >= self.config.online_steps
               or step // every > (self.saved_step or 0) // every)
        saves = self._save_replay() if due else []
        self._evaluate(initial)
        for future in saves:
            self.t.get(future)
        if due:
            self._save_resume()

    def _evaluate(self, initial: bool = False) -> dict:
        """The deployed policy's mode scores the run; the acting policy's samples (what the agent
        collects) and, where another policy is deployed, its mode are logged beside it."""
        c = self.counters
        self.published = self.t.call(self.c.learner, "weights")
        self.learner_version = self.published[0]
        arch, acting = self.t.call(self.c.learner, "policy_arch"), self.published[1]
        deployed = self.t.call(self.c.learner, "deployed_weights")
        runs = {"": (deployed or acting, True), "stochastic_": (acting, False)}
        if deployed is not None:
            runs["online_"] = (acting, True)
        records = {prefix: self.t.call(self.c.evaluator, "evaluate", arch, weights, deterministic, c.env_steps)
                   for prefix, (weights, deterministic) in runs.items()}
        c.eval_env_steps += sum(r.pop("env_steps") for r in records.values())
        record = records[""]
        self.t.call(self.c.learner, "on_evaluation", record["return_mean"], c.env_steps)
        line = {"env_steps": c.env_steps, "updates": c.updates, "eval_env_steps": c.eval_env_steps,
                "return_mean": record["return_mean"], "return_std": record["return_std"],
                "normalized_score": record["normalized_score"], "episodes": record["episodes"],
                **{f"{prefix}return_mean": r["return_mean"] for prefix, r in records.items() if prefix},
                "wall_time_s": round(self._wall_time(), 1), "updates_per_s": round(self.eval_rate(c.updates), 2)}
        self.run_dir.append_metrics(line)
        self.run_dir.scalars(c.env_steps, {k: v for k, v in line.items() if isinstance(v, (int, float)) and k != "env_steps"}, "eval")
        self.run_dir.flush()
        if initial:
            c.initial = line
        c.best_return = max(c.best_return, record["return_mean"])
        save_checkpoint(self.run_dir.checkpoint_dir(c.env_steps), self.t.call(self.c.learner, "checkpoint_modules"),
                        env_id=self.config.env, algo=self.config.algo, config=self.config_dict,
                        extra={"env_steps": c.env_steps, "updates": c.updates, "eval": line, **self.c.references})
        self.last_eval = line
        return line

    def _log_training(self, env_rate: float, update_rate: float) -> None:
        values = {"env_steps_per_s": env_rate, "updates_per_s": update_rate, "updates": float(self.counters.updates)}
        if self.train_metrics:
            keys = set().union(*self.train_metrics)
            values.update({k: float(np.mean([m[k] for m in self.train_metrics if k in m])) for k in keys})
        if self.episode_returns:
            values["episode_return"] = float(np.mean(self.episode_returns))
        if self.staleness:
            lags, weights = zip(*self.staleness)
            values["staleness"] = float(np.average(lags, weights=weights))  # gradient steps behind the learner
        if self.limiter is not None:
            values["update_lag"] = self.limiter.lag()  # updates earned or reserved, not yet done
        self.run_dir.scalars(self.counters.env_steps, values, "train")
        self.train_metrics.clear()
        self.episode_returns.clear()
        self.staleness.clear()

    def _bar_text(self) -> str:
        return "online" if self.last_eval is None else f"online  eval return {self.last_eval['return_mean']:.1f}"

    def _bar(self):
        return progress_bar(self.console, self.progress)

    # ------------------------------------------------------------------ resume
    # The resume state (resume_state.py): the replay shards write their files into the new
    # save's directory while the evaluator plays, the learner state and counters follow, and
    # the directory is switched in complete; the replay's inserted counts add up to the
    # stored transitions of the same save.
    def _replay_names(self) -> list[str]:
        shards = len(self.c.replays)
        return ["replay.npz"] if shards == 1 else [f"replay-{j}.npz" for j in range(shards)]

    def _save_replay(self) -> list:
        incoming, save_id = self.store.begin()
        return [self.t.submit(shard, "save", str(incoming / name), save_id)
                for shard, name in zip(self.c.replays, self._replay_names())]

    def _save_resume(self) -> None:
        if self.limiter is not None:  # at a quiet point: nothing running or reserved
            self.counters.owed_updates = self.limiter.owed
        counters = {**vars(self.counters), "wall_time": self._wall_time()}
        save_state(self.store.incoming / "state", {"learner": self.t.call(self.c.learner, "state"), "counters": counters},
                   self.store.save_id)
        self.store.commit(self.counters.env_steps, stored=0 if self.on_policy else self.counters.env_steps)
        self.saved_step = self.counters.env_steps

    def _wall_time(self) -> float:
        """Seconds of this run, summed over resumed segments."""
        return self.counters.wall_time + time.perf_counter() - self.segment_start

    def _restore(self) -> None:
        save = self.store.latest(warn=lambda line: print(line, file=sys.stderr))
        if save is None:
            raise UserError(f"every resume state in {self.store.dir} is damaged: the run cannot be continued; start it "
                            "again in another --out")
        state = save.load_state()
        self.t.call(self.c.learner, "load", state["learner"])
        shards = self.c.replays
        self.t.call_all([(shards[k % len(shards)], "load", (str(path),)) for k, path in enumerate(save.replay_files())])
        self.counters = Counters(**state["counters"])
        # Learner first: in local mode the workers' torch seed is the one the shared generator keeps, as at the start.
        step = self.counters.env_steps
        self.t.call_all([(component, "reseed", (step,)) for component in (self.c.learner, *shards, *self.c.workers)])
        self.eval_rate = Rate(self.counters.updates)
        self.saved_step = save.env_steps
        self.run_dir.truncate_metrics(self.counters.env_steps)
        records = self.run_dir.read_metrics()
        self.last_eval = records[-1] if records else None
        self.console.print(f"resuming at env step {self.counters.env_steps} ({self.counters.updates} updates)")

    def _summary(self) -> dict[str, Any]:
        c = self.counters
        records = self.run_dir.read_metrics()
        best = max(records, key=lambda r: r["return_mean"]) if records else None
        wall_time = self._wall_time()
        return {"algo": self.config.algo, "env": self.config.env, "seed": self.config.seed, "initial": c.initial,
                "final": records[-1] if records else None, "best": best,
                "best_checkpoint": str(self.run_dir.checkpoint_dir(best["env_steps"])) if best else None,
                "env_steps": c.env_steps, "updates": c.updates, "updates_per_s": c.updates / max(wall_time, 1e-9),
                "eval_env_steps": c.eval_env_steps, "rollout_failures": c.rollout_failures, "handover": c.handover,
                "handover_env_step": self.t.call(self.c.learner, "handover_step"),
                "wall_time_s": wall_time, "run_dir": str(self.run_dir.path), **provenance()}


def _brief(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.3g}" for k, v in list(metrics.items())[:4])
