"""The one config schema: typed, strict, with ALGORITHMS.md's defaults.

A run's config is the class registered for its algorithm, built from (in order) the class
defaults, a YAML file (`configs/*.yaml`) and `--set key=value` overrides. Unknown keys are
an error, never dropped. Each field's default is the specification's, so a YAML file only
says where a preset departs from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from distributed_o2o.errors import UserError


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _booleans_are_not_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """true/false is no number and 1/0 no boolean (pydantic's lax mode converts both)."""
        accepted = get_args(cls.model_fields[info.field_name].annotation) or (cls.model_fields[info.field_name].annotation,)
        if isinstance(value, bool) and bool not in accepted and any(t in accepted for t in (int, float)):
            raise ValueError("expects a number, not true/false")
        if accepted == (bool,) and not isinstance(value, bool):
            raise ValueError(f"expects true or false, not {value!r}")
        return value


PositiveInt = Annotated[int, Field(gt=0)]
Layers = Annotated[list[PositiveInt], Field(min_length=1)]  # hidden layer widths
Rate = Annotated[float, Field(gt=0.0)]  # learning rates
Discount = Annotated[float, Field(gt=0.0, le=1.0)]  # gamma, and tau (target-network step)

# Every field has a one-line description (what it does, its unit): `o2o config show ALGO`
# prints them. A field several configs share is described once, here; a class that changes its
# default writes `utd: Utd = 4`, which keeps the description and the bounds (a plain
# `utd: int = 4` would drop both).
ALGO_DOC = "the online method (`o2o config show ALGO` lists its fields)"
Env = Annotated[str | None, Field(description="env: a Gymnasium id (e.g. Hopper-v5) or package.module:Class")]
EnvKwargs = Annotated[dict[str, Any], Field(description="keyword arguments of the env's constructor")]
Seed = Annotated[int, Field(description="seed of the networks, the envs and batch sampling")]
Device = Annotated[Literal["auto", "cpu", "cuda"],
                   Field(description="where the learner's networks run: auto (CUDA if torch sees a GPU), cpu or cuda")]
BatchSize = Annotated[int, Field(gt=0, description="transitions per gradient step")]
Gamma = Annotated[Discount, Field(description="discount factor γ")]
Tau = Annotated[Discount, Field(description="Polyak step τ of the target networks, per update")]
OnlineSteps = Annotated[int, Field(ge=0, description="online env-step budget (pre-sample and warm-up steps included)")]
Utd = Annotated[int, Field(gt=0, description="gradient updates per env step (update-to-data ratio)")]
LearningStarts = Annotated[int, Field(ge=0, description="env steps before the first online update (the one gate of "
                                                           "when updates start)")]
RandomStartSteps = Annotated[int, Field(ge=0, description="first env steps acted uniformly at random")]
OfflineRatio = Annotated[float, Field(ge=0.0, le=1.0, description="fraction of each batch drawn from D_off (the rest from D_on)")]
NumCritics = Annotated[int, Field(gt=0, description="critics in the Q ensemble (K)")]
CriticLayerNorm = Annotated[bool, Field(description="LayerNorm after each hidden layer of the critics")]
ActorLr = Annotated[Rate, Field(description="Adam learning rate of the policy")]
CriticLr = Annotated[Rate, Field(description="Adam learning rate of the critics")]
AlphaInit = Annotated[float, Field(gt=0.0, description="initial entropy temperature α")]
ReevaluateSteps = Annotated[int, Field(ge=0, description="stage A (re-evaluation): gradient steps of fresh critics "
                                                          "learning frozen π_off's value on D_off")]
AlignSteps = Annotated[int, Field(ge=0, description="stage B (value alignment): gradient steps calibrating the critics "
                                                     "to π_off while π_θ trains against them")]
PolicyDelay = Annotated[PositiveInt, Field(description="critic updates per policy (and target) update")]
NoiseClip = Annotated[float, Field(description="clip of the target-policy smoothing noise")]
IqlExpectile = Annotated[float, Field(gt=0.0, lt=1.0, description="IQL: expectile τ of the value regression")]
IqlBeta = Annotated[float, Field(description="IQL: inverse temperature β of advantage-weighted regression")]
IqlAdvClip = Annotated[float, Field(description="IQL: clip of the exponentiated advantage weights")]
EpsStart = Annotated[float, Field(description="divergence threshold ε0 at the start of fine-tuning")]
EpsEnd = Annotated[float, Field(description="divergence threshold ε_end, reached after eps_anneal_steps")]


class LearnerBackendFields(StrictModel):
    """How updates run on a GPU: fields of fine-tuning and pretraining alike."""

    learner_backend: Literal["auto", "eager", "graph"] = Field(
        "auto", description="graph: updates sampled from a GPU mirror of the replay (or D_off) and captured in CUDA graphs "
                            "(needs CUDA and a capturable update: SAC and TD3 families, the pretrainers); eager; "
                            "auto: graph where possible")
    graph_steps: int = Field(16, gt=0, description="updates captured in one CUDA graph")
    graph_compile: bool = Field(True, description="torch.compile the losses and optimiser steps before capture (fuses "
                                                  "their small kernels; costs under a minute once per run)")
    graph_tf32: bool = Field(True, description="TF32 matrix products in the captured updates (what JAX uses for "
                                               "float32 on these GPUs)")
    graph_autotune: bool = Field(False, description="compile with Inductor's autotuned matrix products: Triton kernels "
                                                    "picked by timing candidates on this GPU (1.1-1.3x updates/s for one "
                                                    "SAC learner on an H200, varying between compiles; 1.13-1.18x for "
                                                    "a population; about two minutes of compiling the first time on a "
                                                    "machine, cached after; docs/performance.md)")


# ---------------------------------------------------------------- offline pretraining
class PretrainConfig(LearnerBackendFields):
    """Offline pretrainers (CORL / O2O-code defaults; the papers run 1M steps)."""

    algo: Literal["bc", "bc-det", "td3bc", "iql", "cql"] = Field(
        "bc", description="offline method: bc (TanhGaussian, Gaussian NLL), bc-det (deterministic, MSE), td3bc, iql or cql")
    env: str | None = Field(None, description="env the dataset is for (its widths are checked; recorded in the checkpoint)")
    env_kwargs: EnvKwargs = Field(default_factory=dict)
    dataset: str | None = Field(None, description="offline dataset: d4rl:..., minari:... or an .hdf5 path")
    allow_other_env_dataset: bool = Field(False, description="use a dataset recorded for another env than `env` "
                                                             "(refused otherwise)")
    seed: Seed = 0
    device: Device = "auto"
    threads: int | None = Field(None, gt=0, description="torch threads on a CPU; None: the faster of one and torch's default, "
                                                        "measured on the first steps (fix it for bit-identical reruns)")
    steps: int = Field(1_000_000, gt=0, description="gradient steps")
    batch_size: BatchSize = 256
    hidden: Layers = Field(default_factory=lambda: [256, 256], description="hidden layer widths of the policy and "
                                                                           "critic/value MLPs")
    normalize_obs: bool = Field(True, description="normalise observations by the dataset's mean and std (stored "
                                                  "with the checkpoint, applied online too)")
    obs_norm_eps: float = Field(1e-3, gt=0.0, description="added to the std when normalising observations")
    gamma: Gamma = 0.99
    tau: Tau = 0.005
    lr: Rate = Field(3e-4, description="Adam learning rate (BC, TD3+BC, IQL)")
    log_every: int = Field(1000, gt=0, description="gradient steps between loss records (metrics.jsonl, TensorBoard)")
    eval_every: int = Field(0, ge=0, description="gradient steps between evaluations of the policy on the dataset's env "
                                                 "(0: none); return and normalised score go to metrics.jsonl")
    eval_episodes: PositiveInt = Field(10, description="deterministic episodes per evaluation (`eval_every`)")
    td3bc_alpha: float = Field(2.5, description="TD3+BC: α weighting the Q term against the BC term")
    policy_noise: float = Field(0.2, description="TD3+BC: std of the target-policy smoothing noise")
    noise_clip: NoiseClip = 0.5
    policy_delay: PolicyDelay = 2
    iql_expectile: IqlExpectile = 0.7
    iql_beta: IqlBeta = 3.0
    iql_adv_clip: IqlAdvClip = 100.0
    iql_cosine_actor_schedule: bool = Field(True, description="IQL: cosine decay of the policy's learning rate over `steps`")
    cql_alpha: float = Field(10.0, description="CQL: weight of the conservative penalty")
    cql_num_actions: PositiveInt = Field(10, description="CQL: actions sampled per state for the penalty's log-sum-exp")
    cql_importance_sampling: bool = Field(True, description="CQL: importance-weight the sampled actions by their density")
    cql_policy_lr: Rate = Field(3e-5, description="CQL: Adam learning rate of the policy")
    cql_q_lr: Rate = Field(3e-4, description="CQL: Adam learning rate of the critics")
    cql_q_hidden: Layers = Field(default_factory=lambda: [256, 256, 256], description="CQL: hidden layer widths of the critics")
    cql_autotune_alpha: bool = Field(True, description="CQL: tune the entropy temperature toward −|A|")


# ---------------------------------------------------------------- online fine-tuning
# ray: actors on a Ray cluster (a local one unless an address is given); local: one process.
RunMode = Literal["ray", "local"]
DEFAULT_MODE: RunMode = "ray"


def _refuse_min_replay_size(data: Any) -> Any:
    """`min_replay_size` gated updates beside `learning_starts`, at the top level or in `runtime`:
    it is removed, and named so (`_one_line`)."""
    if isinstance(data, dict) and "min_replay_size" in data:
        raise PydanticCustomError("removed_min_replay_size", "min_replay_size is removed")
    return data


class RuntimeConfig(LearnerBackendFields):
    """How a fine-tuning run executes: processes, devices, rate limiting, the learner backend.

    `--resume` may change any of it, and no offline stage depends on it: cached stages are
    reused across it, the graph fields aside (TF32 and compiled kernels change a GPU's numbers,
    so they stay in the stage cache key). docs/design.md, "Config".
    """

    @model_validator(mode="before")
    @classmethod
    def _min_replay_size_removed(cls, data: Any) -> Any:
        return _refuse_min_replay_size(data)

    device: Device = "auto"
    num_rollout_workers: int = Field(1, gt=0, description="rollout actors stepping envs")
    envs_per_worker: int = Field(1, gt=0, validation_alias=AliasChoices("envs_per_worker", "num_envs"),
                                 description="envs each rollout worker steps as one vector (batched inference); "
                                             "`num_envs` is accepted too")
    replay_shards: int = Field(1, gt=0, description="replay service shards")
    samples_per_insert_tolerance: int | None = Field(
        None, gt=0, description="sampled transitions (updates x batch_size) the learner may fall behind UTD x batch_size "
                                "per insert before rollouts pause; None: one rollout chunk per worker plus one learner call")
    broadcast_every: int = Field(1, gt=0, description="updates between publishes of the acting weights")
    learner_threads: int | None = Field(None, gt=0, description="torch threads of a CPU learner; None: the CPUs its node "
                                                                "leaves after one per rollout actor and replay shard")
    learner_gpus: float | None = Field(None, ge=0, description="Ray GPUs of the learner actor (a fraction packs runs on "
                                                               "one GPU); None: one if the cluster has one and `device` allows")
    actor_cpus: float | None = Field(None, gt=0, description="Ray CPUs of the learner and of each rollout actor; None: an "
                                                             "equal share of at most one")


# Top-level keys of the flat config that now live in `runtime` (`num_envs`: envs_per_worker's alias).
MOVED_TO_RUNTIME = frozenset(RuntimeConfig.model_fields) | {"num_envs"}


class FinetuneConfig(StrictModel):
    """Fields every online method has."""

    @model_validator(mode="before")
    @classmethod
    def _runtime_fields_moved(cls, data: Any) -> Any:
        """A runtime field at the top level (the config before it had a `runtime` section) is
        named with its new place, wherever it comes from (a file, --set, a sweep, Python)."""
        _refuse_min_replay_size(data)
        moved = sorted(MOVED_TO_RUNTIME & set(data)) if isinstance(data, dict) else []
        if moved:  # `_one_line` words it
            raise PydanticCustomError("moved_to_runtime", "runtime fields at the top level: {moved}", {"moved": moved})
        return data

    algo: str = Field(description=ALGO_DOC)
    env: Env = None
    env_kwargs: EnvKwargs = Field(default_factory=dict)
    policy: str | None = Field(None, description="starting policy: a checkpoint directory (o2o pretrain, o2o convert-rllib)")
    dataset: str | None = Field(None, description="offline dataset D_off: d4rl:..., minari:... or an .hdf5 path")
    allow_other_env_dataset: bool = Field(False, description="use a dataset recorded for another env than `env` (refused "
                                                             "otherwise); scores then use `env`'s references")
    seed: Seed = 0
    online_steps: OnlineSteps = 100_000
    eval_every: int = Field(5000, gt=0, description="env steps between evaluations (each also writes a policy checkpoint)")
    eval_episodes: int = Field(10, gt=0, description="episodes per evaluation (deterministic policy, separate envs)")
    resume_every: int | None = Field(None, gt=0, description="env steps between saves of the resume state (learner, "
                                                             "replay, counters); None: at every evaluation")
    batch_size: BatchSize = 256
    hidden: Layers = Field(default_factory=lambda: [256, 256], description="hidden layer widths of new networks (a "
                                                                           "loaded policy keeps its own)")
    gamma: Gamma = 0.99
    tau: Tau = 0.005
    log_every: int = Field(1000, gt=0, description="env steps between training-metric records (TensorBoard)")
    replay_capacity: int = Field(1_000_000, gt=0, description="transitions the online replay D_on holds (oldest dropped)")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig, description="how the run executes: workers, shards, "
                                   "rate limiter, broadcast, device, learner backend (--resume may change it)")
    init_std: float = Field(0.1, gt=0.0, description="σ0 when a deterministic policy becomes a stochastic family; PORL's "
                                                     "pre-sample noise σ for a deterministic π_pre")
    ref_min_score: float | None = Field(None, description="return scoring 0 in normalised scores; None: the dataset's, "
                                                          "else the policy checkpoint's, else none")
    ref_max_score: float | None = Field(None, description="return scoring 100 in normalised scores; None: as ref_min_score")

    def needs_policy(self) -> bool:
        return False

    def needs_dataset(self) -> bool:
        return False


