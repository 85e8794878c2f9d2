"""Configuration of the `pi_rl` policy: a flow-matching policy with a stochastic, scorable denoising chain.

Time convention (LeRobot's and openpi's): t = 1 is pure noise, t = 0 is the clean action chunk.

Variants and backbones are nested draccus choice configs, so a typo fails at parse time:
    --policy.type=pi_rl --policy.variant.type=flow_sde --policy.variant.noise_level=0.5
    --policy.backbone.type=smolvla --policy.backbone.pretrained_path=lerobot/smolvla_base
"""

from __future__ import annotations

import abc
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import draccus
from huggingface_hub.constants import CONFIG_NAME

from lerobot.configs import NormalizationMode, PreTrainedConfig
from lerobot.configs.types import FeatureType
from lerobot.optim import AdamWConfig
from lerobot.policies.gaussian_actor.configuration_gaussian_actor import (
    ActorLearnerConfig,
    ConcurrencyConfig,
)
from lerobot.utils.constants import ACTION, OBS_STATE

from .validation import check_choice, require

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------------
# Exploration variants
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class VariantConfig(draccus.ChoiceRegistry, abc.ABC):
    """How the deterministic flow ODE is made stochastic (and therefore scorable) during RL.

    The settings only: what a variant does lives in `lerobot_policy_pi_rl.exploration` (`make_exploration`).
    """

    @property
    def type(self) -> str:
        return self.get_choice_name(self.__class__)

    def check_num_denoise_steps(self, num_denoise_steps: int) -> None:
        """Raise `ValueError` naming the setting when this variant cannot run with `num_denoise_steps` steps."""


FLOW_SDE_STOCHASTIC_STEPS = ("hybrid", "all")


@VariantConfig.register_subclass("flow_sde")
@dataclass
class FlowSDEConfig(VariantConfig):
    """Flow-SDE: the ODE converted to an SDE with the same marginals, sigma_t = a * sqrt(t / (1 - t))."""

    # Noise level `a` (reference 0.5; 0.3 on easy suites). 0 reproduces the deterministic Euler ODE exactly.
    noise_level: float = 0.5
    # If set, `a` is annealed linearly from `noise_level` to this value over `noise_anneal_updates` PPO updates.
    noise_level_final: float | None = None
    # Number of policy updates over which the linear annealing of the noise level runs (0 = no annealing).
    noise_anneal_updates: int = 0
    # `hybrid`: one uniformly drawn denoise step per decision is the SDE step, all others are ODE steps (the
    # reference default; training needs one action-head pass with gradients). `all`: every step is stochastic.
    stochastic_steps: str = "hybrid"
    # Draw the hybrid SDE step from 0..K-2 instead of 0..K-1 (the last step is nearly deterministic).
    exclude_last_step: bool = False

    def __post_init__(self) -> None:
        require(self.noise_level >= 0, f"variant.noise_level={self.noise_level} must be >= 0")
        if self.noise_level_final is not None:
            require(
                self.noise_level_final >= 0,
                f"variant.noise_level_final={self.noise_level_final} must be >= 0",
            )
        require(
            self.noise_anneal_updates >= 0,
            f"variant.noise_anneal_updates={self.noise_anneal_updates} must be >= 0",
        )
        check_choice("variant.stochastic_steps", self.stochastic_steps, FLOW_SDE_STOCHASTIC_STEPS)

    def check_num_denoise_steps(self, num_denoise_steps: int) -> None:
        if self.exclude_last_step:
            require(
                num_denoise_steps >= 2,
                f"variant.exclude_last_step=true needs num_denoise_steps >= 2, got {num_denoise_steps}",
            )


FLOW_NOISE_REDUCTIONS = ("sum", "mean")


