"""The graphed learner path: updates at the speed of the GPU, not of the host.

Eager PyTorch on small MLPs is bound by the host: an update is a few hundred tiny kernels, each
a Python dispatch and a launch (~130 updates/s on an H100). This path takes the host out:
- `DeviceReplay` mirrors the replay on the GPU in one packed tensor (D_off rows first, then the
  online ring), so a batch is drawn on the device (indices from the default CUDA generator,
  both tables mixed at the offline ratio) and gathered in one kernel. New transitions are
  copied in chunks outside the graphs; the online size is a device scalar the graphs read.
- `GraphedUpdater` captures `steps_per_graph` consecutive updates (sampling, critic step, one
  actor/α/λ step, Polyak, metric sums) in one CUDA graph per (phases, offline rows), after
  `torch.compile` has fused the loss functions, the Polyak step and the optimiser steps;
  metrics are read back once per `run` (`start` queues the updates and leaves the read-back for
  later, so the host goes on while the GPU runs them). Where the updates take a `PhaseCycle`'s
  phases in turn (TD3's policy delay), a graph holds whole cycles from its first position
  (steps_per_graph rounded down to a multiple of the cycle), and single updates of each phase
  fill the rest.
  Optionally its matrix products use TF32 (captured into its graphs; the process's own setting
  is left as it was).
The update itself is the algorithm's own `update_tensors` (the code `update` runs), with Adam
capturable on CUDA. On CPU `run` executes the same steps eagerly, without graphs. Any
`Capturable` (algorithms/capturable.py) runs here: the SAC family, the TD3 family and the
offline pretrainers (`o2o pretrain` samples D_off alone: offline ratio 1).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Hashable, Iterator
from contextlib import contextmanager, nullcontext

import numpy as np
import torch

from distributed_o2o.algorithms.base import Algorithm, Batch
from distributed_o2o.algorithms.capturable import Capturable, PhaseCycle
from distributed_o2o.algorithms.optim import stack_scalars
from distributed_o2o.algorithms.population import Population
from distributed_o2o.config import FinetuneConfig, LearnerBackendFields, PretrainConfig
from distributed_o2o.errors import UserError
from distributed_o2o.runtime.timings import Timings

# Updates of each (phase, offline rows) that run eagerly before capture: lazy initialisation
# (optimiser state, cuBLAS workspaces, compilation) must not happen inside a capture.
WARMUP_STEPS = 3
# Inductor's settings while the updater compiles (autotuned matrix products on top when asked):
# combo kernels fuse independent kernels side by side (e.g. several layers' bias-gradient
# reductions), which took SAC's update from 105 to 95 kernels and 4,215 to 4,460 updates/s on an
# H200 (docs/performance.md).
# Mix-order reductions off: on torch 2.11 Inductor's fusion of them failed with an assertion
# (2560 vs 1280) compiling a population of 2-critic SAC learners; off, no learner measured slower.
INDUCTOR_SETTINGS = {"combo_kernels": True, "triton.mix_order_reduction": False}
_INDEX_HIGH = 2**62  # indices are randint(0, 2^62) mod size: uniform to within size / 2^62


def _probe(x: torch.Tensor) -> torch.Tensor:
    return (x * x).sum()


_warming: threading.Thread | None = None  # the process's one warm-up (warm_compiler)


def warm_compiler(device: torch.device) -> threading.Thread:
    """Start Inductor's compile workers and compile a throw-away function on `device`, on a side
    thread: a fresh process's first compile otherwise waits for the workers, the compiler's
    imports and the kernel toolchain's first start (seconds), and a learner's first update comes
    only once the run's other actors have started. Once per process (later calls return the same
    thread); join it before compiling anything else."""
    global _warming

    def warm() -> None:
        from torch._inductor.async_compile import maybe_warm_pool

        maybe_warm_pool()
        x = torch.ones(8, device=device, requires_grad=True)
        torch.compile(_probe, fullgraph=True)(x).backward()

    if _warming is None:
        _warming = threading.Thread(target=warm, name="warm-compiler", daemon=True)
        _warming.start()
    return _warming


class DeviceReplay:
    """Transitions as rows [obs | action | reward | next_obs | terminal] of one device tensor.

    A population's replay (`num_agents` K) keeps one online ring of `capacity` rows per agent
    after the D_off rows they share, and draws (K, batch) rows: agent k's online rows from its
    own ring only, its D_off rows with its own indices.
    """

    def __init__(self, obs_dim: int, act_dim: int, capacity: int, device: torch.device, num_agents: int | None = None):
        self.obs_dim, self.act_dim, self.capacity, self.device = obs_dim, act_dim, capacity, device
        self.num_agents = num_agents
        rings = num_agents or 1
        self.storage = torch.zeros((rings * capacity, 2 * obs_dim + act_dim + 2), device=device)
        self.num_offline = 0
        self.counts = [0] * rings  # online rows held, per ring
        self.cursors = [0] * rings  # next row to write, per ring
        # `counts`, for the graphs: one per agent, as a column that broadcasts over its indices.
        self.size = torch.zeros(() if num_agents is None else (num_agents, 1), dtype=torch.int64, device=device)
        self.ring_starts = None if num_agents is None else torch.arange(0, rings * capacity, capacity, device=device)[:, None]

    @property
    def count(self) -> int:
        """Online rows held (by the agent holding fewest)."""
        return min(self.counts)

    @property
    def agent_dims(self) -> tuple[int, ...]:
        """The leading dimensions of a batch: (K,) for a population, none for one agent."""
        return () if self.num_agents is None else (self.num_agents,)

    def _rows(self, arrays: dict[str, np.ndarray]) -> torch.Tensor:
        columns = [np.asarray(arrays[k], np.float32).reshape(len(arrays["rewards"]), -1)
                   for k in ("observations", "actions", "rewards", "next_observations", "terminals")]
        rows = torch.from_numpy(np.concatenate(columns, axis=1))
        if self.device.type == "cuda":
            rows = rows.pin_memory()
        return rows.to(self.device, non_blocking=True)

    def set_offline(self, arrays: dict[str, np.ndarray]) -> None:
        """D_off, sampled at the offline ratio; reallocates the storage (graphs recapture)."""
        self.storage = torch.cat([self._rows(arrays), self.storage[self.num_offline:]])
        self.num_offline = len(arrays["rewards"])

    def add(self, chunk: dict[str, np.ndarray], agent: int | None = None) -> None:
        """Append online transitions (FIFO ring: the oldest are overwritten when full), to
        `agent`'s ring in a population."""
        if (agent is None) != (self.num_agents is None):
            raise ValueError("a population's replay adds to one agent's ring; a single agent's has no agents")
        k = agent or 0
        rows = self._rows(chunk)[-self.capacity:]
        n, cursor = len(rows), self.cursors[k]
        start = self.num_offline + k * self.capacity
        online = self.storage[start:start + self.capacity]
        first = min(n, self.capacity - cursor)
        online[cursor:cursor + first] = rows[:first]
        online[:n - first] = rows[first:]
        self.cursors[k] = (cursor + n) % self.capacity
        self.counts[k] = min(self.counts[k] + n, self.capacity)
        (self.size if agent is None else self.size[agent]).fill_(self.counts[k])

    def clear(self) -> None:
        """Forget the online rows (D_off and the storage, which graphs address, stay)."""
        self.counts = [0] * len(self.counts)
        self.cursors = [0] * len(self.cursors)
        self.size.fill_(0)

    def sample(self, batch_size: int, num_offline_rows: int) -> Batch:
        """`batch_size - num_offline_rows` online rows, then `num_offline_rows` of D_off,
        uniformly with replacement, without a host round trip."""
        parts = []
        num_online = batch_size - num_offline_rows
        if num_online:
            online = torch.randint(0, _INDEX_HIGH, (*self.agent_dims, num_online), device=self.device).remainder_(self.size)
            online.add_(self.num_offline)
            parts.append(online if self.ring_starts is None else online.add_(self.ring_starts))
        if num_offline_rows:
            parts.append(torch.randint(0, self.num_offline, (*self.agent_dims, num_offline_rows), device=self.device))
        rows = self.storage[parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)]
        o, a = self.obs_dim, self.act_dim
        return Batch(rows[..., :o], rows[..., o:o + a], rows[..., o + a], rows[..., o + a + 1:2 * o + a + 1], rows[..., -1])