class SACConfig(FinetuneConfig):
    """SAC from scratch; the base of every SAC-family method."""

    algo: Literal["sac"] = Field("sac", description=ALGO_DOC)
    num_critics: NumCritics = 2
    num_min_critics: int = Field(2, gt=0, description="critics (drawn at random) whose minimum makes the target")
    critic_layer_norm: CriticLayerNorm = True
    utd: Utd = 1
    actor_lr: ActorLr = 3e-4
    critic_lr: CriticLr = 3e-4
    alpha_lr: Rate = Field(3e-4, description="Adam learning rate of log α")
    alpha_init: AlphaInit = 1.0
    autotune_alpha: bool = Field(True, description="tune α toward `target_entropy` (else α stays alpha_init)")
    target_entropy: float | None = Field(
        None, description="entropy target of α's tuning; None: −target_entropy_scale·|A|")
    target_entropy_scale: float = Field(
        1.0, gt=0.0, description="not in the specifications: with target_entropy None, the target is −scale·|A| "
                                 "(1: SAC's −|A|; 0.5: more action noise; one setting for envs of different action "
                                 "sizes)")
    random_start_steps: RandomStartSteps = 5000
    learning_starts: LearningStarts = 5000
    offline_ratio: OfflineRatio = 0.0
    policy_average_tau: float | None = Field(
        None, gt=0.0, le=1.0, description="not in the specifications: π̄ ← (1−τ)π̄ + τπ per update, π̄ deployed (evaluated, "
                                          "checkpointed) while π acts and learns; None: off")
    actor_num_min_critics: int | None = Field(
        None, gt=0, description="not in the specifications: critics (drawn at random) whose minimum the actor maximises; "
                                "None: num_min_critics, as the target (the specification's)")
    actor_q_mean: bool = Field(
        False, description="not in the specifications: the actor maximises the mean of all critics (REDQ's and RLPD's "
                           "actor objective) instead of a random subset's minimum; the target keeps its minimum")
    actor_every: int = Field(
        1, ge=1, description="not in the specifications: the actor and α take a step with every this-many-th critic "
                             "step (RLPD's published code: one per env step, i.e. `utd`); 1: with every critic step")
    actor_warmup_steps: int = Field(
        0, ge=0, description="not in the specifications: the actor's learning rate rises linearly from 0 to actor_lr "
                             "over this many env steps from the first step the actor learns (PORL: the hand-over); 0: off")
    validated_deployment: bool = Field(
        False, description="not in the specifications: the deployed policy (evaluated, checkpointed) is the starting "
                           "policy until a learnt candidate (π̄ where set, else π), scored at an evaluation, matches the "
                           "best such score so far; then a copy of that candidate, reported from the next evaluation on "
                           "(its fresh episodes)")

    @model_validator(mode="after")
    def _min_critics_within_critics(self) -> SACConfig:
        if self.actor_q_mean and self.actor_num_min_critics is not None:
            raise ValueError("actor_q_mean and actor_num_min_critics both set: the actor takes the critics' mean or a "
                             "minimum, set one of them")
        if (self.actor_num_min_critics or 0) > self.num_critics:
            raise ValueError(f"actor_num_min_critics ({self.actor_num_min_critics}) exceeds num_critics ({self.num_critics})")
        if self.target_entropy is not None and self.target_entropy_scale != 1.0:
            raise ValueError("target_entropy and target_entropy_scale both set: the target is a number or a multiple "
                             "of −|A|, set one of them")
        if self.num_min_critics > self.num_critics:
            raise ValueError(f"num_min_critics ({self.num_min_critics}) exceeds num_critics ({self.num_critics}): the "
                             "target takes the minimum over a subset of the critics")
        return self


