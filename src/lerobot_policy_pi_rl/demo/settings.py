"""The demo's recipe: every default of `python -m lerobot_policy_pi_rl.demo`, sized for a 2-core CPU.

The runs behind these numbers are in docs/measurements.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

VARIANTS = ("flow_sde", "flow_noise")
ADVANTAGES = ("gae", "grpo")
# Actor learning rate per variant. The chunk-level log-prob sums C x A elements; Flow-Noise scores all K steps plus
# the prior (Flow-SDE one step), so the same weight change moves its log-prob several times more: a smaller step
# keeps approx_kl in the same range for both.
ACTOR_LR = {"flow_sde": 1e-5, "flow_noise": 3e-6}
# PPO updates per variant: Flow-Noise keeps improving for longer, Flow-SDE plateaus earlier.
RL_UPDATES = {"flow_sde": 130, "flow_noise": 180}


@dataclass
class DemoSettings:
    """The embedded default recipe: within 20 minutes on a 2-core CPU."""

    # Flow-Noise by default: it reached 90 % more consistently here. The policy's own default stays Flow-SDE
    # (cheaper for VLAs: one stochastic step per chain).
    variant: str = "flow_noise"
    run_dir: Path = Path("outputs/demo")
    seed: int = 0
    # Demonstrations: few clean scripted episodes, so that SFT gives a partly competent policy RL can improve
    # (noisy ones did not teach the task).
    demo_episodes: int = 20
    demo_action_noise: float = 0.0
    # SFT (lerobot-train).
    sft_steps: int = 800
    sft_batch_size: int = 64
    # Evaluation protocol (shared by SFT, RL and SAC).
    eval_episodes: int = 100
    eval_seed: int = 100_000
    # Evaluation processes (same episodes and seeds as one process; see `scripts/evaluate.py --workers`).
    eval_workers: int = 2
    # PI-RL. The demo spends what the 20-minute budget leaves on updates. None: the variant's default
    # (`RL_UPDATES`).
    rl_updates: int | None = None
    rollout_chunks: int = 256
    n_envs: int = 4
    # Two actor processes keep both cores busy while the learner waits for a rollout.
    num_actors: int = 2
    # None: the variant's default (`ACTOR_LR`).
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
    # SAC baseline (off by default: at PI-RL's env-step budget it runs several times longer than the whole demo).
    with_sac: bool = False
    commands: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
