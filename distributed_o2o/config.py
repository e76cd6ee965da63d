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


class LearnerBackendFields(StrictModel):
    """How updates run on a GPU: fields of fine-tuning and pretraining alike."""

    # "graph": updates sampled from a GPU mirror of the replay (or of D_off) and captured
    # `graph_steps` at a time in CUDA graphs (distributed_o2o/runtime/graphed.py); needs CUDA and
    # a capturable update (SAC and TD3 families, the offline pretrainers).
    # "auto": graph on CUDA where the update is capturable, else eager (CPU always runs eager).
    learner_backend: Literal["auto", "eager", "graph"] = "auto"
    graph_steps: int = Field(16, gt=0)
    # torch.compile the losses and optimiser steps before capture (fuses their small kernels;
    # compiling costs well under a minute once per run).
    graph_compile: bool = True
    # TF32 matrix products in the captured updates (what JAX uses for float32 on these GPUs).
    graph_tf32: bool = True


# ---------------------------------------------------------------- offline pretraining
class PretrainConfig(LearnerBackendFields):
    """Offline pretrainers (CORL / O2O-code defaults; the papers run 1M steps)."""

    algo: Literal["bc", "bc-det", "td3bc", "iql", "cql"] = "bc"
    env: str | None = None
    env_kwargs: dict[str, Any] = Field(default_factory=dict)
    dataset: str | None = None
    # Use a dataset recorded for another env than `env` (refused otherwise).
    allow_other_env_dataset: bool = False
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Torch threads on a CPU. None: the faster of one and torch's default, measured on the first
    # steps (thread counts can change the last bits of some results: fix it for bit-identical reruns).
    threads: int | None = Field(None, gt=0)
    steps: int = Field(1_000_000, gt=0)
    batch_size: int = Field(256, gt=0)
    hidden: Layers = Field(default_factory=lambda: [256, 256])
    normalize_obs: bool = True
    obs_norm_eps: float = Field(1e-3, gt=0.0)
    gamma: Discount = 0.99
    tau: Discount = 0.005
    lr: Rate = 3e-4
    log_every: int = Field(1000, gt=0)
    # TD3+BC
    td3bc_alpha: float = 2.5
    policy_noise: float = 0.2
    noise_clip: float = 0.5
    policy_delay: PositiveInt = 2
    # IQL
    iql_expectile: float = Field(0.7, gt=0.0, lt=1.0)
    iql_beta: float = 3.0
    iql_adv_clip: float = 100.0
    iql_cosine_actor_schedule: bool = True
    # CQL
    cql_alpha: float = 10.0
    cql_num_actions: PositiveInt = 10
    cql_importance_sampling: bool = True
    cql_policy_lr: Rate = 3e-5
    cql_q_lr: Rate = 3e-4
    cql_q_hidden: Layers = Field(default_factory=lambda: [256, 256, 256])
    cql_autotune_alpha: bool = True


# ---------------------------------------------------------------- online fine-tuning
# ray: actors on a Ray cluster (a local one unless an address is given); local: one process.
RunMode = Literal["ray", "local"]
DEFAULT_MODE: RunMode = "ray"