class NaiveConfig(SACConfig):
    """Naive fine-tuning: offline actor AND critic loaded, plain SAC."""

    algo: Literal["naive"] = Field("naive", description=ALGO_DOC)
    random_start_steps: RandomStartSteps = 0
    learning_starts: LearningStarts = 1000

    def needs_policy(self) -> bool:
        return True


class ConstraintConfig(StrictModel):
    """The adaptive divergence constraint of O2O stage C (shared by O2SAC and O2TD3)."""

    eps_start: EpsStart = 0.125
    eps_end: EpsEnd = 2.0
    eps_anneal_steps: int = Field(100_000, description="env steps over which ε rises linearly from eps_start to eps_end")
    lambda_init: float = Field(1.0, description="initial Lagrange multiplier λ0 (λ = exp(ℓ), ℓ learned)")
    lambda_lr: Rate = Field(5e-5, description="Adam learning rate of ℓ = log λ")
    violation_weight: float = Field(0.7, description="weight of violations (u < 0) in λ's loss; slack weighs 1 − it")
    reference: Literal["best", "average"] = Field(
        "best", description="π_ref after the hand-over: best (the best-evaluated policy, the specification's) or average "
                            "(π̄, needs policy_average_tau; not in the specification)")


def check_average_reference(config: FinetuneConfig) -> FinetuneConfig:
    """A constraint toward π̄ needs π̄ (the SAC family's `policy_average_tau`)."""
    constraint = getattr(config, "constraint", None)
    if constraint is None or constraint.reference != "average":
        return config
    if "policy_average_tau" not in type(config).model_fields:
        raise ValueError(f"{config.algo} keeps no policy average: constraint.reference must be 'best'")
    if config.policy_average_tau is None:
        raise ValueError("constraint.reference 'average' needs policy_average_tau (the Polyak rate of π̄), e.g. 5e-5")
    return config


