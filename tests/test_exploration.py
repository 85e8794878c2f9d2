"""The exploration variants (`lerobot_policy_pi_rl.exploration`): one interface, closed-form and seeded checks.

A toy action head stands in for a backbone: a nonlinear velocity field with per-token features.
Time convention: t = 1 noise, t = 0 action.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

from lerobot.policies.common.flow_matching import euler_integrate
from lerobot_policy_pi_rl.configuration_pi_rl import FlowNoiseConfig, FlowSDEConfig, VariantConfig
from lerobot_policy_pi_rl.exploration import (
    ChainRecord,
    Exploration,
    FlowNoise,
    FlowSDE,
    SampledChain,
    ScoredChain,
    make_exploration,
)
from lerobot_policy_pi_rl.flow import flow_sde_step, gaussian_log_prob, time_grid
from lerobot_policy_pi_rl.heads import NoiseHead

H, A, W = 5, 3, 6  # horizon, (model) action dim, token feature width

VARIANTS = {
    "sde_hybrid": FlowSDEConfig(stochastic_steps="hybrid"),
    "sde_all": FlowSDEConfig(stochastic_steps="all"),
    "noise_sum": FlowNoiseConfig(noise_head_hidden_dims=[16], log_prob_reduction="sum"),
    "noise_mean": FlowNoiseConfig(noise_head_hidden_dims=[16], log_prob_reduction="mean"),
}


class ToyActionHead(nn.Module):
    """v(x, t) nonlinear in x and t, and tokens h(x, t) `[B, H, W]` for the noise head; batch rows independent."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.mix = nn.Parameter(torch.randn(A, A, generator=g) / math.sqrt(A))
        self.features = nn.Parameter(torch.randn(A, W, generator=g))

    def forward(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        t = t.view(-1, 1, 1)
        v = torch.sin(3.0 * x @ self.mix) * (1.5 - t) + t * x - 0.7
        return v, torch.tanh(x @ self.features + t)


def build(name: str, *, num_steps: int = 4, seed: int = 0) -> Exploration:
    torch.manual_seed(seed)
    return make_exploration(VARIANTS[name], num_steps=num_steps, token_dim=W, action_dim=A)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def noise(batch: int, seed: int = 0) -> Tensor:
    return torch.randn(batch, H, A, generator=gen(1000 + seed))


def sample(exploration: Exploration, head: ToyActionHead, batch: int, *, seed: int = 0, level: float = 0.5):
    with torch.no_grad():
        return exploration.sample(head, noise(batch, seed), noise_level=level, generator=gen(seed))


# ---------------------------------------------------------------------------------------------------------------
# One interface, one factory
# ---------------------------------------------------------------------------------------------------------------


def test_the_factory_builds_one_object_per_variant_behind_one_interface() -> None:
    sde, noisy = build("sde_hybrid"), build("noise_sum")
    assert type(sde) is FlowSDE and type(noisy) is FlowNoise
    assert isinstance(sde, Exploration) and isinstance(noisy, Exploration)
    for method in ("sample", "score", "std_statistics", "noise_level_at"):
        assert inspect.signature(getattr(FlowSDE, method)) == inspect.signature(getattr(FlowNoise, method)), method
    # what the algorithm asks of a variant: the entropy bonus has a gradient only where the std is learned
    assert not sde.learns_std and sde.noise_head is None
    assert noisy.learns_std and isinstance(noisy.noise_head, NoiseHead)

    @dataclass
    class Unregistered(VariantConfig):
        pass

    with pytest.raises(TypeError, match=r"Unregistered.*known: \['flow_noise', 'flow_sde'\]"):
        make_exploration(Unregistered(), num_steps=4, token_dim=W, action_dim=A)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_the_same_calls_drive_every_variant(name: str) -> None:
    exploration, head = build(name), ToyActionHead()
    k, b = exploration.num_steps, 6

    sampled = sample(exploration, head, b, level=0.3)

    assert isinstance(sampled, SampledChain) and isinstance(sampled.record, ChainRecord)
    record = sampled.record
    assert record.chain.shape == (b, k + 1, H, A) and record.chain.dtype == torch.float32
    assert torch.equal(record.chain[:, 0], noise(b))
    assert record.stochastic.shape == (b, k) and record.stochastic.dtype == torch.bool
    assert sampled.element_log_prob.shape == (b, H, A) and sampled.element_log_prob.dtype == torch.float32
    # the recorded noise level: Flow-SDE's a, none (0) for Flow-Noise
    expected_level = 0.3 if type(exploration) is FlowSDE else 0.0
    assert torch.equal(record.noise_level, torch.full((b,), expected_level))
    assert (record.stochastic.sum(1) == 1).all() if name == "sde_hybrid" else record.stochastic.all()

    scored = exploration.score(head, record)
    assert isinstance(scored, ScoredChain)
    assert scored.element_log_prob.shape == (b, H, A) and scored.element_log_prob.requires_grad
    scored_steps = 1 if name == "sde_hybrid" else k
    assert scored.std.shape == (b, scored_steps, H, A) and (scored.std > 0).all()
    stats = exploration.std_statistics(scored.std, n_action_steps=2, action_dim=A - 1)
    assert stats.entropy.shape == stats.std_mean.shape == (b,)
    assert stats.entropy.requires_grad == exploration.learns_std and not stats.std_mean.requires_grad


# ---------------------------------------------------------------------------------------------------------------
# Closed forms
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_steps", [1, 4, 10])
@pytest.mark.parametrize("name", ["sde_hybrid", "sde_all"])
def test_flow_sde_at_zero_noise_level_is_exactly_lerobot_euler(name: str, num_steps: int) -> None:
    exploration, head = build(name, num_steps=num_steps), ToyActionHead()
    sampled = sample(exploration, head, 7, level=0.0)
    with torch.no_grad():
        euler = euler_integrate(lambda x, t: head(x, t)[0], noise(7), num_steps)
    assert torch.equal(sampled.record.chain[:, -1], euler)
    assert (sampled.element_log_prob == 0).all()
    scored = exploration.score(head, sampled.record)
    assert (scored.std == 0).all() and (scored.element_log_prob == 0).all()


@pytest.mark.parametrize("num_steps", [1, 4, 10])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_scoring_a_fresh_chain_gives_its_sampled_log_prob_bit_for_bit(name: str, num_steps: int) -> None:
    exploration, head = build(name, num_steps=num_steps), ToyActionHead()
    for batch, seed in ((1, 0), (4, 1), (33, 2)):
        sampled = sample(exploration, head, batch, seed=seed)
        scored = exploration.score(head, sampled.record)
        assert torch.equal(scored.element_log_prob.detach(), sampled.element_log_prob), batch
        assert (sampled.element_log_prob != 0).all()


@pytest.mark.parametrize("name", ["sde_all", "noise_sum"])
def test_a_recorded_mask_decides_which_steps_are_scored(name: str) -> None:
    """A transition the record marks deterministic contributes exactly 0 and has std 0, row by row; the others
    score as before (so those rows' element log-prob drops by exactly that step's term)."""
    exploration, head = build(name), ToyActionHead()
    record = sample(exploration, head, 6).record
    full = exploration.score(head, record)
    off = torch.tensor([True, False, True, False, False, True])  # rows whose step 1 is recorded as an ODE step
    partial_mask = record.stochastic.clone()
    partial_mask[off, 1] = False
    partial = exploration.score(head, ChainRecord(record.chain, partial_mask, record.noise_level))
    assert (partial.std[off, 1] == 0).all() and torch.equal(partial.std[~off], full.std[~off])
    assert torch.equal(partial.std[:, [0, 2, 3]], full.std[:, [0, 2, 3]])
    t1 = time_grid(4)[1].expand(6)
    with torch.no_grad():
        v, hidden = head(record.chain[:, 1], t1)
        if name == "sde_all":
            mean, std = flow_sde_step(record.chain[:, 1], v, t1.view(-1, 1, 1), dt=0.25, noise_level=0.5)
        else:
            mean, std = record.chain[:, 1] - 0.25 * v, exploration.noise_head(hidden)
        step_1 = gaussian_log_prob(record.chain[:, 2], mean, std) * off.view(-1, 1, 1)
    assert (step_1[off] != 0).all()
    torch.testing.assert_close(partial.element_log_prob, full.element_log_prob - step_1)


@pytest.mark.parametrize("bounds", [(0.08, 0.16), (0.3, 0.31), (1e-3, 2.0)])
def test_flow_noise_std_stays_within_its_bounds_and_its_entropy_is_gaussian(bounds) -> None:
    lo, hi = bounds
    config = FlowNoiseConfig(min_std=lo, max_std=hi, noise_head_hidden_dims=[16])
    exploration = make_exploration(config, num_steps=4, token_dim=W, action_dim=A)
    head = ToyActionHead()
    for scale in (1.0, 1e4, -1e4):  # ordinary and saturating features
        with torch.no_grad():
            exploration.noise_head.mlp[-1].weight.mul_(scale)
        record = sample(exploration, head, 8).record
        scored = exploration.score(head, record)
        assert (scored.std >= lo).all() and (scored.std <= hi).all()
        stats = exploration.std_statistics(scored.std, n_action_steps=H, action_dim=A)
        torch.testing.assert_close(stats.std_mean, scored.std.mean(dim=(1, 2, 3)))
        entropy = 0.5 * torch.log(2 * math.pi * math.e * scored.std.square()).mean(dim=(1, 2, 3))
        torch.testing.assert_close(stats.entropy, entropy)


def test_std_statistics_by_hand() -> None:
    """Mean over executed elements (first C steps, first A_env dims) of the stochastic (std > 0) transitions."""
    std = torch.zeros(2, 2, 3, 3)  # [B, S, H, A]
    std[0, 0, 0, 0], std[0, 1, 1, 1] = 0.5, 2.0
    std[0, 0, 2, :] = 9.0  # a horizon step that is not executed (C = 2)
    std[0, 1, :, 2] = 9.0  # a padded action dim (A_env = 2)
    stats = build("sde_all").std_statistics(std, n_action_steps=2, action_dim=2)
    entropy = lambda s: 0.5 * math.log(2 * math.pi * math.e) + math.log(s)  # noqa: E731
    torch.testing.assert_close(stats.std_mean, torch.tensor([1.25, 0.0]))
    torch.testing.assert_close(stats.entropy, torch.tensor([(entropy(0.5) + entropy(2.0)) / 2, 0.0]))


# ---------------------------------------------------------------------------------------------------------------
# Seeded statistics
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sde_hybrid", "sde_all", "noise_sum"])
def test_sampled_transitions_are_gaussian_with_the_scored_mean_and_std(name: str) -> None:
    """z = (x_{k+1} - mean_k) / std_k over every stochastic element is standard normal (5 standard errors)."""
    exploration, head = build(name), ToyActionHead()
    record = sample(exploration, head, 2000, seed=5).record
    times, zs = time_grid(4), []
    with torch.no_grad():
        for k in range(4):
            rows = record.stochastic[:, k]
            x, t = record.chain[rows, k], times[k].expand(int(rows.sum()))
            v, hidden = head(x, t)
            if type(exploration) is FlowSDE:
                mean, std = flow_sde_step(x, v, t.view(-1, 1, 1), dt=0.25, noise_level=0.5)
            else:
                mean, std = x - 0.25 * v, exploration.noise_head(hidden)
            zs.append(((record.chain[rows, k + 1] - mean) / std).flatten())
    z = torch.cat(zs)
    n = z.numel()
    assert abs(float(z.mean())) < 5 / math.sqrt(n)
    assert abs(float(z.std()) - 1) < 5 / math.sqrt(2 * (n - 1))
    assert abs(float((z.abs() < 1).float().mean()) - 0.6827) < 5 * math.sqrt(0.6827 * 0.3173 / n)


# ---------------------------------------------------------------------------------------------------------------
# The per-update schedule, and what a variant checks of K
# ---------------------------------------------------------------------------------------------------------------


def test_noise_level_annealing_is_linear_and_clamped() -> None:
    sde = make_exploration(
        FlowSDEConfig(noise_level=0.5, noise_level_final=0.1, noise_anneal_updates=4), num_steps=4, token_dim=W,
        action_dim=A,
    )
    values = [sde.noise_level_at(u) for u in (-3, 0, 1, 2, 3, 4, 5, 100)]
    assert values == pytest.approx([0.5, 0.5, 0.4, 0.3, 0.2, 0.1, 0.1, 0.1])


def test_noise_level_is_constant_without_annealing() -> None:
    def level_at(update: int, **kwargs) -> float:
        return FlowSDE(FlowSDEConfig(**kwargs), num_steps=4).noise_level_at(update)

    assert level_at(50, noise_level=0.3) == 0.3
    assert level_at(50, noise_level=0.3, noise_level_final=0.0) == 0.3  # 0 updates: off
    assert level_at(50, noise_level=0.3, noise_anneal_updates=10) == 0.3  # no final: off
    assert level_at(1, noise_level=0.2, noise_level_final=0.6, noise_anneal_updates=2) == pytest.approx(0.4)
    assert all(build("noise_sum").noise_level_at(u) == 0.0 for u in (0, 1, 100))  # Flow-Noise has no level


def test_a_variant_checks_the_number_of_denoise_steps_itself() -> None:
    no_last = FlowSDEConfig(exclude_last_step=True)
    with pytest.raises(ValueError, match=r"exclude_last_step=true needs num_denoise_steps >= 2, got 1"):
        no_last.check_num_denoise_steps(1)
    with pytest.raises(ValueError, match=r"exclude_last_step"):
        make_exploration(no_last, num_steps=1, token_dim=W, action_dim=A)
    no_last.check_num_denoise_steps(2)
    FlowSDEConfig().check_num_denoise_steps(1)
    FlowNoiseConfig().check_num_denoise_steps(1)
    exploration = make_exploration(no_last, num_steps=3, token_dim=W, action_dim=A)
    record = sample(exploration, ToyActionHead(), 600).record
    assert not record.stochastic[:, -1].any() and record.stochastic[:, :-1].any(0).all()