class FinetuneConfig(LearnerBackendFields):
    """Fields every online method has."""

    algo: str
    env: str | None = None
    env_kwargs: dict[str, Any] = Field(default_factory=dict)
    policy: str | None = None
    dataset: str | None = None
    # Use a dataset recorded for another env than `env` (refused otherwise); scores are then
    # normalised with `env`'s references.
    allow_other_env_dataset: bool = False
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    online_steps: int = Field(100_000, ge=0)
    eval_every: int = Field(5000, gt=0)
    eval_episodes: int = Field(10, gt=0)
    # Env steps between saves of the resume state (learner state + replay contents); None: at
    # every evaluation. Policy checkpoints are written at every evaluation regardless. Long runs
    # with a big replay save it less often (each save writes the whole replay).
    resume_every: int | None = Field(None, gt=0)
    batch_size: int = Field(256, gt=0)
    hidden: Layers = Field(default_factory=lambda: [256, 256])
    gamma: Discount = 0.99
    tau: Discount = 0.005
    log_every: int = Field(1000, gt=0)
    replay_capacity: int = Field(1_000_000, gt=0)
    # -- runtime (how the run is spread over processes; see docs/design.md, "Runtime")
    num_rollout_workers: int = Field(1, gt=0)
    # Envs each rollout worker steps as one vector (batched inference); `num_envs` is accepted too.
    envs_per_worker: int = Field(1, gt=0, validation_alias=AliasChoices("envs_per_worker", "num_envs"))
    replay_shards: int = Field(1, gt=0)
    # Updates are owed only for transitions inserted once the replay holds this many.
    min_replay_size: int = Field(1, gt=0)
    # How far (in sampled transitions = updates x batch_size) the learner may fall behind the
    # algorithm's samples per insert (UTD x batch_size) before rollouts pause; it never runs
    # ahead. None: room for one rollout chunk per worker plus one learner call.
    samples_per_insert_tolerance: int | None = Field(None, gt=0)
    # The learner publishes acting weights once this many updates ran since the last publish.
    broadcast_every: int = Field(1, gt=0)
    # Torch threads of a CPU learner actor. None: the CPUs its node leaves after one per rollout
    # actor and replay shard; more where those mostly wait on the learner (high UTD, few cores).
    learner_threads: int | None = Field(None, gt=0)
    # Ray resources of the learner actor (GPUs, a fraction packs several runs on one GPU) and of
    # the learner and each rollout actor (CPUs). None: one GPU if the cluster has one (and
    # `device` allows it); an equal CPU share of at most one. A sweep sets both to fit its trials'
    # placement groups.
    learner_gpus: float | None = Field(None, ge=0)
    actor_cpus: float | None = Field(None, gt=0)
    # σ0 when a deterministic policy becomes a stochastic family; PORL's pre-sample noise σ for
    # a deterministic π_pre (ALGORITHMS.md: 0.1 for both).
    init_std: float = Field(0.1, gt=0.0)
    # Normalised-score references; None: the dataset's, else the policy checkpoint's, else none.
    ref_min_score: float | None = None
    ref_max_score: float | None = None

    def needs_policy(self) -> bool:
        return False

    def needs_dataset(self) -> bool:
        return False


class SACConfig(FinetuneConfig):
    """SAC from scratch; the base of every SAC-family method."""

    algo: Literal["sac"] = "sac"
    num_critics: int = Field(2, gt=0)
    num_min_critics: int = Field(2, gt=0)
    critic_layer_norm: bool = True
    utd: int = Field(1, gt=0)
    actor_lr: Rate = 3e-4
    critic_lr: Rate = 3e-4
    alpha_lr: Rate = 3e-4
    alpha_init: float = Field(1.0, gt=0.0)
    autotune_alpha: bool = True
    target_entropy: float | None = None  # None: -|A|
    random_start_steps: int = Field(5000, ge=0)
    learning_starts: int = Field(5000, ge=0)
    offline_ratio: float = Field(0.0, ge=0.0, le=1.0)
    # Not in the specifications (None: off): π̄ ← (1−τ)π̄ + τπ after every online update; π̄ is the
    # deployed policy (evaluated and checkpointed as "policy"), π keeps acting and learning.
    policy_average_tau: float | None = Field(None, gt=0.0, le=1.0)
    # Not in the specifications (0: off): the actor's learning rate rises linearly from 0 to
    # `actor_lr` over this many env steps from the first step the actor learns (PORL: the hand-over).
    actor_warmup_steps: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _min_critics_within_critics(self) -> SACConfig:
        if self.num_min_critics > self.num_critics:
            raise ValueError(f"num_min_critics ({self.num_min_critics}) exceeds num_critics ({self.num_critics}): the "
                             "target takes the minimum over a subset of the critics")
        return self


class NaiveConfig(SACConfig):
    """Naive fine-tuning: offline actor AND critic loaded, plain SAC."""

    algo: Literal["naive"] = "naive"
    random_start_steps: int = 0
    learning_starts: int = 1000

    def needs_policy(self) -> bool:
        return True


