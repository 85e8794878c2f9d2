"""The demo's recipe: every default of `python -m lerobot_policy_pi_rl.demo`, sized for a 2-core CPU.

Two backbones share the pipeline and the evaluation protocol; `BACKBONE_RECIPES` holds what differs. The runs behind
these numbers are in docs/measurements.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

VARIANTS = ("flow_sde", "flow_noise")
ADVANTAGES = ("gae", "grpo")


@dataclass(frozen=True)
class BackboneRecipe:
    """What the demo does differently per backbone: the policy it trains, what the env shows it, how long."""

    # `lerobot-train` flags that choose and size the policy (SFT from scratch).
    sft_policy_args: tuple[str, ...]
    # Extra `lerobot-pi-rl-train` flags on top of the SFT checkpoint's config.
    rl_policy_args: tuple[str, ...]
    # More of them for one exploration variant only (after `--policy.variant.type`).
    rl_variant_args: dict[str, tuple[str, ...]]
    # PickCube observation options (`--env.<name>` for PI-RL, `--<name>` for recording and evaluation).
    env_options: dict[str, object]
    sft_steps: int
    sft_batch_size: int
    # Actor learning rate per variant. The chunk-level log-prob sums C x A elements; Flow-Noise scores all K steps
    # plus the prior (Flow-SDE one step), so the same weight change moves its log-prob several times more: a
    # smaller step keeps approx_kl in the same range for both.
    actor_lr: dict[str, float]
    # PPO updates per variant.
    rl_updates: dict[str, int]
    # The variant `--variant` defaults to.
    default_variant: str


BACKBONE_RECIPES: dict[str, BackboneRecipe] = {
    # This package's small flow policy on the state (arm + cube position): the 20-minute default.
    "flow_mlp": BackboneRecipe(
        sft_policy_args=("--policy.type=pi_rl", "--policy.backbone.type=flow_mlp"),
        rl_policy_args=(),
        rl_variant_args={},
        env_options={},
        sft_steps=800,
        sft_batch_size=64,
        actor_lr={"flow_sde": 1e-5, "flow_noise": 3e-6},
        # Flow-Noise keeps improving for longer, Flow-SDE plateaus earlier.
        rl_updates={"flow_sde": 130, "flow_noise": 180},
        # Flow-Noise reached 90 % more consistently here. The policy's own default stays Flow-SDE (cheaper for
        # VLAs: one stochastic step per chain).
        default_variant="flow_noise",
    ),
    # LeRobot's SmolVLA at debug size (random weights, every weight trained by SFT; PI-RL trains the action expert
    # with the VLM frozen): instruction, a camera image and the state. The camera is `blank` (an all-zero frame,
    # nothing rendered) and the cube position rides in the state: software rendering of a real camera costs 15-25 ms
    # per step here, several times the physics (docs/measurements.md), which a 2-core run cannot afford.
    "smolvla": BackboneRecipe(
        sft_policy_args=(
            "--policy.type=pi_rl",
            "--policy.backbone.type=smolvla",
            "--policy.backbone.debug_size=tiny",
            "--policy.backbone.freeze_vlm=false",
        ),
        rl_policy_args=("--policy.backbone.freeze_vlm=true",),
        # Flow-Noise's std bounds (the policy's 0.08-0.16; the noise head starts near 0.11 and stays there) are in
        # normalized action units. flow_mlp normalizes actions to [-1, 1] (MIN_MAX); SmolVLA's processors use
        # MEAN_STD, and PickCube's action std (0.44-0.68) is about half its half-range (0.8-1.0), so the same
        # bounds explored with half the noise. Twice the bounds restore flow_mlp's noise in env units: training
        # success passed the 0.8 it had levelled off at (docs/measurements.md).
        rl_variant_args={"flow_noise": ("--policy.variant.min_std=0.16", "--policy.variant.max_std=0.32")},
        env_options={"state_includes_cube": True, "camera": "blank", "camera_size": 32},
        # SFT success after 100/200/300/400/800 steps: 3/14/19/50/91 % (the debug SmolVLA fits the 20 demos fast).
        sft_steps=400,
        sft_batch_size=64,
        # At flow_mlp's 3e-6, Flow-Noise's approx_kl stayed near 0.005 (a tenth of flow_mlp's), the noise head did
        # not move and training success levelled off near 0.75 (86 % after 180 updates): a larger step.
        actor_lr={"flow_sde": 1e-5, "flow_noise": 1e-5},
        rl_updates={"flow_sde": 200, "flow_noise": 200},
        # As for flow_mlp; the env, not the model, is most of the cost here (see the report's time split).
        default_variant="flow_noise",
    ),
}
BACKBONES = tuple(BACKBONE_RECIPES)


def env_flags(options: dict[str, object], *, prefix: str) -> list[str]:
    """PickCube options as CLI flags: `prefix="--env."` for `lerobot-pi-rl-train` (`--env.camera=blank`),
    `prefix="--"` for the recording and evaluation scripts (`--camera blank`, a bare `--state_includes_cube`)."""
    flags: list[str] = []
    for name, value in options.items():
        if prefix == "--env.":
            flags.append(f"--env.{name}={str(value).lower() if isinstance(value, bool) else value}")
        elif isinstance(value, bool):
            if not value:
                raise ValueError(f"env option {name}=False has no flag in the recording/evaluation scripts "
                                 "(their boolean flags switch an option on)")
            flags.append(f"--{name}")
        else:
            flags += [f"--{name}", str(value)]
    return flags


@dataclass
class DemoSettings:
    """The embedded default recipe: within 20 minutes on a 2-core CPU."""

    # `flow_mlp` (the 20-minute default) or `smolvla` (LeRobot's SmolVLA at debug size); see `BACKBONE_RECIPES`.
    backbone: str = "flow_mlp"
    # None: the backbone recipe's default variant.
    variant: str | None = None
    run_dir: Path = Path("outputs/demo")
    seed: int = 0
    # Demonstrations: few clean scripted episodes, so that SFT gives a partly competent policy RL can improve
    # (noisy ones did not teach the task).
    demo_episodes: int = 20
    demo_action_noise: float = 0.0
    # SFT (lerobot-train). None: the backbone recipe's.
    sft_steps: int | None = None
    sft_batch_size: int | None = None
    # Evaluation protocol (shared by SFT, RL and SAC).
    eval_episodes: int = 100
    eval_seed: int = 100_000
    # Evaluation processes (same episodes and seeds as one process; see `scripts/evaluate.py --workers`).
    eval_workers: int = 2
    # PI-RL. None: the backbone recipe's number of updates for the variant.
    rl_updates: int | None = None
    rollout_chunks: int = 256
    n_envs: int = 4
    # Two actor processes keep both cores busy while the learner waits for a rollout.
    num_actors: int = 2
    # None: the backbone recipe's for the variant.
    actor_lr: float | None = None
    critic_lr: float = 1e-3
    update_epochs: int = 4
    minibatch_size: int = 64
    # PPO with GAE (a critic) by default; `grpo` scores whole groups of `grpo_group_size` episodes that start from
    # the same state (each actor's n_envs must be a multiple of it).
    advantage: str = "gae"
    grpo_group_size: int = 4
    # Critic warm-up and noise annealing are off: at this budget they showed no gain beyond run-to-run spread.
    critic_warmup_updates: int = 0
    noise_level: float = 0.5
    noise_level_final: float = 0.5
    noise_anneal_updates: int = 0
    # Online/offline mixing: the share of each PPO minibatch's rows drawn from the demonstrations SFT trained on
    # (their flow-matching loss, weighted by `offline_loss_weight`, joins the PPO losses). 0: plain PPO.
    offline_ratio: float = 0.0
    offline_loss_weight: float = 1.0
    # The learner's loopback port; None: LeRobot's default. Runs side by side on one machine need their own.
    learner_port: int | None = None
    # SAC baseline (off by default: at PI-RL's env-step budget it runs several times longer than the whole demo).
    with_sac: bool = False
    commands: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONE_RECIPES:
            raise ValueError(f"backbone={self.backbone!r} is not valid; allowed: {', '.join(BACKBONES)}")
        recipe = BACKBONE_RECIPES[self.backbone]
        self.variant = self.variant or recipe.default_variant
        if self.variant not in VARIANTS:
            raise ValueError(f"variant={self.variant!r} is not valid; allowed: {', '.join(VARIANTS)}")
        self.sft_steps = self.sft_steps or recipe.sft_steps
        self.sft_batch_size = self.sft_batch_size or recipe.sft_batch_size
        self.rl_updates = self.rl_updates or recipe.rl_updates[self.variant]
        self.actor_lr = self.actor_lr or recipe.actor_lr[self.variant]
        if not 0 <= self.offline_ratio < 1:
            raise ValueError(f"offline_ratio={self.offline_ratio} must be in [0, 1) (0: no mixing)")
        if self.offline_loss_weight < 0:
            raise ValueError(f"offline_loss_weight={self.offline_loss_weight} must be >= 0")

    @property
    def recipe(self) -> BackboneRecipe:
        return BACKBONE_RECIPES[self.backbone]