@VariantConfig.register_subclass("flow_noise")
@dataclass
class FlowNoiseConfig(VariantConfig):
    """Flow-Noise: a learned noise head adds per-element Gaussian noise at every denoise step."""

    # Lower bound of the learned per-element std (reference 0.08). Both bounds are in normalized action units:
    # [-1, 1] for flow_mlp (MIN_MAX); for a VLA backbone, the units its processors normalize to (SmolVLA and pi0:
    # MEAN_STD, which is less noise in env units wherever an action's std is below its half-range; pi05: quantiles).
    min_std: float = 0.08
    # Upper bound of the learned per-element std (reference 0.16).
    max_std: float = 0.16
    # Hidden sizes of the noise-head MLP (tanh activations), reading the action head's per-token features.
    noise_head_hidden_dims: list[int] = field(default_factory=lambda: [128, 64])
    # Chain log-prob over the K+1 terms: `sum` is the exact chain likelihood (default); `mean` divides by K+1
    # as the reference implementation does (its PPO ratio is the exact ratio to the power 1/(K+1)).
    log_prob_reduction: str = "sum"

    def __post_init__(self) -> None:
        require(self.min_std > 0, f"variant.min_std={self.min_std} must be > 0")
        require(
            self.min_std < self.max_std,
            f"variant.min_std={self.min_std} must be < variant.max_std={self.max_std}",
        )
        require(
            all(h > 0 for h in self.noise_head_hidden_dims),
            f"variant.noise_head_hidden_dims={self.noise_head_hidden_dims} must be positive",
        )
        check_choice("variant.log_prob_reduction", self.log_prob_reduction, FLOW_NOISE_REDUCTIONS)


def _override_value(cli_overrides: list[str], name: str) -> str | None:
    """The last value given to `--<name>` in `--<name>=<value>` or `--<name> <value>` form, else None."""
    value = None
    for i, arg in enumerate(cli_overrides):
        if arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
        elif arg == f"--{name}" and i + 1 < len(cli_overrides):
            value = cli_overrides[i + 1]
    return value


# ---------------------------------------------------------------------------------------------------------------
# Backbones
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class BackboneConfig(draccus.ChoiceRegistry, abc.ABC):
    """The flow-matching network: what encodes the observation and predicts the velocity field."""

    @property
    def type(self) -> str:
        return self.get_choice_name(self.__class__)

    # True when the backbone is one of LeRobot's VLA policies with its own processors and normalization.
    @property
    def is_vla(self) -> bool:
        return False


@BackboneConfig.register_subclass("flow_mlp")
@dataclass
class FlowMLPBackboneConfig(BackboneConfig):
    """A small flow-matching policy of this package over state vectors (optionally small images), CPU-sized."""

    # Width of the observation encoder and of the velocity MLP.
    hidden_dim: int = 256
    # Number of hidden layers of the velocity MLP.
    num_layers: int = 3
    # Width of the per-horizon-step "token" features (what the noise head reads).
    token_dim: int = 64
    # Size of the sinusoidal time embedding.
    time_embed_dim: int = 32
    # Channels of the small conv encoder used for image observations (ignored without images).
    image_channels: list[int] = field(default_factory=lambda: [16, 32, 32])

    def __post_init__(self) -> None:
        for name in ("hidden_dim", "num_layers", "token_dim", "time_embed_dim"):
            value = getattr(self, name)
            require(value >= 1, f"backbone.{name}={value} must be >= 1")


VALUE_FEATURE_SOURCES = ("auto", "observation", "prefix", "prefix_state", "action_expert")


@dataclass
class VLABackboneConfig(BackboneConfig):
    """Common fields of LeRobot VLA backbones (loaded from a plain LeRobot checkpoint)."""

    # Hub id or local directory of a plain LeRobot checkpoint of this policy type (e.g. lerobot/smolvla_base).
    pretrained_path: str | None = None
    # Keep the VLM (vision + language model) frozen; only the action expert and the heads train (reference).
    freeze_vlm: bool = True
    # Compute dtype of the backbone: `float32` or `bfloat16` (log-probs stay float32 either way).
    dtype: str = "float32"
    # Task string injected by the pre-processor when an observation carries none (the VLA tokenizers need one).
    default_task: str = "Complete the task."
    # The upstream policy config (LeRobot's JSON encoding, with its `type`). Filled when the backbone is first
    # loaded from `pretrained_path`, and saved inside the pi_rl config.json: when set, the backbone is built from
    # it with the weights left to the pi_rl checkpoint, so a saved pi_rl policy reloads without the original one.
    upstream_config: dict[str, Any] | None = None

    @property
    def is_vla(self) -> bool:
        return True

    def __post_init__(self) -> None:
        check_choice("backbone.dtype", self.dtype, ("float32", "bfloat16"))
        if self.upstream_config is not None:
            upstream_type = self.upstream_config.get("type")
            require(
                upstream_type == self.type,
                f"backbone.upstream_config has type={upstream_type!r}, expected {self.type!r}",
            )