class LogRatioConstraintConfig(SACConfig):
    """SAC-family methods with O2O's stage-C constraint on log π_θ − log π_ref (O2SAC; PORL optionally)."""

    constraint: ConstraintConfig | None = Field(
        None, description="the stage-C divergence constraint toward π_ref; None: off (PORL: from the pre-sample's end, "
                          "π_ref = π_pre, then the best-evaluated policy)")
    log_ref_min: float = Field(-50.0, description="lower clamp of log π_ref(a|s) in the divergence D")
    _average_reference = model_validator(mode="after")(check_average_reference)


class PORLConfig(LogRatioConstraintConfig):
    """PORL: a pre-sample stage learns fresh critics for the frozen π_pre, then SAC fine-tunes both."""

    algo: Literal["porl"] = Field("porl", description=ALGO_DOC)
    presample_steps: int = Field(5000, ge=0, description="env steps of the pre-sample stage (frozen π_pre acts, critics "
                                                         "learn; counted in online_steps)")
    presample_epsilon: float = Field(0.1, ge=0.0, le=1.0, description="pre-sample: probability of a uniform random "
                                                                      "action instead of π_pre's")
    presample_utd: int = Field(10, gt=0, description="pre-sample: critic updates per env step")
    utd: Utd = 4
    num_critics: NumCritics = 10
    alpha_init: AlphaInit = 0.01
    random_start_steps: RandomStartSteps = 0
    learning_starts: LearningStarts = 0
    keep_offline_data: bool = Field(False, description="load `dataset` as D_off, mixed into batches at offline_ratio "
                                                       "(the specification: online data only)")
    # `constraint` (off by default) is not in the PORL specification; docs/results.md: without it
    # the policy collapses at hand-over on Hopper.

    def needs_policy(self) -> bool:
        return True

    def needs_dataset(self) -> bool:
        return self.keep_offline_data


