"""The online loop: interaction and updates between two evaluations.

Off-policy interaction is a loop over futures: rollout chunks go from a worker straight into
a replay shard (the insert is submitted with the collect's future as its argument), the
learner pulls its batches from the shards itself, and the loop only counts, decides what to
start next and keeps the books (`_Flight`: what each call in flight reserved). With
`LocalTransport` every call finishes at `submit`, so the same loop runs sequentially:
collect, insert, update, publish, in that order. On-policy interaction is synchronous rounds.

    Schedule      (schedule.py) the algorithm's acting spec and updates owed per env step
    RateLimiter   (replay.py) updates owed against updates done, sized in schedule.py
    restarts      a rollout worker that dies loses what it had in flight; Ray restarts it, it
                  is asked again after RETRY_DELAY_S and given up after RESTART_TIMEOUT_S
    broadcast     (broadcast.py) weights and acting spec to the workers

The loop stops at every evaluation boundary and calls the driver's `at_boundary` there, and
between its steps the driver's `tick` (which records an evaluation once its episodes are played).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import Progress

from distributed_o2o.errors import first_line
from distributed_o2o.progress import progress_bar
from distributed_o2o.runtime.broadcast import Broadcast
from distributed_o2o.runtime.components import Components
from distributed_o2o.runtime.replay import RateLimiter
from distributed_o2o.runtime.run_dir import Rate, RunDir
from distributed_o2o.runtime.schedule import Schedule, chunk_steps, size_limiter
from distributed_o2o.runtime.timings import UPDATE_GAPS, Timings
from distributed_o2o.runtime.transport import ComponentFailed

# How often, at most, the loop asks the driver whether an evaluation playing beside it is done.
TICK_S = 0.2
# A rollout worker that Ray is restarting is asked again after this long, and given up if it
# delivers nothing for RESTART_TIMEOUT_S (no node can take it).
RETRY_DELAY_S = 0.5
RESTART_TIMEOUT_S = 300.0


@dataclass
class _Flight:
    """A call in flight: what it is and what the books reserved for it."""

    kind: str  # insert | update | publish | sync
    worker: int = -1
    shard: int = -1
    transitions: int = 0
    reserved: float = 0.0
    updates: int = 0


class OnlineLoop:
    def __init__(self, config, components: Components, counters, broadcast: Broadcast, run_dirs: list[RunDir],
                 console: Console, progress: bool, timings: Timings):
        self.config, self.c, self.counters, self.broadcast = config, components, counters, broadcast
        self.timings = timings  # the driver's: its blocking waits count as "waiting"
        self.t = components.transport
        # One run directory per agent; a population's learner and replay report per agent (lists).
        self.run_dirs, self.console, self.progress = run_dirs, console, progress
        n = len(components.workers)
        self.pending: dict[Any, _Flight] = {}
        self.live = [True] * n  # False: given up
        self.down_since: list[float | None] = [None] * n  # restarting since (monotonic time)
        self.retry_at = [0.0] * n
        self.queued = [0] * n  # collect calls in flight per worker
        self.next_worker = 0
        self.issued = 0  # transitions in collect calls in flight
        self.shard_sizes = [0] * len(components.replays)
        self.shard_load = [0] * len(components.replays)  # inserted + in flight, for routing
        self.update_calls = 0  # update calls in flight
        self.idle_since: float | None = None  # since when no update call runs or is in flight (off-policy)
        self.schedule: Schedule | None = None
        self.limiter: RateLimiter | None = None
        # The training log, per agent: what happened since its last line.
        self.train_metrics: list[list[dict[str, float]]] = [[] for _ in run_dirs]
        self.episode_returns: list[list[float]] = [[] for _ in run_dirs]
        self.rates = (Rate(), Rate())  # env steps/s, updates/s
        self.next_log = 0
        self.status: Callable[[], str] = lambda: "online"  # the progress bar's text
        self.tick: Callable[[], None] = lambda: None  # the driver's work beside the loop (an evaluation's record)
        self.next_tick = 0.0

    # ------------------------------------------------------------------ plan
    def plan(self, on_policy: bool) -> None:
        """Fetch the schedule (acting spec and updates due per env step) and size the rate
        limiter (schedule.py), refusing limits under which the run would stall, before any work."""
        cfg, c = self.config, self.counters
        self.schedule = Schedule(self.t.call(self.c.learner, "schedule", c.env_steps, max(cfg.online_steps, c.env_steps + 1)))
        if not on_policy:
            self.limiter = size_limiter(cfg, self.c, self.schedule, c.owed_updates)

    def owed_updates(self) -> float:
        """Updates earned and not yet started (at a quiet point: nothing running or reserved)."""
        return self.limiter.owed if self.limiter is not None else self.counters.owed_updates

    # ------------------------------------------------------------------ run
    def run(self, on_policy: bool, at_boundary: Callable[[], None], status: Callable[[], str],
            tick: Callable[[], None] = lambda: None) -> None:
        """Interact until the budget is spent, calling `at_boundary` wherever an evaluation may be
        due and `tick` every TICK_S or so in between."""
        self.status, self.tick = status, tick
        self._start()
        if on_policy:
            self._on_policy(at_boundary)
        else:
            self._off_policy(at_boundary)

    def _start(self) -> None:
        """Give every worker the current weights and acting spec."""
        self.shard_sizes = list(self.t.call_all([(r, "size", ()) for r in self.c.replays]))
        self.shard_load = list(self.shard_sizes)
        self.broadcast.publish_now()
        self._set_spec(self.schedule.acting(self.counters.env_steps))

    def _set_spec(self, spec, ordered: bool = False) -> None:
        self.broadcast.spec = spec
        for i in range(len(self.c.workers)):
            self._sync_worker(i, ordered)

    def _sync_worker(self, i: int, ordered: bool = False) -> None:
        if self._available(i):
            future = self.broadcast.sync(i, ordered)
            if future is not None:
                self.pending[future] = _Flight("sync", worker=i)

    def _bar(self) -> Any:
        return progress_bar(self.console, self.progress)

    # ------------------------------------------------------------------ off-policy
    def _off_policy(self, at_boundary: Callable[[], None]) -> None:
        cfg, c = self.config, self.counters
        with self._bar() as bar:
            task = bar.add_task("online", total=cfg.online_steps, completed=c.env_steps)
            self.rates = (Rate(c.env_steps), Rate(c.updates))
            self.next_log = c.env_steps + cfg.log_every
            self.idle_since = time.perf_counter()
            while c.env_steps < cfg.online_steps:
                if self.schedule.acting(c.env_steps) != self.broadcast.spec:
                    self._set_spec(self.schedule.acting(c.env_steps))
                eval_boundary = (c.env_steps // cfg.eval_every + 1) * cfg.eval_every
                horizon = min(cfg.online_steps, eval_boundary, self.schedule.next_change(c.env_steps))
                self._pump(horizon, bar, task)
                self._settle_updates()
                at_boundary()
                bar.update(task, completed=min(c.env_steps, cfg.online_steps), description=self.status())
            self._learner_busy()

    def _pump(self, horizon: int, bar: Progress, task: Any) -> None:
        """Run collection, insertion, updates and publishing until `horizon` env steps are in
        the replay and every owed update is done. Nothing is collected past `horizon` (an eval
        boundary, a change of acting spec, or the budget), so those points see a quiet system."""
        while True:
            self._tick()
            if self.pending:
                self._handle(self.t.wait(list(self.pending), num_returns=1, timeout=0), bar, task)
            if self._start_publish() or self._start_update() or self._start_collect(horizon):
                continue
            retry = self._next_retry() if self.counters.env_steps + self.issued < horizon else None
            if not self.pending:
                if retry is None:
                    return
                with self.timings.part("waiting"):
                    time.sleep(retry)  # every worker that could collect is restarting
                continue
            with self.timings.part("waiting"):
                ready = self.t.wait(list(self.pending), num_returns=1, timeout=retry)
            self._handle(ready, bar, task)

    def _start_publish(self) -> bool:
        future = self.broadcast.start_publish()
        if future is None:
            return False
        self.pending[future] = _Flight("publish")
        return True

    def _start_update(self) -> bool:
        if self.update_calls >= self.c.update_calls_in_flight or self.limiter.owed < 1:
            return False
        n = self.limiter.start(self.c.max_updates_per_call)
        self._learner_busy()  # before the submit: under LocalTransport the updates run inside it
        # Labelled with the step of the newest transition taken (count - 1): at a phase boundary
        # (e.g. the end of PORL's pre-sample) the updates still owed were earned before it and
        # must run in the phase that earned them, not the next one.
        future = self.t.submit(self.c.learner, "update_from_replay", n, self.counters.env_steps - 1, list(self.shard_sizes))
        self.pending[future] = _Flight("update", updates=n)
        self.update_calls += 1
        return True

    def _settle_updates(self) -> None:
        """The learner's last update call's metrics, read (and checked) before an evaluation or a
        checkpoint uses its weights: a graphed call returns its predecessor's (runtime/learner.py)."""
        self._add_train_metrics(self.t.call(self.c.learner, "settle_updates"))

    def _learner_busy(self) -> None:
        """Close the learner's idle gap (timings' UPDATE_GAPS) that is open."""
        if self.idle_since is not None:
            self.timings.add(UPDATE_GAPS, time.perf_counter() - self.idle_since)
            self.idle_since = None

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
        steps = min(chunk_steps(self.c, self.schedule.utd(position + 1)), -(-(horizon - position) // envs))
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

    def _handle(self, ready: list, bar: Progress, task: Any) -> None:
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
                self._inserted(flight, result, bar, task)
            elif flight.kind == "update":
                version, metrics = result
                self.limiter.finish(flight.updates)
                self.counters.updates += flight.updates
                self.broadcast.learner_version = version
                self._add_train_metrics(metrics)
                self.update_calls -= 1
                if not self.update_calls:
                    self.idle_since = time.perf_counter()
            elif flight.kind == "publish":
                self.broadcast.published_arrived(result)
                for i in range(len(self.c.workers)):
                    self._sync_worker(i)

    def _lost(self, flight: _Flight, exc: ComponentFailed) -> None:
        if flight.kind == "insert":
            self.issued -= flight.transitions
            self.queued[flight.worker] -= 1
            self.shard_load[flight.shard] -= flight.transitions
            self.limiter.settle(flight.reserved, 0.0)
        self._worker_failed(flight.worker, exc)

    def _inserted(self, flight: _Flight, receipt, bar: Progress, task: Any) -> None:
        cfg, c = self.config, self.counters
        self.issued -= flight.transitions
        self.queued[flight.worker] -= 1
        self.shard_sizes[flight.shard] = min(self.shard_sizes[flight.shard] + receipt.transitions, self.c.shard_capacity)
        self.limiter.settle(flight.reserved, self._count(receipt, flight.worker))
        if c.env_steps >= self.next_log:
            self._log_training(self.rates[0](c.env_steps), self.rates[1](c.updates))
            while self.next_log <= c.env_steps:
                self.next_log += cfg.log_every
        bar.update(task, completed=min(c.env_steps, cfg.online_steps), description=self.status())

    # ------------------------------------------------------------------ on-policy
    def _on_policy(self, at_boundary: Callable[[], None]) -> None:
        """Synchronous rounds: every worker collects a fragment with the newest weights, the
        fragments queue in the replay shards, the learner takes them all for one update."""
        cfg, c = self.config, self.counters
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
                        with self.timings.part("waiting"):
                            receipt = self.t.get(future)
                    except ComponentFailed as exc:
                        if exc.role != "rollout":
                            raise
                        self._worker_failed(i, exc)
                        continue
                    self._count(receipt, i)
                    arrived += 1
                self.settle_syncs()
                if not arrived:
                    time.sleep(self._next_retry() or 0.0)
                    continue
                with self.timings.part("waiting"):
                    self.broadcast.learner_version, metrics = self.t.call(self.c.learner, "update_on_policy", arrived,
                                                                          c.env_steps)
                self._add_train_metrics(metrics)
                c.updates += 1
                self.broadcast.publish_now()
                self._log_training(env_rate(c.env_steps), update_rate(c.updates))
                self._tick()
                at_boundary()
                bar.update(task, completed=min(c.env_steps, cfg.online_steps), description=self.status())

    def _tick(self) -> None:
        now = time.monotonic()
        if now >= self.next_tick:
            self.next_tick = now + TICK_S
            self.tick()

    def settle_syncs(self) -> None:
        """Collect the weight updates sent to workers (a dead worker shows up here too)."""
        for future in [f for f, flight in self.pending.items() if flight.kind == "sync"]:
            flight = self.pending.pop(future)
            try:
                self.t.get(future)
            except ComponentFailed as exc:
                if exc.role != "rollout":
                    raise
                self._worker_failed(flight.worker, exc)

    # ------------------------------------------------------------------ books
    def _count(self, receipt, worker: int) -> float:
        """Book an inserted fragment (env steps, episodes, staleness); returns the updates it earned."""
        c = self.counters
        before = c.env_steps
        c.env_steps += receipt.transitions
        self.down_since[worker] = None
        for mine, returns in zip(self.episode_returns, self._per_agent(receipt.episode_returns), strict=True):
            mine.extend(returns)
        self.broadcast.collected(receipt.version, receipt.transitions)
        return self.schedule.earned(before, c.env_steps)

    def _per_agent(self, value: Any) -> list:
        """A value the components report for every agent, as a list (one agent's: wrapped)."""
        return value if self.c.seeds is not None else [value]

    def _add_train_metrics(self, metrics: Any) -> None:
        for mine, agent_metrics in zip(self.train_metrics, self._per_agent(metrics), strict=True):
            mine.append(agent_metrics)

    def _log_training(self, env_rate: float, update_rate: float) -> None:
        staleness = self.broadcast.take_staleness()
        for run_dir, train_metrics, returns in zip(self.run_dirs, self.train_metrics, self.episode_returns, strict=True):
            values = {"env_steps_per_s": env_rate, "updates_per_s": update_rate, "updates": float(self.counters.updates)}
            if train_metrics:
                keys = set().union(*train_metrics)
                values.update({k: float(np.mean([m[k] for m in train_metrics if k in m])) for k in keys})
            if returns:
                values["episode_return"] = float(np.mean(returns))
            if staleness is not None:
                values["staleness"] = staleness  # gradient steps behind the learner
            if self.limiter is not None:
                values["update_lag"] = self.limiter.lag()  # updates earned or reserved, not yet done
            run_dir.scalars(self.counters.env_steps, values, "train")
            train_metrics.clear()
            returns.clear()

    # ------------------------------------------------------------------ restarts
    def _worker_failed(self, i: int, exc: ComponentFailed) -> None:
        """A rollout worker died: what it had in flight is lost (never counted, never stored).
        Ray restarts it; it is asked again after a short delay and then gets the weights anew."""
        now = time.monotonic()
        self.broadcast.forget(i)
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