@BackboneConfig.register_subclass("smolvla")
@dataclass
class SmolVLABackboneConfig(VLABackboneConfig):
    # Instead of loading `pretrained_path`, build LeRobot's SmolVLA at a debug size (`tiny`, `small`) with random
    # weights and a locally written VLM: the real code path at a size a CPU trains, not a model to deploy. The
    # input/output features come from the dataset (SFT) or the env; chunk size, executed steps and denoise steps
    # from this pi_rl config.
    debug_size: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.debug_size is not None:
            from .backbones.debug_smolvla import debug_size_spec

            debug_size_spec(self.debug_size)
            require(
                not self.pretrained_path,
                f"backbone.debug_size={self.debug_size!r} builds a random-weight SmolVLA: it cannot be combined "
                f"with backbone.pretrained_path={self.pretrained_path!r}",
            )


@BackboneConfig.register_subclass("pi0")
@dataclass
class PI0BackboneConfig(VLABackboneConfig):
    pass


@BackboneConfig.register_subclass("pi05")
@dataclass
class PI05BackboneConfig(VLABackboneConfig):
    pass


# ---------------------------------------------------------------------------------------------------------------
# Value head
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class ValueHeadConfig:
    # Where the critic reads its features: `observation` (the shared observation encoding; flow_mlp), `prefix`
    # (mean over valid VLM prefix tokens; pi05/smolvla), `prefix_state` (that mean and the padded, normalized
    # state; smolvla and pi0), `action_expert` (mean over action tokens of the action expert at a fixed probe
    # input; pi0), or `auto` (the backbone's recommended source).
    feature_source: str = "auto"
    # Hidden sizes of the value MLP (ReLU).
    hidden_dims: list[int] = field(default_factory=lambda: [256, 128])
    # Stop critic gradients from flowing into the backbone features.
    detach_features: bool = True

    def __post_init__(self) -> None:
        check_choice("value_head.feature_source", self.feature_source, VALUE_FEATURE_SOURCES)
        require(
            all(h > 0 for h in self.hidden_dims),
            f"value_head.hidden_dims={self.hidden_dims} must be positive",
        )


LOG_PROB_LEVELS = ("chunk", "action", "element")