class RLPDConfig(SACConfig):
    """RLPD: SAC from scratch with symmetric D_off/D_on batches, high UTD and a LayerNorm ensemble."""

    algo: Literal["rlpd"] = Field("rlpd", description=ALGO_DOC)
    utd: Utd = 20
    num_critics: NumCritics = 10
    offline_ratio: OfflineRatio = 0.5

    def needs_dataset(self) -> bool:
        return True


class WSRLConfig(SACConfig):
    """WSRL: frozen π_pre warms the replay up, then SAC with high UTD and no offline data."""

    algo: Literal["wsrl"] = Field("wsrl", description=ALGO_DOC)
    warmup_steps: int = Field(5000, ge=0, description="env steps the frozen π_pre acts before any update")
    utd: Utd = 4
    num_critics: NumCritics = 10
    random_start_steps: RandomStartSteps = 0
    learning_starts: LearningStarts = 5000

    def needs_policy(self) -> bool:
        return True


class O2TD3ConstraintConfig(ConstraintConfig):
    """O2TD3's thresholds: D is a squared action distance, not a log-ratio."""

    eps_start: EpsStart = 0.0025
    eps_end: EpsEnd = 0.04


class O2SACConfig(LogRatioConstraintConfig):
    """O2SAC: re-evaluation, value alignment, then SAC under the stage-C divergence constraint."""

    algo: Literal["o2sac"] = Field("o2sac", description=ALGO_DOC)
    reevaluate_steps: ReevaluateSteps = 500_000
    align_steps: AlignSteps = 500_000
    alpha0: float = Field(0.2, description="fixed α of stages A and B and the initial α online (0.5 for medium-expert "
                                           "/ expert data)")
    align_action_clip: float = Field(0.9999, description="stage B: clip of a* = mode of π_off (inside tanh's ±1)")
    utd: Utd = 10
    offline_ratio: OfflineRatio = 0.5
    random_start_steps: RandomStartSteps = 0
    learning_starts: LearningStarts = 1000
    constraint: ConstraintConfig = Field(default_factory=ConstraintConfig,
                                         description="the stage-C divergence constraint (expert data: ε 0.005 → 0.125)")

    def needs_policy(self) -> bool:
        return True

    def needs_dataset(self) -> bool:
        return True


