"""A one-step continuous bandit with a known optimum, for PI-RL learning tests and benchmarks.

Observation o ~ U[-1, 1]^2 (`observation.state`); the optimal action chunk repeats a*(o) = 0.5 * o in every
step; reward = -mean over executed elements of (a - a*)^2 (maximum 0). Every decision ends the episode
(terminated), so GAE reduces to A = r - V. Actions live directly in the policy's normalized space.
"""

from __future__ import annotations

import torch

from lerobot.configs.types import FeatureType, PolicyFeature
from lerobot_policy_pi_rl.configuration_pi_rl import FlowMLPBackboneConfig, PiRLConfig, ValueHeadConfig
from lerobot_policy_pi_rl.modeling_pi_rl import PiRLPolicy
from lerobot_policy_pi_rl.rl.rollout import Rollout

OBS_DIM, ACTION_DIM, CHUNK, EXECUTED = 2, 2, 2, 2


def bandit_config(variant, **overrides) -> PiRLConfig:
    kwargs = dict(
        device="cpu",
        variant=variant,
        backbone=FlowMLPBackboneConfig(hidden_dim=64, num_layers=2, token_dim=16, time_embed_dim=16),
        value_head=ValueHeadConfig(hidden_dims=[64]),
        num_denoise_steps=4,
        chunk_size=CHUNK,
        n_action_steps=EXECUTED,
        input_features={"observation.state": PolicyFeature(FeatureType.STATE, (OBS_DIM,))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (ACTION_DIM,))},
    )
    kwargs.update(overrides)
    return PiRLConfig(**kwargs)


def optimal_action(obs: torch.Tensor) -> torch.Tensor:
    return 0.5 * obs


def reward(obs: torch.Tensor, chunk: torch.Tensor) -> torch.Tensor:
    """`obs [B, 2]`, `chunk [B, H, 2]` -> `[B]`: -mean squared distance of the executed steps to a*(o)."""
    executed = chunk[:, :EXECUTED]
    return -(executed - optimal_action(obs)[:, None, :]).square().mean(dim=(1, 2))


def pretrain_mediocre(policy: PiRLPolicy, *, bias: float, spread: float, steps: int, seed: int) -> None:
    """Supervised flow matching on demonstrations a*(o) + bias + N(0, spread^2): competent but off-target."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(policy.backbone.parameters(), lr=2e-3)
    policy.train()
    for _ in range(steps):
        obs = torch.rand(256, OBS_DIM, generator=gen) * 2 - 1
        demo = optimal_action(obs)[:, None, :] + bias + spread * torch.randn(256, CHUNK, ACTION_DIM, generator=gen)
        loss, _ = policy.forward({"observation.state": obs, "action": demo})
        opt.zero_grad()
        loss.backward()
        opt.step()


def collect_rollout(policy: PiRLPolicy, *, n: int, version: int, generator: torch.Generator) -> Rollout:
    obs = torch.rand(n, OBS_DIM, generator=generator) * 2 - 1
    return collect_rollout_for(policy, obs, version=version, generator=generator)


def collect_rollout_for(policy: PiRLPolicy, obs: torch.Tensor, *, version: int, generator: torch.Generator) -> Rollout:
    """One terminated one-decision episode per row of `obs [N, 2]`."""
    n = obs.shape[0]
    batch = {"observation.state": obs}
    sample = policy.sample_chain(batch, generator=generator)
    ones = torch.ones(n, dtype=torch.bool)
    return Rollout(
        observations=batch,
        next_observations=batch,
        chain=sample.record.chain,
        stochastic=sample.record.stochastic,
        noise_level=sample.record.noise_level,
        log_prob=sample.log_prob,
        value=sample.value,
        reward=reward(obs, sample.action_chunk),
        terminated=ones,
        truncated=~ones,
        policy_version=torch.full((n,), version, dtype=torch.long),
        stream_id=torch.arange(n),
        intervention=~ones,
        success=~ones,
        group_id=torch.full((n,), -1, dtype=torch.long),
    )


@torch.no_grad()
def expected_reward(policy: PiRLPolicy, *, n: int = 1024, seed: int = 12345, stochastic: bool = False) -> float:
    """Mean reward on a fixed set of observations: deterministic ODE actions, or stochastic chains."""
    gen = torch.Generator().manual_seed(seed)
    obs = torch.rand(n, OBS_DIM, generator=gen) * 2 - 1
    batch = {"observation.state": obs}
    if stochastic:
        chunk = policy.sample_chain(batch, generator=gen).action_chunk
    else:
        torch.manual_seed(seed)
        chunk = policy.predict_action_chunk(batch)
    return float(reward(obs, chunk).mean())


def collect_group_rollout(
    policy: PiRLPolicy, *, groups: int, group_size: int, version: int, generator: torch.Generator,
    success_above: float,
) -> Rollout:
    """GRPO-style: `groups` observations, each decided `group_size` times (the same initial state); an
    episode (one decision) succeeds when its reward exceeds `success_above`."""
    obs = (torch.rand(groups, OBS_DIM, generator=generator) * 2 - 1).repeat_interleave(group_size, dim=0)
    rollout = collect_rollout_for(policy, obs, version=version, generator=generator)
    rollout.group_id = torch.arange(groups).repeat_interleave(group_size)
    rollout.success = rollout.reward > success_above
    return rollout