@PreTrainedConfig.register_subclass("pi_rl")
@dataclass
class PiRLConfig(PreTrainedConfig):
    """PI-RL policy: a flow-matching backbone whose denoising chain is sampled stochastically and scored.

    CLI: `--policy.type=pi_rl`.
    """

    # Exploration variant: `flow_sde` (ODE->SDE, hybrid one-stochastic-step by default) or `flow_noise`.
    variant: VariantConfig = field(default_factory=FlowSDEConfig)
    # Flow backbone: `flow_mlp` (this package), `smolvla`, `pi0`, `pi05` (LeRobot's own policies).
    backbone: BackboneConfig = field(default_factory=FlowMLPBackboneConfig)
    # Critic V(o) on chain-independent features (see the value-head table).
    value_head: ValueHeadConfig = field(default_factory=ValueHeadConfig)

    # Number of denoise steps K of the flow ODE/SDE (t_k = 1 - k/K).
    num_denoise_steps: int = 4
    # Chunk length H predicted per decision (VLA backbones: must match the checkpoint's chunk size).
    chunk_size: int = 10
    # Executed steps C <= H of each chunk: the RL step is the executed chunk.
    n_action_steps: int = 5
    # Which elements one PPO ratio covers: `chunk` (sum over executed steps and dims: one ratio per chunk; the
    # reference default), `action` (one ratio per executed step) or `element`.
    log_prob_level: str = "chunk"
    # select_action/predict_action_chunk sample the deterministic ODE (deployment) unless this is true.
    stochastic_inference: bool = False

    # flow_mlp normalization per feature type (VLA backbones use their own processors). Actions in [-1, 1]
    # match the unit-Gaussian noise scale of the flow.
    normalization_mapping: dict[str, NormalizationMode] = field(
        default_factory=lambda: {
            "VISUAL": NormalizationMode.IDENTITY,
            "STATE": NormalizationMode.MEAN_STD,
            "ENV": NormalizationMode.MEAN_STD,
            "ACTION": NormalizationMode.MIN_MAX,
        }
    )

    # flow_mlp: lower bound on the standard deviation used to normalize STATE/ENV features (MEAN_STD). A dimension
    # that barely moves in the demonstrations (MetaWorld's object orientation: std 0.002, or exactly 0) would
    # otherwise turn the first unseen value into an input of hundreds of standard deviations, to which the SFT
    # policy responds arbitrarily and the PPO ratio explodes (approx KL > 1 in the first update). 0 disables it.
    state_std_floor: float = 0.02

    # Learning rate of the supervised (flow-matching SFT) AdamW used by `lerobot-train`; RL learning rates live
    # on the algorithm.
    optimizer_lr: float = 3e-4
    # Weight decay of the SFT optimizer.
    optimizer_weight_decay: float = 1e-4
    # Gradient-norm clip of the SFT optimizer.
    optimizer_grad_clip_norm: float = 1.0

    # --- Read from `cfg.policy` by the actor/learner runtime (LeRobot's RL stack keeps these on the policy) ---

    # Normalization stats `{feature: {stat: list}}` for the processors when no dataset gives them (normally they
    # come from the SFT checkpoint's processors). Read by the PI-RL actor and learner and by
    # `make_pi_rl_pre_post_processors`.
    dataset_stats: dict[str, dict[str, list[float]]] | None = None
    # Where the learner listens and the actors connect (`learner_host`, `learner_port`) and the transport's
    # `queue_get_timeout`: read by the PI-RL actor and learner and by LeRobot's transport workers they run.
    # `policy_parameters_push_frequency` is not used: the learner publishes weights after every update.
    actor_learner_config: ActorLearnerConfig = field(default_factory=ActorLearnerConfig)
    # LeRobot's actor transport workers read `concurrency.actor`. A pi_rl run runs them as threads and serves
    # gRPC from a thread of the learner process, so only `threads` is accepted for `actor` and `learner`.
    concurrency: ConcurrencyConfig = field(default_factory=ConcurrencyConfig)

    # Never push to the hub unless asked (LeRobot's default `true` demands a repo_id). Read by `lerobot-train`,
    # which pushes after SFT; RL runs never push (the runtime warns when this is set).
    push_to_hub: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            isinstance(self.variant, VariantConfig),
            f"policy.variant={self.variant!r} must be one of {sorted(VariantConfig.get_known_choices())}",
        )
        require(
            isinstance(self.backbone, BackboneConfig),
            f"policy.backbone={self.backbone!r} must be one of {sorted(BackboneConfig.get_known_choices())}",
        )
        require(self.num_denoise_steps >= 1, f"num_denoise_steps={self.num_denoise_steps} must be >= 1")
        require(self.chunk_size >= 1, f"chunk_size={self.chunk_size} must be >= 1")
        require(
            1 <= self.n_action_steps <= self.chunk_size,
            f"n_action_steps={self.n_action_steps} must be in [1, chunk_size={self.chunk_size}]",
        )
        check_choice("log_prob_level", self.log_prob_level, LOG_PROB_LEVELS)
        require(self.state_std_floor >= 0, f"state_std_floor={self.state_std_floor} must be >= 0")
        self.variant.check_num_denoise_steps(self.num_denoise_steps)
        if self.value_head.feature_source != "auto":
            allowed = {
                "flow_mlp": ("observation",),
                "smolvla": ("prefix", "prefix_state", "action_expert"),
                "pi0": ("prefix", "prefix_state", "action_expert"),
                "pi05": ("prefix", "action_expert"),
            }.get(self.backbone.type, VALUE_FEATURE_SOURCES)
            check_choice(
                f"value_head.feature_source (backbone {self.backbone.type})",
                self.value_head.feature_source,
                tuple(allowed) + ("auto",),
            )

    # --- PreTrainedConfig contract ---

    def get_optimizer_preset(self) -> AdamWConfig:
        return AdamWConfig(
            lr=self.optimizer_lr,
            weight_decay=self.optimizer_weight_decay,
            grad_clip_norm=self.optimizer_grad_clip_norm,
        )

    def get_scheduler_preset(self) -> None:
        return None

    def validate_features(self) -> None:
        if ACTION not in (self.output_features or {}):
            raise ValueError(
                f"pi_rl needs an '{ACTION}' output feature; got {sorted(self.output_features or {})}"
            )
        if self.backbone.is_vla:
            return
        inputs = self.input_features or {}
        usable = [k for k, ft in inputs.items() if ft.type in (FeatureType.STATE, FeatureType.ENV, FeatureType.VISUAL)]
        if not usable:
            raise ValueError(
                f"pi_rl flow_mlp needs at least one state, environment-state or image input; got {sorted(inputs)}"
            )

    @property
    def observation_delta_indices(self) -> None:
        return None

    @property
    def action_delta_indices(self) -> list[int]:
        # SFT targets are whole chunks of H future actions.
        return list(range(self.chunk_size))

    @property
    def reward_delta_indices(self) -> None:
        return None

    # --- convenience ---

    @property
    def action_dim(self) -> int:
        """Real (environment) action dimension."""
        ft = self.action_feature
        if ft is None:
            raise ValueError("pi_rl config has no action output feature yet (input/output features unset)")
        return int(ft.shape[0])

    @property
    def state_feature_keys(self) -> list[str]:
        """Vector observation keys the flow_mlp backbone consumes, in a stable order."""
        inputs = self.input_features or {}
        keys = [k for k, ft in inputs.items() if ft.type in (FeatureType.STATE, FeatureType.ENV)]
        # observation.state first, the rest sorted, so checkpoints do not depend on dict order.
        return sorted(keys, key=lambda k: (k != OBS_STATE, k))

    @property
    def image_feature_keys(self) -> list[str]:
        return sorted(self.image_features)