class TD3Config(FinetuneConfig):
    """Fields of TD3-family methods."""

    num_critics: NumCritics = 2
    critic_layer_norm: CriticLayerNorm = True
    utd: Utd = 1
    actor_lr: ActorLr = 3e-4
    critic_lr: CriticLr = 3e-4
    policy_delay: PolicyDelay = 2
    explore_sigma: float = Field(0.1, description="std of the Gaussian exploration noise on the deterministic action")
    target_noise: float = Field(0.2, description="std of the target-policy smoothing noise")
    noise_clip: NoiseClip = 0.5


class O2TD3Config(TD3Config):
    """O2TD3: re-evaluation, value alignment, then TD3 under the stage-C divergence constraint."""

    algo: Literal["o2td3"] = Field("o2td3", description=ALGO_DOC)
    reevaluate_steps: ReevaluateSteps = 500_000
    align_steps: AlignSteps = 500_000
    align_beta: float = Field(1.0, description="stage B: β scaling the alignment target by the distance δ to π_off")
    align_delta_max: float = Field(0.2, description="stage B: cap of δ = ‖ã − π_off(s)‖/√|A|")
    offline_ratio: OfflineRatio = 0.5
    learning_starts: LearningStarts = 1000
    constraint: O2TD3ConstraintConfig = Field(default_factory=O2TD3ConstraintConfig,
                                              description="the stage-C divergence constraint (D = (π_ref(s) − π_θ(s))²)")
    _average_reference = model_validator(mode="after")(check_average_reference)

    def needs_policy(self) -> bool:
        return True

    def needs_dataset(self) -> bool:
        return True


class O2PPOConfig(FinetuneConfig):
    """O2PPO: V re-evaluated on D_off's Monte-Carlo returns, then PPO with advantages shaped toward π_ref."""

    algo: Literal["o2ppo"] = Field("o2ppo", description=ALGO_DOC)
    online_steps: OnlineSteps = 250_000
    reevaluate_steps: int = Field(1_000_000, ge=0, description="stage A: gradient steps regressing V on D_off's "
                                                               "discounted Monte-Carlo returns")
    value_lr: Rate = Field(1e-4, description="stage A: Adam learning rate of V")
    value_batch_size: PositiveInt = Field(512, description="stage A: transitions per gradient step")
    rollout_steps: PositiveInt = Field(2048, description="env steps per PPO rollout (over all envs)")
    minibatch_size: PositiveInt = Field(128, description="transitions per PPO minibatch")
    epochs: PositiveInt = Field(10, description="passes over each rollout")
    clip_ratio: float = Field(0.2, gt=0.0, description="PPO's probability-ratio clip")
    entropy_coef: float = Field(0.01, description="weight of the entropy bonus")
    actor_lr: ActorLr = 3e-5
    critic_lr: CriticLr = 2e-4
    gae_lambda: float = Field(0.95, ge=0.0, le=1.0, description="λ of generalised advantage estimation")
    max_grad_norm: float = Field(0.5, description="gradient-norm clip of each update")
    normalize_advantages: bool = Field(True, description="normalise advantages per rollout, after shaping (standard "
                                                         "PPO, the O2O code)")
    shaping_alpha: float = Field(2.0, description="α of the reference advantage A_ref")
    shaping_end_steps: int = Field(250_000, description="env steps over which the shaping weight w_t falls from 1 to 0")

    def needs_policy(self) -> bool:
        return True

    def needs_dataset(self) -> bool:
        return True


class IQLFinetuneConfig(FinetuneConfig):
    """IQL continued online with D_off and D_on (batches mixed at `offline_ratio`)."""

    algo: Literal["iql"] = Field("iql", description=ALGO_DOC)
    utd: Utd = 1
    offline_ratio: OfflineRatio = 0.5
    lr: Rate = Field(3e-4, description="Adam learning rate of the policy, critics and V")
    iql_expectile: IqlExpectile = 0.7
    iql_beta: IqlBeta = 3.0
    iql_adv_clip: IqlAdvClip = 100.0
    learning_starts: LearningStarts = 0

    def needs_policy(self) -> bool:
        return True

    def needs_dataset(self) -> bool:
        return True


