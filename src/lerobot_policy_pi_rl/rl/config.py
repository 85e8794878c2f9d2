"""Configuration of the `pi_rl` RL algorithm (`--algorithm.type=pi_rl`): PPO on chunk steps of a `pi_rl` policy.

The advantage estimator is a nested typed choice, so a typo fails at parse time:
    --algorithm.advantage.type=gae --algorithm.advantage.gamma=0.99 --algorithm.advantage.gae_lambda=0.95
    --algorithm.advantage.type=grpo --algorithm.advantage.group_size=8
Online/offline mixing (a supervised flow-matching term on demonstrations and human takeovers) is `offline`:
    --algorithm.offline.repo_ids='[user/demos]' --algorithm.offline.roots='[data/demos]' --algorithm.offline.ratio=0.25
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

import draccus

from lerobot.configs import PreTrainedConfig
from lerobot.rl.algorithms.configs import RLAlgorithmConfig

from ..configuration_pi_rl import PiRLConfig
from ..validation import require


@dataclass
class AdvantageConfig(draccus.ChoiceRegistry, abc.ABC):
    """How each row's advantage is estimated from the rollout."""

    @property
    def type(self) -> str:
        return self.get_choice_name(self.__class__)

    # Whether the estimator trains and reads the value head (GRPO is critic-free).
    @property
    def uses_critic(self) -> bool:
        return True

    # Episodes that must start from the same initial state and be scored together (1: no grouping).
    @property
    def episodes_per_group(self) -> int:
        return 1


#: Values of `PiRLAlgorithmConfig.grad_clip_scope`.
GRAD_CLIP_SCOPES = ("per_group", "global")


@AdvantageConfig.register_subclass("gae")
@dataclass
class GAEConfig(AdvantageConfig):
    """Generalized advantage estimation per chunk step, with a learned critic (PPO)."""

    # Discount per chunk step (the RL step is the executed chunk).
    gamma: float = 0.99
    # GAE lambda (1 = Monte Carlo returns, 0 = one-step TD).
    gae_lambda: float = 0.95

    def __post_init__(self) -> None:
        require(0 < self.gamma <= 1, f"algorithm.advantage.gamma={self.gamma} must be in (0, 1]")
        require(
            0 <= self.gae_lambda <= 1, f"algorithm.advantage.gae_lambda={self.gae_lambda} must be in [0, 1]"
        )


@AdvantageConfig.register_subclass("grpo")
@dataclass
class GRPOConfig(AdvantageConfig):
    """Critic-free: episode success normalized within groups of episodes that start from the same state."""

    # Episodes per group. The actor runs a group on `group_size` of its envs reset with the same seed (the same
    # initial state), so each actor's `n_envs` (per task, for multi-task suites) must be a multiple of it.
    group_size: int = 8
    # Drop groups whose episodes are all successes or all failures (they carry zero advantage).
    drop_uniform_groups: bool = True

    @property
    def uses_critic(self) -> bool:
        return False

    @property
    def episodes_per_group(self) -> int:
        return self.group_size

    def __post_init__(self) -> None:
        require(self.group_size >= 2, f"algorithm.advantage.group_size={self.group_size} must be >= 2")