# ---------------------------------------------------------------------------------------------------------------
# Configs saved by earlier versions
# ---------------------------------------------------------------------------------------------------------------

# Fields earlier versions of `PiRLConfig` carried for LeRobot's SAC loops, which never read them from a pi_rl
# config. draccus refuses a config file with a field the class does not have, and a policy config cannot bring
# its own draccus decoder (draccus forbids one on a choice subclass such as a policy type), so this package's
# loaders drop exactly these names from the file first. Any other unknown field still fails. LeRobot's own
# `--policy.path` loading (`lerobot-train`, `lerobot-eval`) still refuses such a file: delete the keys from it.
REMOVED_FIELDS = (
    "storage_device",
    "online_steps",
    "online_step_before_learning",
    "online_buffer_capacity",
    "offline_buffer_capacity",
    "async_prefetch",
    "num_discrete_actions",
)


def drop_removed_fields(raw: dict[str, Any]) -> dict[str, Any]:
    """A saved policy config (its JSON dict) without `REMOVED_FIELDS` if it is a pi_rl one; one warning names
    the fields dropped. Returns `raw` itself when there is nothing to drop."""
    found = [name for name in REMOVED_FIELDS if name in raw] if raw.get("type") == "pi_rl" else []
    if not found:
        return raw
    logger.warning("pi_rl config: ignoring %s (no longer pi_rl config fields: only SAC reads them)", ", ".join(found))
    return {k: v for k, v in raw.items() if k not in found}


def load_policy_config(path: str | Path, cli_overrides: list[str] | None = None) -> PreTrainedConfig:
    """`PreTrainedConfig.from_pretrained(path, cli_overrides=...)` (a local directory or a hub id), except that a
    local pi_rl config.json is first brought up to date:

    * fields in `REMOVED_FIELDS` (saved by older versions) are dropped with a warning;
    * choosing another exploration variant (`--variant.type=flow_noise` over a Flow-SDE checkpoint) starts that
      variant from its own defaults. LeRobot merges a saved config with the overrides field by field, so the
      saved variant's settings would reach the new variant and fail to parse (`noise_level` is no Flow-Noise
      field). Only a change of variant drops them; `--variant.*` overrides of the chosen variant apply as usual.
    """
    cli_overrides = list(cli_overrides or [])
    config_file = Path(path) / CONFIG_NAME
    raw = json.loads(config_file.read_text()) if config_file.is_file() else {}
    updated = drop_removed_fields(raw)
    requested = _override_value(cli_overrides, "variant.type")
    variant = updated.get("variant")
    if updated.get("type") == "pi_rl" and requested and isinstance(variant, dict) and variant.get("type") != requested:
        logger.info(
            "policy.variant: %s (saved in %s) -> %s; the saved variant's settings are not carried over",
            variant.get("type"), path, requested,
        )
        updated = {**updated, "variant": {"type": requested}}
    if updated is raw:
        return PreTrainedConfig.from_pretrained(path, cli_overrides=cli_overrides)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / CONFIG_NAME).write_text(json.dumps(updated))
        return PreTrainedConfig.from_pretrained(tmp, cli_overrides=cli_overrides)