# What an offline stage's result does not depend on (`RunDir.stage_key` leaves it out): the
# runtime section, the online budget and how often the online phase evaluates and logs ...
STAGE_CACHE_IGNORED = frozenset({"runtime", "online_steps", "eval_every", "eval_episodes", "log_every"})
# ... but for the runtime fields that change a GPU's numbers. They stay in the key at its top
# level, where they were when the config was flat, so stages cached before are still found;
# those added since enter it only when set, so the keys of stages cached before stay as they were.
STAGE_KEY_RUNTIME_FIELDS = ("graph_steps", "graph_compile", "graph_tf32")
STAGE_KEY_RUNTIME_FIELDS_WHEN_SET = ("graph_autotune",)
FINETUNE_CONFIGS: dict[str, type[FinetuneConfig]] = {
    cls.model_fields["algo"].default: cls
    for cls in (SACConfig, NaiveConfig, PORLConfig, RLPDConfig, WSRLConfig, O2SACConfig, O2TD3Config, O2PPOConfig, IQLFinetuneConfig)
}


def _one_line(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err["loc"]) or "config"
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown config key '{where}'")
        elif err["type"] == "moved_to_runtime":
            parts.append(_moved_to_runtime(err["ctx"]["moved"], "".join(f"{x}." for x in err["loc"])))
        elif err["type"] == "removed_min_replay_size":
            parts.append(f"'{'' if where == 'config' else where + '.'}min_replay_size' is removed: updates start at "
                         "`learning_starts` (env steps), the one gate; set that instead")
        else:
            parts.append(f"'{where}': {err['msg']}")
    return "; ".join(parts)