class ConstraintConfig(StrictModel):
    """The adaptive divergence constraint of O2O stage C (shared by O2SAC and O2TD3)."""

    eps_start: float = 0.125
    eps_end: float = 2.0
    eps_anneal_steps: int = 100_000
    lambda_init: float = 1.0
    lambda_lr: Rate = 5e-5
    violation_weight: float = 0.7
    # π_ref after the hand-over: "best", the best-evaluated policy (the specification's); or
    # "average", the Polyak-averaged policy π̄ (needs `policy_average_tau`): a trust region that
    # follows the policy at the pace of the average (not in the specification).
    reference: Literal["best", "average"] = "best"


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


class PORLConfig(SACConfig):
    algo: Literal["porl"] = "porl"
    presample_steps: int = Field(5000, ge=0)
    presample_epsilon: float = Field(0.1, ge=0.0, le=1.0)
    presample_utd: int = Field(10, gt=0)
    utd: int = 4
    num_critics: int = 10
    alpha_init: float = 0.01
    random_start_steps: int = 0
    learning_starts: int = 0
    keep_offline_data: bool = False
    # Not in the PORL specification (None: no constraint): after the pre-sample, O2SAC's stage-C
    # constraint λ·(log π_θ − log π_ref) with π_ref = π_pre, then the best-evaluated policy
    # (docs/results.md: without it the policy collapses at hand-over on Hopper).
    constraint: ConstraintConfig | None = None
    log_ref_min: float = -50.0
    _average_reference = model_validator(mode="after")(check_average_reference)

    def needs_policy(self) -> bool:
        return True

    def needs_dataset(self) -> bool:
        return self.keep_offline_data


class RLPDConfig(SACConfig):
    algo: Literal["rlpd"] = "rlpd"
    utd: int = 20
    num_critics: int = 10
    offline_ratio: float = 0.5

    def needs_dataset(self) -> bool:
        return True


class WSRLConfig(SACConfig):
    algo: Literal["wsrl"] = "wsrl"
    warmup_steps: int = Field(5000, ge=0)
    utd: int = 4
    num_critics: int = 10
    random_start_steps: int = 0
    learning_starts: int = 5000

    def needs_policy(self) -> bool:
        return True


class O2TD3ConstraintConfig(ConstraintConfig):
    eps_start: float = 0.0025
    eps_end: float = 0.04


class O2SACConfig(SACConfig):
    algo: Literal["o2sac"] = "o2sac"
    reevaluate_steps: int = Field(500_000, ge=0)
    align_steps: int = Field(500_000, ge=0)
    alpha0: float = 0.2  # 0.5 for medium-expert / expert data
    align_action_clip: float = 0.9999
    utd: int = 10
    offline_ratio: float = 0.5
    random_start_steps: int = 0
    learning_starts: int = 1000
    constraint: ConstraintConfig = Field(default_factory=ConstraintConfig)  # expert data: 0.005 -> 0.125
    log_ref_min: float = -50.0
    _average_reference = model_validator(mode="after")(check_average_reference)

    def needs_policy(self) -> bool:
        return True

    def needs_dataset(self) -> bool:
        return True


class TD3Config(FinetuneConfig):
    """Fields of TD3-family methods."""

    num_critics: int = Field(2, gt=0)
    critic_layer_norm: bool = True
    utd: int = Field(1, gt=0)
    actor_lr: Rate = 3e-4
    critic_lr: Rate = 3e-4
    policy_delay: PositiveInt = 2
    explore_sigma: float = 0.1
    target_noise: float = 0.2
    noise_clip: float = 0.5


class O2TD3Config(TD3Config):
    algo: Literal["o2td3"] = "o2td3"
    reevaluate_steps: int = Field(500_000, ge=0)
    align_steps: int = Field(500_000, ge=0)
    align_beta: float = 1.0
    align_delta_max: float = 0.2
    offline_ratio: float = 0.5
    learning_starts: int = 1000
    constraint: O2TD3ConstraintConfig = Field(default_factory=O2TD3ConstraintConfig)
    _average_reference = model_validator(mode="after")(check_average_reference)

    def needs_policy(self) -> bool:
        return True

    def needs_dataset(self) -> bool:
        return True