@dataclass
class OfflineConfig:
    """Offline rows mixed into every PPO minibatch: they add the backbone's own flow-matching (SFT) loss.

    Each minibatch keeps its `minibatch_size` online rows and adds `round(ratio / (1 - ratio) * online_rows)`
    offline rows, so that `ratio` is the offline share of the rows the minibatch holds (RLPD's definition of a
    sampling ratio); the online rows and the PPO step size are those of a run without mixing.
    """

    # LeRobotDatasets whose frames are offline rows (e.g. the SFT demonstrations), preprocessed and chunked as
    # `lerobot-train` does for this policy; their features must match the policy's.
    repo_ids: list[str] = field(default_factory=list)
    # Local root of each dataset in repo_ids, in the same order (as `--dataset.root` of lerobot-train); null:
    # LeRobot's default location (`$HF_LEROBOT_HOME/<repo_id>`).
    roots: list[str] | None = None
    # Share of each minibatch's rows drawn from offline data, in [0, 1). 0 (the default) is plain PPO.
    ratio: float = 0.0
    # Weight of the offline flow-matching loss in the minibatch loss (summed with the PPO losses).
    loss_weight: float = 1.0
    # Chunks in which a human intervened (masked from the PPO ratio as `mask_interventions` says) also become
    # offline rows: their observation and executed action chunk enter a FIFO buffer sampled with the datasets.
    interventions: bool = False
    # Capacity of that buffer, in chunks (the oldest are dropped first). Each chunk keeps its preprocessed
    # observation in learner memory, images included; the buffer is not saved in checkpoints.
    intervention_buffer_size: int = 1024

    def __post_init__(self) -> None:
        require(0 <= self.ratio < 1, f"algorithm.offline.ratio={self.ratio} must be in [0, 1)")
        require(self.loss_weight >= 0, f"algorithm.offline.loss_weight={self.loss_weight} must be >= 0")
        require(
            self.intervention_buffer_size >= 1,
            f"algorithm.offline.intervention_buffer_size={self.intervention_buffer_size} must be >= 1",
        )
        if self.roots is not None:
            require(
                len(self.roots) == len(self.repo_ids),
                f"algorithm.offline.roots={self.roots} must name one root per repo_id (repo_ids={self.repo_ids})",
            )
        if self.ratio > 0:
            require(
                bool(self.repo_ids) or self.interventions,
                f"algorithm.offline.ratio={self.ratio} has nothing to sample: set algorithm.offline.repo_ids "
                "and/or algorithm.offline.interventions=true",
            )
        elif self.interventions:
            raise ValueError(
                "algorithm.offline.interventions=true with algorithm.offline.ratio=0: intervention chunks would "
                "never be trained on; set a ratio in (0, 1)"
            )

    @property
    def enabled(self) -> bool:
        """Offline rows enter the updates (a ratio above 0)."""
        return self.ratio > 0