def _moved_to_runtime(moved: list[str], prefix: str) -> str:
    """`num_rollout_workers` is now `runtime.num_rollout_workers`: ... (`prefix`: where the config is nested)."""
    names = ", ".join(f"`{prefix}{k}` is now `{prefix}runtime.{k}`" for k in moved)
    example = f"{prefix}runtime.{moved[0] if len(moved) == 1 else 'KEY'}"
    return f"{names}: write {'it' if len(moved) == 1 else 'them'} under a `runtime:` mapping (--set {example}=...)"


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`["a=1", "constraint.eps_end=0.5"]` -> nested dict, values parsed as YAML scalars/lists."""
    result: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set expects key=value, got '{item}'")
        node = result
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {item}: '{part}' is already set to a value, so it cannot hold keys")
        try:
            node[leaf] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            problem = str(exc).splitlines()[0]
            raise UserError(f"--set {item}: the value is not valid YAML ({problem}): close its brackets or quote it") from None
    return result


def merge_layers(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """`update` over `base`, nested mappings merged key by key."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_layers(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file '{path}' does not exist: pass a YAML file such as configs/porl.yaml")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise UserError(f"config file '{path}' is not a UTF-8 text file: pass a YAML file such as configs/porl.yaml") from None
    except yaml.YAMLError as exc:
        raise UserError(f"config file '{path}' is not valid YAML: {exc}".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise UserError(f"config file '{path}' must hold a mapping of keys to values")
    return data


def build_config(schema: type[StrictModel], *layers: dict[str, Any]) -> StrictModel:
    """Validate merged layers (later ones win) into `schema`; any problem is one UserError line.
    A section whose embedded default differs from its own class's (the demo's `finetune`) is the
    first layer, so a layer naming one of its fields changes that field, not the whole section."""
    merged: dict[str, Any] = _embedded_sections(schema)
    for layer in layers:
        merged = merge_layers(merged, layer)
    try:
        return schema.model_validate(merged)
    except ValidationError as exc:
        raise UserError(f"invalid {schema.__name__}: {_one_line(exc)}") from None


def _embedded_sections(schema: type[StrictModel]) -> dict[str, Any]:
    """Each nested-model field's default, as the fields where it differs from its class's defaults."""
    sections = {}
    for name, field in schema.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            sections[name] = default.model_dump(exclude_defaults=True)
    return sections


def pretrain_config(config_file: str | Path | None = None, *layers: dict[str, Any]) -> PretrainConfig:
    """The config of an offline pretraining: defaults < YAML file < `layers` (later ones win)."""
    return build_config(PretrainConfig, read_yaml(config_file) if config_file else {}, *layers)


def finetune_config(algo: str | None, config_file: str | None = None, overrides: dict[str, Any] | None = None,
                    sets: list[str] | None = None) -> FinetuneConfig:
    """The run config of an online method: defaults < YAML file < `--set` items < explicit overrides."""
    file_layer = read_yaml(config_file) if config_file else {}
    algo = algo or file_layer.get("algo")
    if algo is None:
        raise UserError(f"no algorithm given: pass --algo (one of {', '.join(sorted(FINETUNE_CONFIGS))}) "
                        "or a --config file with an `algo:` key")
    if algo not in FINETUNE_CONFIGS:
        raise UserError(f"unknown algorithm '{algo}': use one of {', '.join(sorted(FINETUNE_CONFIGS))}")
    if file_layer.get("algo", algo) != algo:
        raise UserError(f"config file '{config_file}' is for algo '{file_layer['algo']}', not '{algo}': pass the matching --algo or file")
    schema = FINETUNE_CONFIGS[algo]
    _check_off_blocks(schema, sets or [], file_layer)
    return build_config(schema, file_layer, parse_overrides(sets or []), overrides or {}, {"algo": algo})


def nested_runtime(saved: dict[str, Any]) -> dict[str, Any]:
    """A run's saved config.yaml in today's form: flat runtime fields (saved before the runtime
    section existed) moved under `runtime`, and the removed `min_replay_size` dropped where it
    was 1, the value that gated nothing (any other value is refused when validated)."""
    moved = MOVED_TO_RUNTIME | {"min_replay_size"}
    flat = {k: v for k, v in saved.items() if k in moved}
    rest = {k: v for k, v in saved.items() if k not in moved}
    runtime = {**saved.get("runtime", {}), **flat}
    if runtime.get("min_replay_size") == 1:
        del runtime["min_replay_size"]
    return {**rest, "runtime": runtime}


def _check_off_blocks(schema: type[StrictModel], sets: list[str], file_layer: dict[str, Any]) -> None:
    """Refuse `--set block.field=...` for a block that is off (None) by default unless the file
    or a `--set block=...` turns it on: one nested field must not silently switch a block on."""
    whole = {item.partition("=")[0].strip() for item in sets}
    for item in sets:
        key = item.partition("=")[0].strip()
        block = key.split(".", 1)[0]
        field = schema.model_fields.get(block)
        if ("." not in key or field is None or field.default is not None or block in whole
                or isinstance(file_layer.get(block), dict)):
            continue
        algo = schema.model_fields["algo"].default
        raise UserError(f"--set {key}: the '{block}' block is off for {algo} by default; turn it on with "
                        f"--set {block}={{}} (its defaults), then set {key}")


# ---------------------------------------------------------------- the demo (`make demo`)
def _demo_pretrain() -> PretrainConfig:
    return PretrainConfig(algo="bc", steps=3000, hidden=[64, 64], log_every=100)


def _demo_finetune() -> PORLConfig:
    # PORL sized for about 11 minutes on 2 CPU cores: a 2k-step pre-sample at UTD 10, then UTD 4,
    # 10 critics of 128x128 (the BC policy keeps its 64x64), the optional hand-over constraint
    # (configs/porl-constrained.yaml), which slows the fresh critic's wrecking of the policy at
    # hand-over, and the validated deployment (configs/porl-stable.yaml), which keeps a learnt
    # policy from being delivered before it has scored as well as the best. The constraint is
    # scaled to the demo's 12k steps: λ from 1 and its threshold opened within 10k steps (the
    # defaults, λ 10 and 100k, keep the policy near π_pre for the whole demo). HalfCheetah, not
    # Hopper: in 12k steps PORL gains on HalfCheetah in every seed, on Hopper in some
    # (docs/results/demo-variants/).
    return PORLConfig(online_steps=12_000, presample_steps=2000, presample_utd=10, utd=4, hidden=[128, 128],
                      constraint=ConstraintConfig(lambda_init=1.0, eps_anneal_steps=10_000), validated_deployment=True,
                      eval_every=1000, eval_episodes=10, log_every=500, runtime=RuntimeConfig(learner_threads=2))


class DemoConfig(StrictModel):
    """The main job's embedded default: zoo data -> BC -> PORL on HalfCheetah-v5."""

    env: str = Field("HalfCheetah-v5", description="env with a zoo entry (o2o zoo list)")
    quality: str = Field("medium", description="which zoo policy makes the dataset (o2o data make --quality)")
    dataset_steps: int = Field(20_000, gt=0, description="env steps of the dataset")
    seed: Seed = 0
    mode: RunMode = Field(DEFAULT_MODE, description="fine-tuning on a local Ray instance (ray) or in one process (local)")
    pretrain: PretrainConfig = Field(default_factory=_demo_pretrain, description="the BC pretraining")
    finetune: PORLConfig = Field(default_factory=_demo_finetune, description="the PORL fine-tuning")