def accumulate(sums: torch.Tensor, values: list[torch.Tensor]) -> None:
    """sums += the metrics `values`, in their order (scalars, or one per agent in a population)."""
    sums.add_(stack_scalars(values, sums.shape[1:]))


def prepare_optimizers(optimizers: list[torch.optim.Optimizer], foreach: bool) -> None:
    """Adam ready for capture, also after a restore (which brings back the saved flags):
    capturable, with its step counts on the device (a checkpoint written by a CPU run restores
    them on the host, where a CUDA graph cannot advance them); with `foreach`, the foreach
    implementation, which a compiled step fuses into a few wide kernels, where the fused Adam
    kernel, built for large models, gives each 256x256 matrix one thread block (~22 µs a call
    on an H100)."""
    for opt in optimizers:
        for group in opt.param_groups:
            group["capturable"] = True
            if foreach:
                group.update(fused=False, foreach=True)
            for p in group["params"]:
                state = opt.state.get(p, {})
                if "step" in state and state["step"].device != p.device:
                    state["step"] = state["step"].to(p.device, torch.float32)


class GraphedUpdater:
    """`run(num_updates, env_step, offline_ratio)`: that many updates of `algorithm`, on batches
    of its `batch_size` drawn from the device mirror; returns the mean of each metric.

    A `Population` algorithm updates all its agents at once, each on batches of its own ring
    (`add(chunk, agent)`); each metric's mean is then a list, one per agent. `capacity` is per agent.
    """

    def __init__(self, algorithm: Capturable | Population, obs_dim: int, act_dim: int, capacity: int,
                 device: torch.device, steps_per_graph: int = 16, compile: bool = True, tf32: bool = False,
                 autotune: bool = False):
        self.algorithm = algorithm
        self.device = torch.device(device)
        num_agents = algorithm.num_agents if isinstance(algorithm, Population) else None
        self.replay = DeviceReplay(obs_dim, act_dim, capacity, self.device, num_agents)
        self.batch_size = algorithm.config.batch_size
        self.steps_per_graph = steps_per_graph
        self.use_graphs = self.device.type == "cuda"
        self.tf32 = tf32
        self.autotune = autotune and self.use_graphs and compile
        self.compiled = self.use_graphs and compile
        self.sample = self.replay.sample
        self.accumulate = accumulate
        self.compiler_warming = None  # joined before the first warm-up step: nothing compiles beside it
        if self.compiled:
            algorithm.compile_losses()
            algorithm.compile_optimizers()
            # The batch draw (index arithmetic, gather) and the metric sums fused as well.
            self.sample, self.accumulate = torch.compile(self.sample), torch.compile(accumulate)
            self.compiler_warming = warm_compiler(self.device)
        self.graphs: dict[tuple, torch.cuda.CUDAGraph] = {}  # by (the phases of its updates, offline rows)
        self.warm: Counter = Counter()
        self.names: dict[tuple, list[str]] = {}
        self.sums: dict[tuple, torch.Tensor] = {}
        self.signature: tuple = ()
        self.side_stream = torch.cuda.Stream(self.device) if self.use_graphs else None
        # Host seconds of the warm-up steps and captures as `compile` (timed only; no sync added).
        # The learner shares this object, so its update time leaves them out.
        self.timings = Timings()

    def add(self, chunk: dict[str, np.ndarray], agent: int | None = None) -> None:
        self.replay.add(chunk, agent)

    def set_offline(self, arrays: dict[str, np.ndarray]) -> None:
        self.replay.set_offline(arrays)

    def clear(self) -> None:
        self.replay.clear()

    # ------------------------------------------------------------------ one update
    def _step(self, key: tuple) -> None:
        phase, num_offline_rows = key
        metrics = self.algorithm.update_tensors(self.sample(self.batch_size, num_offline_rows), phase)
        if key not in self.sums:
            self.names[key] = list(metrics)
            self.sums[key] = torch.zeros((len(metrics), *self.replay.agent_dims), device=self.device)
        self.accumulate(self.sums[key], [metrics[name] for name in self.names[key]])

    @contextmanager
    def _kernel_settings(self) -> Iterator[None]:
        """TF32 matrix products (when asked for) while this updater computes or captures, and
        `INDUCTOR_SETTINGS`, with autotuned matrix products when asked for, while it compiles
        (`torch.compile` compiles at a function's first call: in the warm-up steps, which run in here)."""
        previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = self.tf32
        try:
            with self._inductor_settings():
                yield
        finally:
            torch.backends.cuda.matmul.allow_tf32 = previous

    @contextmanager
    def _inductor_settings(self) -> Iterator[None]:
        if not self.compiled:
            yield
            return
        import torch._inductor.config  # only here: the module is not needed without compiling

        # Autotuning times Triton candidates for each matrix product; those that need more shared
        # memory than the GPU has are skipped, and Inductor logs each as an error with a traceback.
        candidates_log = logging.getLogger("torch._inductor.select_algorithm")
        level = candidates_log.level
        if self.autotune:
            candidates_log.setLevel(logging.CRITICAL)
        try:
            with torch._inductor.config.patch(**INDUCTOR_SETTINGS, max_autotune_gemm=self.autotune):
                yield
        finally:
            candidates_log.setLevel(level)

    def _eager_step(self, key: tuple) -> None:
        if not self.use_graphs:
            self._step(key)
            return
        if self.compiler_warming is not None:
            self.compiler_warming.join()
            self.compiler_warming = None
        # Off the default stream, as capture will be (lazy per-stream state is set up here).
        self.side_stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.side_stream), self._kernel_settings():
            self._step(key)
        torch.cuda.current_stream(self.device).wait_stream(self.side_stream)

    # ------------------------------------------------------------------ graphs
    def _current_signature(self) -> tuple:
        """Addresses a captured graph writes or reads that a restore may replace (an optimiser's
        `load_state_dict` allocates new moments; `set_offline` a new storage)."""
        tensors = [self.replay.storage]
        for opt in self.algorithm.optimizers():
            for group in opt.param_groups:
                for p in group["params"]:
                    tensors += [p, *(v for v in opt.state.get(p, {}).values() if isinstance(v, torch.Tensor))]
        return tuple(t.data_ptr() for t in tensors)

    def _check_signature(self) -> None:
        """Drop every graph when a restore moved their tensors (they are captured again)."""
        signature = self._current_signature()
        if signature != self.signature:
            self.graphs.clear()
            prepare_optimizers(self.algorithm.optimizers(), foreach=self.compiled)
            self.signature = self._current_signature()

    def _graph(self, phases: tuple, num_offline_rows: int) -> torch.cuda.CUDAGraph:
        """The graph of one update of each of `phases` in turn, captured now if missing."""
        key = (phases, num_offline_rows)
        if key not in self.graphs:
            with self.timings.part("compile"):
                self._check_signature()  # the warm-up may have created the optimisers' state
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, capture_error_mode="thread_local"), self._kernel_settings():
                    for phase in phases:
                        self._step((phase, num_offline_rows))
                self.graphs[key] = graph
        return self.graphs[key]

    # ------------------------------------------------------------------ the runtime's call
    def run(self, num_updates: int, env_step: int, offline_ratio: float) -> dict[str, float | list[float]]:
        return self.start(num_updates, env_step, offline_ratio).result()

    def start(self, num_updates: int, env_step: int, offline_ratio: float) -> PendingMeans:
        """`run`'s updates, queued on the GPU; their metric means come when asked for (`result()`),
        so the host can go on while the GPU runs them."""
        if num_updates <= 0:
            return PendingMeans([], [])
        return self.start_phase(num_updates, self.algorithm.prepare(env_step), offline_ratio)

    def run_phase(self, num_updates: int, phase: Hashable | PhaseCycle, offline_ratio: float) -> dict[str, float | list[float]]:
        return self.start_phase(num_updates, phase, offline_ratio).result()

    def start_phase(self, num_updates: int, phase: Hashable | PhaseCycle, offline_ratio: float) -> PendingMeans:
        """`num_updates` updates of `phase` (an online phase from `prepare`, or an offline stage's);
        of a `PhaseCycle`'s phases in turn from its position, which then advances by `num_updates`.
        A metric's mean is over the updates whose phase reports it."""
        num_offline_rows = int(round(self.batch_size * offline_ratio)) if self.replay.num_offline else 0
        if num_offline_rows < self.batch_size and self.replay.count == 0:
            raise RuntimeError("GraphedUpdater.run before any online transition was added")
        cycle = phase if isinstance(phase, PhaseCycle) else None
        phases, position = (cycle.phases, cycle.position) if cycle else ((phase,), 0)
        keys = [(p, num_offline_rows) for p in dict.fromkeys(phases)]
        for key in keys:
            if key in self.sums:
                self.sums[key].zero_()
        if self.use_graphs:
            self._check_signature()
        whole_cycles = self.steps_per_graph // len(phases) * len(phases)  # the updates of the longer graph
        done = 0
        while done < num_updates:
            at = (position + done) % len(phases)
            if not self.use_graphs or min(self.warm[key] for key in keys) < WARMUP_STEPS:
                key = (phases[at], num_offline_rows)
                with self.timings.part("compile") if self.use_graphs else nullcontext():  # warm-up: compiles
                    self._eager_step(key)
                self.warm[key] += 1
                done += 1
            elif at == 0 and whole_cycles and num_updates - done >= whole_cycles:
                self._graph(phases * (whole_cycles // len(phases)), num_offline_rows).replay()
                done += whole_cycles
            else:
                self._graph((phases[at],), num_offline_rows).replay()
                done += 1
        if cycle:
            cycle.advance(num_updates)
        return self._means(keys, cycle_counts(phases, position, num_updates))

    def _means(self, keys: list[tuple], counts: Counter) -> PendingMeans:
        keys = [key for key in keys if counts[key[0]]]
        return PendingMeans([self.sums[key] for key in keys], [(self.names[key], counts[key[0]]) for key in keys])


class Readback:
    """Device tensors on their way to the host: copied without blocking the caller (into pinned
    memory, then an event, on CUDA), so the GPU goes on with what was queued before the copy and
    the host with its own work; `values()` waits for this copy alone."""

    def __init__(self, tensors: list[torch.Tensor]):
        self.event = None
        if tensors and tensors[0].is_cuda:
            self.host = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t, non_blocking=True) for t in tensors]
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.host = [t.detach().clone() for t in tensors]

    def values(self) -> list[np.ndarray]:
        if self.event is not None:
            self.event.synchronize()
        return [t.numpy() for t in self.host]