@RLAlgorithmConfig.register_subclass("pi_rl")
@dataclass
class PiRLAlgorithmConfig(RLAlgorithmConfig):
    """PPO (or GRPO) on chunk steps for `pi_rl` policies. CLI: `--algorithm.type=pi_rl`."""

    # How advantages are estimated: `gae` (PPO with a critic; the default, more stable in the paper's results) or
    # `grpo` (critic-free: episode success normalized within groups of episodes from the same initial state).
    advantage: AdvantageConfig = field(default_factory=lambda: GAEConfig())
    # Lower PPO clip: ratios below 1 - clip_low are clipped.
    clip_low: float = 0.2
    # Upper PPO clip: ratios above 1 + clip_high are clipped.
    clip_high: float = 0.2
    # Dual-clip bound c > 1 for negative advantages (reference 3.0); null disables it.
    dual_clip: float | None = None
    # Value clipping around the behaviour value (reference 0.2); null disables it.
    value_clip: float | None = 0.2
    # Huber delta of the value loss (reference 10).
    huber_delta: float = 10.0
    # Weight c_v of the value loss.
    value_coef: float = 1.0
    # Weight beta_H of the entropy bonus (Flow-Noise only: Flow-SDE's std does not depend on the weights).
    entropy_coef: float = 0.005
    # Learning rate of the trained backbone part (flow_mlp: all of it; VLAs: the action expert). VLA reference
    # values are 5e-6 to 1e-5.
    actor_lr: float = 1e-4
    # Learning rate of the value head (VLA reference 1e-4).
    critic_lr: float = 1e-3
    # Learning rate of the Flow-Noise head; null uses actor_lr (the reference trains it with the actor).
    noise_head_lr: float | None = None
    # AdamW betas (reference 0.9, 0.95).
    adam_betas: tuple[float, float] = (0.9, 0.95)
    # AdamW weight decay of every RL optimizer.
    weight_decay: float = 0.0
    # First updates during which only the value head trains (the actor waits for a critic that is not random;
    # advantages from a random critic first push the policy the wrong way). The policy version does not move.
    critic_warmup_updates: int = 0
    # Passes over each rollout (reference 1-5).
    update_epochs: int = 4
    # Rows (chunk steps) per minibatch.
    minibatch_size: int = 64
    # Gradient-norm clip bound (applied as `grad_clip_scope` says).
    max_grad_norm: float = 1.0
    # What max_grad_norm bounds: `per_group` (the default) clips the actor, noise_head and critic gradients each to
    # max_grad_norm, so that a large critic gradient (early, when values are far off) cannot shrink the actor's
    # step; the demo's measured results were obtained with it. `global` clips one norm over all trainable groups
    # together, the paper's reference setting.
    grad_clip_scope: str = "per_group"
    # Stop the epochs of an update early once the mean approx KL of an epoch exceeds this; null disables it.
    target_kl: float | None = None
    # Normalize advantages over the rows used (mean 0, std 1; std + 1e-5).
    normalize_advantages: bool = True
    # Chunk steps (rows) the learner collects per update.
    rollout_chunks: int = 256
    # Rows produced by a policy more than this many versions older than the current one are dropped.
    staleness: int = 2
    # Stale-but-kept rows are reweighted by pi_prox / pi_behaviour, capped at this value (decoupled PPO).
    behaviour_weight_cap: float = 5.0
    # Mask rows where a human intervened out of the PPO ratio (their actions are not the policy's).
    mask_interventions: bool = True
    # First-minibatch guard: max |log ratio| per Gaussian log-density term (per scored element and stochastic
    # denoise step) tolerated on rows from the current version before failing loudly. float32 re-scores bit for
    # bit (0); bf16 backbones round differently at different batch compositions, see the troubleshooting docs.
    ratio_check_tolerance: float = 1e-3
    # Online/offline mixing: offline datasets and intervention chunks as a supervised flow-matching term.
    offline: OfflineConfig = field(default_factory=OfflineConfig)
    # Filled by `from_policy_config` / the runtime; not a CLI field users normally set.
    policy_config: PreTrainedConfig | None = None

    def __post_init__(self) -> None:
        require(
            isinstance(self.advantage, AdvantageConfig),
            f"algorithm.advantage={self.advantage!r} must be one of {sorted(AdvantageConfig.get_known_choices())}",
        )
        require(0 < self.clip_low < 1, f"algorithm.clip_low={self.clip_low} must be in (0, 1)")
        require(self.clip_high > 0, f"algorithm.clip_high={self.clip_high} must be > 0")
        if self.dual_clip is not None:
            require(self.dual_clip > 1, f"algorithm.dual_clip={self.dual_clip} must be > 1 (or null)")
        if self.value_clip is not None:
            require(self.value_clip > 0, f"algorithm.value_clip={self.value_clip} must be > 0 (or null)")
        require(self.huber_delta > 0, f"algorithm.huber_delta={self.huber_delta} must be > 0")
        require(self.value_coef >= 0, f"algorithm.value_coef={self.value_coef} must be >= 0")
        require(self.entropy_coef >= 0, f"algorithm.entropy_coef={self.entropy_coef} must be >= 0")
        for name in ("actor_lr", "critic_lr"):
            require(getattr(self, name) > 0, f"algorithm.{name}={getattr(self, name)} must be > 0")
        if self.noise_head_lr is not None:
            require(self.noise_head_lr > 0, f"algorithm.noise_head_lr={self.noise_head_lr} must be > 0")
        require(
            self.critic_warmup_updates >= 0,
            f"algorithm.critic_warmup_updates={self.critic_warmup_updates} must be >= 0",
        )
        require(self.update_epochs >= 1, f"algorithm.update_epochs={self.update_epochs} must be >= 1")
        require(self.minibatch_size >= 1, f"algorithm.minibatch_size={self.minibatch_size} must be >= 1")
        require(self.max_grad_norm > 0, f"algorithm.max_grad_norm={self.max_grad_norm} must be > 0")
        require(
            self.grad_clip_scope in GRAD_CLIP_SCOPES,
            f"algorithm.grad_clip_scope={self.grad_clip_scope!r} must be one of {GRAD_CLIP_SCOPES}",
        )
        if self.target_kl is not None:
            require(self.target_kl > 0, f"algorithm.target_kl={self.target_kl} must be > 0 (or null)")
        require(self.rollout_chunks >= 1, f"algorithm.rollout_chunks={self.rollout_chunks} must be >= 1")
        require(self.staleness >= 0, f"algorithm.staleness={self.staleness} must be >= 0")
        require(
            self.behaviour_weight_cap >= 1,
            f"algorithm.behaviour_weight_cap={self.behaviour_weight_cap} must be >= 1",
        )
        require(
            self.ratio_check_tolerance > 0,
            f"algorithm.ratio_check_tolerance={self.ratio_check_tolerance} must be > 0",
        )

    @classmethod
    def from_policy_config(cls, policy_cfg: Any) -> PiRLAlgorithmConfig:
        if not isinstance(policy_cfg, PiRLConfig):
            raise TypeError(f"the pi_rl algorithm needs a pi_rl policy config, got {type(policy_cfg).__name__}")
        return cls(policy_config=policy_cfg)