class O2PPOConfig(FinetuneConfig):
    algo: Literal["o2ppo"] = "o2ppo"
    online_steps: int = 250_000
    reevaluate_steps: int = Field(1_000_000, ge=0)  # V regression on Monte-Carlo returns of D_off
    value_lr: Rate = 1e-4
    value_batch_size: PositiveInt = 512
    rollout_steps: PositiveInt = 2048
    minibatch_size: PositiveInt = 128
    epochs: PositiveInt = 10
    clip_ratio: float = Field(0.2, gt=0.0)
    entropy_coef: float = 0.01
    actor_lr: Rate = 3e-5
    critic_lr: Rate = 2e-4
    gae_lambda: float = Field(0.95, ge=0.0, le=1.0)
    max_grad_norm: float = 0.5
    normalize_advantages: bool = True  # per fragment, after shaping (standard PPO, the O2O code)
    shaping_alpha: float = 2.0
    shaping_end_steps: int = 250_000

    def needs_policy(self) -> bool:
        return True

    def needs_dataset(self) -> bool:
        return True


class IQLFinetuneConfig(FinetuneConfig):
    """IQL continued online with D_off and D_on (batches mixed at `offline_ratio`)."""

    algo: Literal["iql"] = "iql"
    utd: int = 1
    offline_ratio: float = Field(0.5, ge=0.0, le=1.0)
    lr: Rate = 3e-4
    iql_expectile: float = Field(0.7, gt=0.0, lt=1.0)
    iql_beta: float = 3.0
    iql_adv_clip: float = 100.0
    learning_starts: int = 0

    def needs_policy(self) -> bool:
        return True

    def needs_dataset(self) -> bool:
        return True


# Fields that say how a run is spread over processes and devices, not what it computes: they do
# not invalidate cached offline stages and may change on --resume (the learner backend computes
# the same updates, graphed or eager: a GPU run can be resumed eagerly to debug it).
RUNTIME_FIELDS = frozenset({"num_rollout_workers", "envs_per_worker", "replay_shards", "min_replay_size",
                            "samples_per_insert_tolerance", "broadcast_every", "learner_backend", "learner_threads",
                            "learner_gpus", "actor_cpus"})

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
        else:
            parts.append(f"'{where}': {err['msg']}")
    return "; ".join(parts)


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
    """Validate merged layers (later ones win) into `schema`; any problem is one UserError line."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = merge_layers(merged, layer)
    try:
        return schema.model_validate(merged)
    except ValidationError as exc:
        raise UserError(f"invalid {schema.__name__}: {_one_line(exc)}") from None


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
    # PORL sized for about 7 minutes on 2 CPU cores: a 2k-step pre-sample at UTD 10, then UTD 4,
    # 10 critics of 128x128 (the BC policy keeps its 64x64), and the optional hand-over
    # constraint (configs/porl-constrained.yaml), which keeps the fresh critic from wrecking the
    # policy at hand-over. Measured: docs/results.md.
    return PORLConfig(online_steps=12_000, presample_steps=2000, presample_utd=10, utd=4, hidden=[128, 128],
                      constraint=ConstraintConfig(lambda_init=10.0), eval_every=1000, eval_episodes=10,
                      log_every=500, learner_threads=2)


class DemoConfig(StrictModel):
    """The main job's embedded default: zoo data -> BC -> PORL on Hopper-v5."""

    env: str = "Hopper-v5"  # an env with a zoo entry
    quality: str = "medium"  # which zoo policy makes the dataset (o2o data make --quality)
    dataset_steps: int = Field(20_000, gt=0)
    seed: int = 0
    mode: RunMode = DEFAULT_MODE  # fine-tuning on a local Ray instance, or in one process
    pretrain: PretrainConfig = Field(default_factory=_demo_pretrain)
    finetune: PORLConfig = Field(default_factory=_demo_finetune)