class PendingMeans:
    """The metric means of one `GraphedUpdater.start`: `sums` (one tensor per phase, a row per
    metric), reported as `reports` (each phase's metric names and its number of updates)."""

    def __init__(self, sums: list[torch.Tensor], reports: list[tuple[list[str], int]]):
        self.readback = Readback([torch.cat(sums)] if sums else [])
        self.reports = reports

    def result(self) -> dict[str, float | list[float]]:
        """Each metric's sum over the phases that report it, over their number of updates."""
        if not self.reports:
            return {}
        rows = iter(self.readback.values()[0])
        totals, updates = {}, Counter()
        for names, count in self.reports:
            for name in names:
                totals[name] = totals.get(name, 0.0) + next(rows)
                updates[name] += count
        return {name: (total / updates[name]).tolist() for name, total in totals.items()}


def cycle_counts(phases: tuple, position: int, num_updates: int) -> Counter:
    """How many of `num_updates` updates take each of `phases` in turn, from `position`."""
    whole, rest = divmod(num_updates, len(phases))
    counts = Counter({phase: whole * n for phase, n in Counter(phases).items()})
    counts.update(phases[(position + i) % len(phases)] for i in range(rest))
    return counts


def graphed_updater(config, algorithm: Algorithm | Capturable | Population, obs_dim: int, act_dim: int,
                    device: torch.device, capacity: int | None = None, algorithm_cls: type | None = None) -> GraphedUpdater | None:
    """The graphed path where the config's `learner_backend` (a fine-tuning's in `runtime`) picks it
    (None: the eager learner).

    "auto" picks it on CUDA for a `Capturable` algorithm; "graph" insists and fails without
    CUDA or for another; "eager" never picks it. `capacity`: online rows of the device mirror
    (default `config.replay_capacity`; 0 where only D_off is sampled; per agent for a population).
    `algorithm_cls`: the agents' class, for a population.
    """
    on_gpu = torch.device(device).type == "cuda"
    algorithm_cls = algorithm_cls or type(algorithm)
    check_learner_backend(config, algorithm_cls, on_gpu)
    backend = _backend_fields(config)
    if backend.learner_backend == "eager" or not graph_supported(algorithm_cls, on_gpu):
        return None
    capacity = config.replay_capacity if capacity is None else capacity
    return GraphedUpdater(algorithm, obs_dim, act_dim, capacity, device, backend.graph_steps, backend.graph_compile,
                          backend.graph_tf32, backend.graph_autotune)


def _backend_fields(config: PretrainConfig | FinetuneConfig) -> LearnerBackendFields:
    """A pretraining keeps the learner-backend fields at its top level, a fine-tuning in `runtime`."""
    return config.runtime if isinstance(config, FinetuneConfig) else config


def graph_supported(algorithm_cls: type, on_gpu: bool) -> bool:
    """The graphed path runs `Capturable` updates on CUDA."""
    return on_gpu and issubclass(algorithm_cls, Capturable)


def check_learner_backend(config, algorithm_cls: type, on_gpu: bool) -> None:
    """Refuse `learner_backend: graph` where the graphed path cannot run (the Ray runtime asks
    before it starts the learner actor, from the GPU its plan gives the learner)."""
    if _backend_fields(config).learner_backend == "graph" and not graph_supported(algorithm_cls, on_gpu):
        raise UserError(f"learner_backend 'graph' needs a CUDA device and an algorithm with a capturable update (SAC "
                        f"or TD3 family, or an offline pretrainer; got '{config.algo}' "
                        f"{'on a GPU' if on_gpu else 'without a GPU'}); use 'auto' or 'eager'")
