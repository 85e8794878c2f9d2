"""The demo's recipe: every default of `python -m lerobot_policy_pi_rl.demo`, sized for a 2-core CPU."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

VARIANTS = ("flow_sde", "flow_noise")
# Actor learning rate per variant. The chunk-level log-prob sums C x A elements: Flow-SDE scores one step with
# stds 0.14-0.43, and 1e-5 keeps approx_kl around 0.03-0.06 per update (1e-4 gave ~5 and collapsed the policy).
# Flow-Noise scores all K steps plus the prior with stds near 0.1, so the same weight change moves its log-prob
# several times more: at 1e-5 approx_kl was 0.3-0.5 with half the ratios clipped; 3e-6 scales it back.
ACTOR_LR = {"flow_sde": 1e-5, "flow_noise": 3e-6}
# PPO updates per variant (~4.3 s each on 2 cores). Flow-Noise's success kept rising to the end: 93 % and 86 % after
# 130 updates in two runs (training-episode success 0.85 and 0.80 over the last 10), 91-95 % in five runs after 180.
# Flow-SDE learns faster early but plateaus (training success ~0.85-0.89 from update 40 on; 84-94 % at 130, 88 %
# at 200).
RL_UPDATES = {"flow_sde": 130, "flow_noise": 180}


@dataclass
class DemoSettings:
    """The embedded default recipe, within 20 minutes on a 2-core CPU (measured 16.1 and 17.1 min for Flow-Noise)."""

    # Flow-Noise: measured 33 % -> 91-95 % in five runs here (180 updates); Flow-SDE 44 % -> 84 %, 88 % and 94 %
    # (130 updates). The policy's own default stays Flow-SDE (cheaper for VLAs).
    variant: str = "flow_noise"
    run_dir: Path = Path("outputs/demo")
    seed: int = 0
    # Demonstrations: few clean scripted episodes. Measured: 20 episodes (369 frames) and 800 SFT steps give a
    # partly competent policy (~30 % success); noisy demonstrations (action noise 0.5) gave 0 %.
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
    # Off by default: from one SFT checkpoint at the same budget, runs without them reached 82 % and 85 %, runs
    # with warm-up 3 and annealing 0.5 -> 0.2 over 60 updates 88 % and 63 %: run-to-run spread, no measured gain.
    critic_warmup_updates: int = 0
    noise_level: float = 0.5
    noise_level_final: float = 0.5
    noise_anneal_updates: int = 0
    # SAC baseline (off by default: it roughly doubles the wall time).
    with_sac: bool = False
    commands: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
