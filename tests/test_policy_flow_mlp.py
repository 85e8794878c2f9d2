"""The policy verbs of `PiRLPolicy` on the `flow_mlp` backbone, for every variant and log-prob level."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file, save_file

from lerobot.policies.common.flow_matching import euler_integrate
from lerobot.policies.factory import make_pre_post_processors
from lerobot.utils.constants import ACTION, OBS_ENV_STATE, OBS_STATE

from lerobot_policy_pi_rl.configuration_pi_rl import FlowNoiseConfig, PiRLConfig
from lerobot_policy_pi_rl.exploration import ChainRecord
from lerobot_policy_pi_rl.modeling_pi_rl import PiRLPolicy

from conftest import ACTION_DIM, ENV_DIM, STATE_DIM, make_dataset_stats, make_flow_mlp_config, make_obs_batch

pytestmark = pytest.mark.usefixtures("torch_single_thread")

# (variant, variant kwargs), one per exploration mode the policy offers.
VARIANTS = {
    "sde_hybrid": ("flow_sde", {"stochastic_steps": "hybrid"}),
    "sde_all": ("flow_sde", {"stochastic_steps": "all"}),
    "sde_exclude_last": ("flow_sde", {"stochastic_steps": "hybrid", "exclude_last_step": True}),
    "noise_sum": ("flow_noise", {"log_prob_reduction": "sum"}),
    "noise_mean": ("flow_noise", {"log_prob_reduction": "mean"}),
}
LEVELS = ("chunk", "action", "element")


def build_policy(name: str = "sde_hybrid", *, seed: int = 0, **overrides) -> PiRLPolicy:
    variant, variant_kwargs = VARIANTS[name]
    torch.manual_seed(seed)
    return PiRLPolicy(make_flow_mlp_config(variant, variant_kwargs=variant_kwargs, **overrides))


def sample_fields(sample) -> dict[str, torch.Tensor]:
    """Every tensor a `ChainSample` carries, by name."""
    record = sample.record
    return {"chain": record.chain, "stochastic": record.stochastic, "noise_level": record.noise_level,
            "log_prob": sample.log_prob, "value": sample.value, "action_chunk": sample.action_chunk}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def expected_log_prob_shape(cfg: PiRLConfig, batch: int) -> tuple[int, ...]:
    c, a = cfg.n_action_steps, cfg.action_dim
    return {"chunk": (batch,), "action": (batch, c), "element": (batch, c, a)}[cfg.log_prob_level]


# ---------------------------------------------------------------------------------------------------------------
# Shapes and the sample/evaluate contract
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("name", list(VARIANTS))
def test_sample_chain_shapes(name: str, level: str) -> None:
    policy = build_policy(name, log_prob_level=level)
    cfg = policy.config
    batch = make_obs_batch(5)
    k, h, a = cfg.num_denoise_steps, cfg.chunk_size, cfg.action_dim

    sample = policy.sample_chain(batch, generator=gen(1))

    record = sample.record
    assert record.chain.shape == (5, k + 1, h, a)
    assert record.chain.dtype == torch.float32
    assert torch.equal(sample.action_chunk, record.chain[:, -1, :, :a])
    assert sample.log_prob.shape == expected_log_prob_shape(cfg, 5)
    assert sample.log_prob.dtype == torch.float32
    assert torch.isfinite(sample.log_prob).all()
    assert sample.value.shape == (5,)
    assert record.stochastic.shape == (5, k) and record.stochastic.dtype == torch.bool
    assert record.noise_level.shape == (5,)
    assert not record.chain.requires_grad and not sample.log_prob.requires_grad
    if cfg.variant.type == "flow_sde" and cfg.variant.stochastic_steps == "hybrid":
        assert (record.stochastic.sum(dim=1) == 1).all()
        if cfg.variant.exclude_last_step:
            assert not record.stochastic[:, -1].any()
        assert torch.allclose(record.noise_level, torch.full((5,), cfg.variant.noise_level))
    else:
        assert record.stochastic.all()
    if cfg.variant.type == "flow_noise":
        assert (record.noise_level == 0).all()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_log_prob_levels_are_reductions_of_each_other(name: str) -> None:
    """chunk = sum over executed steps of action = sum over dims of element, on the same chain."""
    policy = build_policy(name, log_prob_level="element")
    batch = make_obs_batch(4)
    sample = policy.sample_chain(batch, generator=gen(2))
    per_level = {}
    for level in LEVELS:
        policy.config.log_prob_level = level
        per_level[level] = policy.evaluate_chain(batch, sample.record).log_prob.detach()
    assert torch.allclose(per_level["action"], per_level["element"].sum(-1), atol=1e-5)
    assert torch.allclose(per_level["chunk"], per_level["element"].sum((1, 2)), atol=1e-5)
    # Only executed elements count: the log-prob over executed elements differs from the whole-chunk one.
    assert per_level["element"].shape[1] == policy.config.n_action_steps < policy.config.chunk_size


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("name", list(VARIANTS))
def test_evaluate_chain_reproduces_behaviour_log_prob(name: str, level: str) -> None:
    policy = build_policy(name, log_prob_level=level)
    batch = make_obs_batch(6)
    sample = policy.sample_chain(batch, generator=gen(3))

    evaluation = policy.evaluate_chain(batch, sample.record)

    assert evaluation.log_prob.shape == sample.log_prob.shape
    assert evaluation.log_prob.dtype == torch.float32
    assert evaluation.log_prob.requires_grad
    ratio = torch.exp(evaluation.log_prob - sample.log_prob)
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-5), ratio
    assert torch.allclose(evaluation.value, sample.value, atol=1e-6)
    assert evaluation.entropy.shape == (6,) and evaluation.std_mean.shape == (6,)
    assert (evaluation.std_mean > 0).all()
    if policy.config.variant.type == "flow_noise":
        lo, hi = policy.config.variant.min_std, policy.config.variant.max_std
        assert ((evaluation.std_mean >= lo - 1e-6) & (evaluation.std_mean <= hi + 1e-6)).all()


@pytest.mark.parametrize(
    ("name", "num_steps"),
    [(name, k) for name in VARIANTS for k in (1, 4, 10) if not (name == "sde_exclude_last" and k == 1)],
)
def test_evaluate_chain_reproduces_behaviour_log_prob_bit_for_bit(name: str, num_steps: int) -> None:
    """|delta log-prob| = 0 (not merely close) when the learner re-scores a fresh chain with the same weights and
    batch: the sampler and the learner round the very same arithmetic."""
    for level in LEVELS:
        policy = build_policy(name, log_prob_level=level, num_denoise_steps=num_steps)
        for bsize, seed in ((1, 0), (4, 1), (8, 2), (33, 3)):
            batch = make_obs_batch(bsize, seed=seed)
            sample = policy.sample_chain(batch, generator=gen(seed))
            evaluation = policy.evaluate_chain(batch, sample.record)
            assert torch.equal(evaluation.log_prob.detach(), sample.log_prob), (level, bsize)
            assert (sample.log_prob != 0).all()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_changing_weights_changes_log_prob(name: str) -> None:
    policy = build_policy(name)
    batch = make_obs_batch(6)
    sample = policy.sample_chain(batch, generator=gen(4))
    before = policy.evaluate_chain(batch, sample.record).log_prob.detach()

    with torch.no_grad():
        policy.backbone.action_out_proj.bias.add_(0.05)
    after = policy.evaluate_chain(batch, sample.record).log_prob.detach()

    assert (after - before).abs().min() > 1e-4


def test_changing_noise_head_changes_flow_noise_log_prob() -> None:
    policy = build_policy("noise_sum")
    batch = make_obs_batch(6)
    sample = policy.sample_chain(batch, generator=gen(5))
    before = policy.evaluate_chain(batch, sample.record).log_prob.detach()
    with torch.no_grad():
        policy.noise_head.mlp[-1].bias.add_(0.3)
    after = policy.evaluate_chain(batch, sample.record).log_prob.detach()
    assert (after - before).abs().min() > 1e-4


def test_evaluate_chain_uses_the_recorded_noise_level() -> None:
    """Annealing between sampling and training must not change the behaviour log-prob of old samples."""
    policy = build_policy("sde_all")
    batch = make_obs_batch(4)
    sample = policy.sample_chain(batch, generator=gen(6))
    policy.set_noise_level(0.2)
    recorded = policy.evaluate_chain(batch, sample.record).log_prob
    at_current_level = ChainRecord(sample.record.chain, sample.record.stochastic, torch.full((4,), 0.2))
    current = policy.evaluate_chain(batch, at_current_level).log_prob
    assert torch.allclose(recorded, sample.log_prob, atol=1e-4)
    assert not torch.allclose(current, sample.log_prob, atol=1e-2)


def test_evaluate_chain_rejects_bad_shapes_and_indices() -> None:
    policy = build_policy("sde_hybrid")
    batch = make_obs_batch(3)
    sample = policy.sample_chain(batch, generator=gen(7))
    record = sample.record
    with pytest.raises(ValueError, match="chain has shape"):
        policy.evaluate_chain(batch, ChainRecord(record.chain[:, :, :-1], record.stochastic, record.noise_level))
    with pytest.raises(ValueError, match="stochastic must be"):
        ChainRecord(record.chain, record.stochastic[:, :-1], record.noise_level)
    two_steps = record.stochastic.clone()
    two_steps[:, :2] = True
    with pytest.raises(ValueError, match="one stochastic step each"):
        policy.evaluate_chain(batch, ChainRecord(record.chain, two_steps, record.noise_level))


# ---------------------------------------------------------------------------------------------------------------
# Gradients and the value head
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(VARIANTS))
def test_gradients_reach_actor_noise_head_and_value_head(name: str) -> None:
    policy = build_policy(name)
    batch = make_obs_batch(6)
    sample = policy.sample_chain(batch, generator=gen(8))
    evaluation = policy.evaluate_chain(batch, sample.record)
    loss = -evaluation.log_prob.mean() + evaluation.value.square().mean() - 0.01 * evaluation.entropy.mean()
    loss.backward()

    def has_grad(module: torch.nn.Module) -> bool:
        return all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())

    assert has_grad(policy.backbone.action_out_proj)
    assert has_grad(policy.backbone.action_mlp)
    assert has_grad(policy.backbone.obs_encoder)  # through the velocity's observation encoding
    assert has_grad(policy.value_head)
    if policy.noise_head is not None:
        assert has_grad(policy.noise_head)

    groups = policy.rl_parameter_groups()
    expected = {"actor", "critic"} | ({"noise_head"} if policy.noise_head is not None else set())
    assert set(groups) == expected
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)), "parameter groups overlap"
    assert len(ids) == len(list(policy.parameters()))


@pytest.mark.parametrize("detach", [True, False])
def test_value_gradient_reaches_encoder_only_when_not_detached(detach: bool) -> None:
    policy = build_policy("sde_hybrid")
    policy.config.value_head.detach_features = detach
    policy.value(make_obs_batch(4)).sum().backward()
    assert all(p.grad is not None for p in policy.value_head.parameters())
    encoder_grads = [p.grad for p in policy.backbone.obs_encoder.parameters()]
    if detach:
        assert all(g is None for g in encoder_grads)
    else:
        assert all(g is not None and g.abs().sum() > 0 for g in encoder_grads)


@pytest.mark.parametrize("name", ["sde_hybrid", "noise_sum"])
def test_value_is_independent_of_the_chain(name: str) -> None:
    policy = build_policy(name)
    batch = make_obs_batch(5)
    first = policy.sample_chain(batch, generator=gen(9))
    second = policy.sample_chain(batch, generator=gen(10))
    assert not torch.allclose(first.record.chain, second.record.chain)
    v1 = policy.evaluate_chain(batch, first.record).value
    v2 = policy.evaluate_chain(batch, second.record).value
    assert torch.equal(v1, v2)
    assert torch.allclose(policy.value(batch), v1)
    assert torch.allclose(first.value, second.value)
    assert policy.value(batch).shape == (5,)
    # ...but it does depend on the observation.
    assert not torch.allclose(policy.value(make_obs_batch(5, seed=1)), v1)


# ---------------------------------------------------------------------------------------------------------------
# Hybrid Flow-SDE step indices and chain structure
# ---------------------------------------------------------------------------------------------------------------


def chi_square(counts: torch.Tensor) -> float:
    expected = counts.sum() / counts.numel()
    return float(((counts - expected) ** 2 / expected).sum())


# Upper 0.1% critical values of chi-square with df = 1..3.
CHI2_999 = {1: 10.83, 2: 13.82, 3: 16.27}


@pytest.mark.parametrize("exclude_last", [False, True])
def test_hybrid_step_indices_are_uniform(exclude_last: bool) -> None:
    policy = build_policy("sde_exclude_last" if exclude_last else "sde_hybrid")
    k = policy.config.num_denoise_steps
    sample = policy.sample_chain(make_obs_batch(4000, seed=3), generator=gen(11))
    counts = sample.record.stochastic.sum(dim=0).float()
    support = k - 1 if exclude_last else k
    if exclude_last:
        assert counts[k - 1] == 0, "exclude_last_step drew the last step"
    assert (counts[:support] > 0).all()
    assert chi_square(counts[:support]) < CHI2_999[support - 1], counts


def test_hybrid_chain_is_ode_except_at_the_stochastic_step() -> None:
    policy = build_policy("sde_hybrid")
    batch = make_obs_batch(8)
    sample = policy.sample_chain(batch, generator=gen(12))
    k = policy.config.num_denoise_steps
    dt = 1.0 / k
    times = torch.tensor([1.0 - i / k for i in range(k)])
    with torch.no_grad():
        ctx = policy.backbone.encode(batch)
        for i in range(k):
            x = sample.record.chain[:, i]
            v, _ = policy.backbone.velocity(ctx, x, times[i].expand(8))
            euler_gap = (sample.record.chain[:, i + 1] - (x - dt * v)).abs().amax(dim=(1, 2))
            is_sde = sample.record.stochastic[:, i]
            assert (euler_gap[~is_sde] == 0).all()  # ODE steps are the Euler step bit for bit
            assert (euler_gap[is_sde] > 1e-3).all()


# ---------------------------------------------------------------------------------------------------------------
# Deterministic inference
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sde_hybrid", "sde_all"])
def test_zero_noise_flow_sde_chain_equals_deterministic_ode(name: str) -> None:
    policy = build_policy(name)
    batch = make_obs_batch(5)
    torch.manual_seed(13)
    deterministic = policy.predict_action_chunk(batch)

    policy.set_noise_level(0.0)
    sample = policy.sample_chain(batch, generator=gen(13))
    assert torch.equal(sample.action_chunk, deterministic)
    assert (sample.log_prob == 0).all()

    policy.set_noise_level(0.5)
    noisy = policy.sample_chain(batch, generator=gen(13))
    assert not torch.allclose(noisy.action_chunk, deterministic, atol=1e-3)


@pytest.mark.parametrize("name", ["sde_hybrid", "sde_all"])
def test_annealed_noise_level_is_used_and_never_aliased(name: str) -> None:
    """The sampler caches its coefficient tables per noise level: a changed level (annealing, or weights loaded
    into the buffer) must be picked up at once, and no recorded level may follow the live buffer."""
    policy = build_policy(name)
    batch = make_obs_batch(4)
    first = policy.sample_chain(batch, generator=gen(20))
    recorded = first.record.noise_level.clone()
    policy.set_noise_level(0.2)
    assert torch.equal(first.record.noise_level, recorded)  # the earlier sample's level did not follow the buffer
    second = policy.sample_chain(batch, generator=gen(20))
    assert torch.equal(second.record.noise_level, torch.full((4,), 0.2))
    fresh = build_policy(name)
    fresh.set_noise_level(0.2)  # a policy that never saw level 0.5: what the second sample must equal
    expected = fresh.sample_chain(batch, generator=gen(20))
    for field, value in sample_fields(second).items():
        assert torch.equal(value, sample_fields(expected)[field]), field
    assert not torch.equal(second.record.chain, first.record.chain)
    # a level written straight into the buffer (e.g. by load_state_dict) is picked up too
    policy.load_state_dict({**policy.state_dict(), "sde_noise_level": torch.tensor(0.5)})
    third = policy.sample_chain(batch, generator=gen(20))
    assert torch.equal(third.record.chain, first.record.chain) and torch.equal(third.record.noise_level, recorded)
    for sample in (first, second):  # and each sample re-scores exactly under its own recorded level
        evaluation = policy.evaluate_chain(batch, sample.record)
        assert torch.equal(evaluation.log_prob.detach(), sample.log_prob)


def test_zero_noise_level_in_config_gives_deterministic_chain() -> None:
    torch.manual_seed(0)
    cfg = make_flow_mlp_config("flow_sde", variant_kwargs={"noise_level": 0.0, "stochastic_steps": "all"})
    policy = PiRLPolicy(cfg)
    assert float(policy.sde_noise_level) == 0.0
    batch = make_obs_batch(3)
    torch.manual_seed(14)
    deterministic = policy.predict_action_chunk(batch)
    assert torch.allclose(policy.sample_chain(batch, generator=gen(14)).action_chunk, deterministic, atol=1e-6)


@pytest.mark.parametrize("name", ["sde_hybrid", "noise_sum"])
def test_predict_action_chunk_is_euler_integrate_over_backbone_velocity(name: str) -> None:
    policy = build_policy(name)
    cfg = policy.config
    batch = make_obs_batch(4)
    torch.manual_seed(15)
    chunk = policy.predict_action_chunk(batch)
    assert chunk.shape == (4, cfg.chunk_size, cfg.action_dim)

    torch.manual_seed(15)
    noise = torch.randn(4, cfg.chunk_size, policy.backbone.model_action_dim)
    with torch.no_grad():
        ctx = policy.backbone.encode(batch)
        reference = euler_integrate(
            lambda x, t: policy.backbone.velocity(ctx, x, t)[0], noise, cfg.num_denoise_steps
        )
    assert torch.allclose(chunk, reference[..., : cfg.action_dim], atol=1e-6)


def test_select_action_refills_every_c_steps_and_reset_clears_queue() -> None:
    policy = build_policy("sde_hybrid")
    c = policy.config.n_action_steps
    batch = make_obs_batch(2)
    chunks: list[torch.Tensor] = []
    original = policy.predict_action_chunk

    def spy(b):
        chunks.append(original(b))
        return chunks[-1]

    policy.predict_action_chunk = spy  # type: ignore[method-assign]
    actions = [policy.select_action(batch) for _ in range(2 * c + 1)]
    assert len(chunks) == 3
    for i, action in enumerate(actions):
        assert action.shape == (2, ACTION_DIM)
        assert torch.equal(action, chunks[i // c][:, i % c])

    assert len(policy._action_queue) == c - 1
    policy.reset()
    assert len(policy._action_queue) == 0
    policy.select_action(batch)
    assert len(chunks) == 4


# ---------------------------------------------------------------------------------------------------------------
# Supervised flow matching (SFT) actually learns
# ---------------------------------------------------------------------------------------------------------------


def test_sft_forward_learns_a_state_to_chunk_mapping() -> None:
    torch.manual_seed(0)
    cfg = make_flow_mlp_config(backbone_kwargs={"hidden_dim": 128})
    policy = PiRLPolicy(cfg)
    h, a = cfg.chunk_size, cfg.action_dim
    n = 32
    g = gen(16)
    states = {OBS_STATE: torch.randn(n, STATE_DIM, generator=g), OBS_ENV_STATE: torch.randn(n, ENV_DIM, generator=g)}
    mixing = torch.randn(STATE_DIM + ENV_DIM, h * a, generator=g) / (STATE_DIM + ENV_DIM) ** 0.5
    targets = 0.8 * torch.tanh(torch.cat([states[OBS_STATE], states[OBS_ENV_STATE]], -1) @ mixing).view(n, h, a)
    data = {**states, ACTION: targets}
    baseline = (targets - targets.mean(0)).square().mean().item()  # error of predicting the mean chunk
    untrained = (policy.predict_action_chunk(states) - targets).square().mean().item()
    assert untrained > baseline

    optimizer = torch.optim.Adam(policy.parameters(), lr=3e-3)
    policy.train()
    losses = []
    for _ in range(250):
        loss, info = policy.forward(data)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        assert info["flow_mse"] == pytest.approx(losses[-1])
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < 0.25 * first, (first, last)

    trained = (policy.predict_action_chunk(states) - targets).square().mean().item()
    assert trained < 0.12 * baseline and trained < 0.04, (trained, baseline)


def test_forward_respects_action_padding_and_chunk_length() -> None:
    policy = build_policy("sde_hybrid")
    cfg = policy.config
    data = {**make_obs_batch(4), ACTION: torch.zeros(4, cfg.chunk_size, cfg.action_dim)}
    torch.manual_seed(0)
    loss_plain, _ = policy.forward(data)
    # Garbage in padded steps must not change the loss once they are marked as padding.
    pad = torch.zeros(4, cfg.chunk_size, dtype=torch.bool)
    pad[:, -2:] = True
    corrupted = dict(data)
    corrupted[ACTION] = data[ACTION].clone()
    corrupted[ACTION][:, -2:] = 100.0
    torch.manual_seed(0)
    loss_masked, _ = policy.forward({**corrupted, f"{ACTION}_is_pad": pad})
    torch.manual_seed(0)
    loss_unmasked, _ = policy.forward(corrupted)
    assert loss_unmasked > 10 * loss_masked
    assert torch.isfinite(loss_plain)
    with pytest.raises(ValueError, match="chunk_size"):
        policy.forward({**make_obs_batch(4), ACTION: torch.zeros(4, cfg.chunk_size + 1, cfg.action_dim)})


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints and processors
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sde_hybrid", "noise_mean"])
def test_save_and_load_round_trip(name: str, tmp_path) -> None:
    policy = build_policy(name, log_prob_level="action", seed=3)
    policy.set_noise_level(0.37)
    with torch.no_grad():  # make the heads differ from a fresh init with the same seed
        for p in policy.value_head.parameters():
            p.add_(0.01)
    policy.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").is_file() and (tmp_path / "model.safetensors").is_file()

    loaded = PiRLPolicy.from_pretrained(tmp_path)

    assert isinstance(loaded.config, PiRLConfig)
    assert loaded.config.variant == policy.config.variant
    assert loaded.config.backbone == policy.config.backbone
    assert loaded.config.log_prob_level == "action"
    assert loaded.config.input_features == policy.config.input_features
    saved_keys = set(load_file(tmp_path / "model.safetensors"))
    assert "sde_noise_level" in saved_keys
    assert any(k.startswith("value_head.") for k in saved_keys)
    assert any(k.startswith("noise_head.") for k in saved_keys) == (name == "noise_mean")
    reference = policy.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, reference[key]), key
    assert float(loaded.sde_noise_level) == pytest.approx(0.37)

    batch = make_obs_batch(4)
    a, b = policy.sample_chain(batch, generator=gen(17)), loaded.sample_chain(batch, generator=gen(17))
    for field, value in sample_fields(a).items():
        assert torch.equal(value, sample_fields(b)[field]), field
    torch.manual_seed(1)
    chunk_a = policy.predict_action_chunk(batch)
    torch.manual_seed(1)
    assert torch.equal(chunk_a, loaded.predict_action_chunk(batch))


def test_loading_a_checkpoint_with_a_missing_key_raises(tmp_path) -> None:
    policy = build_policy("noise_sum")
    policy.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    missing = next(k for k in weights if k.startswith("noise_head."))
    del weights[missing]
    save_file(weights, tmp_path / "model.safetensors")
    with pytest.raises(RuntimeError, match="Missing key"):
        PiRLPolicy.from_pretrained(tmp_path)


def test_loading_a_checkpoint_under_other_value_head_settings_names_them(tmp_path) -> None:
    """A run that changes the critic's shape on top of a checkpoint gets an error naming the value_head settings,
    not only torch's size-mismatch list."""
    policy = build_policy("noise_sum")
    policy.save_pretrained(tmp_path)
    config = copy.deepcopy(policy.config)
    width = policy.config.value_head.hidden_dims[0] + 8
    config.value_head.hidden_dims = [width]
    with pytest.raises(RuntimeError, match=rf"value head has other shapes .*hidden_dims=\[{width}\]"):
        PiRLPolicy.from_pretrained(tmp_path, config=config)


def test_processors_save_and_load_round_trip(tmp_path) -> None:
    cfg = make_flow_mlp_config()
    stats = make_dataset_stats()
    pre, post = make_pre_post_processors(copy.deepcopy(cfg), dataset_stats=stats)
    pre.save_pretrained(tmp_path)
    post.save_pretrained(tmp_path)
    pre2, post2 = make_pre_post_processors(cfg, pretrained_path=str(tmp_path))

    raw = {OBS_STATE: torch.randn(STATE_DIM), OBS_ENV_STATE: torch.randn(ENV_DIM)}
    out, out2 = pre(dict(raw)), pre2(dict(raw))
    expected_state = (raw[OBS_STATE] - stats[OBS_STATE]["mean"]) / stats[OBS_STATE]["std"]
    assert out[OBS_STATE].shape == (1, STATE_DIM)  # batch dimension added
    assert torch.allclose(out[OBS_STATE][0], expected_state, atol=1e-5)
    for key in (OBS_STATE, OBS_ENV_STATE):
        assert torch.equal(out[key], out2[key])

    normalized_action = torch.tensor([[-1.0, 0.0, 0.5, 1.0]])
    action, action2 = post(normalized_action), post2(normalized_action)
    assert torch.allclose(action, torch.tensor([[-2.0, 0.0, 1.0, 2.0]]), atol=1e-5)
    assert torch.equal(action, action2)


# ---------------------------------------------------------------------------------------------------------------
# Reliability: module mode, and an RL run of another variant started from an SFT checkpoint
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sde_hybrid", "noise_sum"])
def test_predict_action_chunk_leaves_the_module_mode_alone(name: str) -> None:
    """Deployment sampling reads the weights; switching train/eval is the caller's business (a learner that
    evaluates between updates must not find its policy in eval mode afterwards)."""
    policy = build_policy(name)
    batch = make_obs_batch(3)
    policy.train()
    policy.predict_action_chunk(batch)
    policy.select_action(batch)
    assert policy.training and all(m.training for m in policy.modules())
    policy.eval()
    policy.predict_action_chunk(batch)
    assert not any(m.training for m in policy.modules())


def _rl_policy_from_sft_checkpoint(sft_dir, *overrides: str) -> PiRLPolicy:
    """Build the RL run's policy the way the learner and every actor do: `--policy.path=<SFT checkpoint>` parsed
    by the entry points' `load_config`, then LeRobot's `make_policy` (as `lerobot-pi-rl-train` in the demo)."""
    from lerobot.policies import make_policy

    from lerobot_policy_pi_rl.runtime.cli import load_config

    cfg = load_config([
        f"--policy.path={sft_dir}", "--policy.device=cpu", *overrides, "--env.type=pi_rl_pickcube",
        "--algorithm.type=pi_rl", f"--output_dir={sft_dir.parent / 'rl'}",
    ])
    return make_policy(cfg=cfg.policy, env_cfg=cfg.env)


def test_a_flow_sde_sft_checkpoint_starts_a_flow_noise_rl_run(tmp_path, caplog) -> None:
    sft = build_policy("sde_hybrid", seed=4)
    sft.save_pretrained(tmp_path / "sft")
    saved = load_file(tmp_path / "sft" / "model.safetensors")
    assert not any(k.startswith("noise_head.") for k in saved)

    with caplog.at_level("WARNING"):
        policy = _rl_policy_from_sft_checkpoint(
            tmp_path / "sft", "--policy.variant.type=flow_noise", "--policy.variant.max_std=0.2"
        )

    # the new variant starts from its own defaults, with its overrides; a setting of the old one is an error
    assert policy.config.variant == FlowNoiseConfig(max_std=0.2)
    assert policy.noise_head is not None
    with pytest.raises(Exception, match="noise_level"):
        _rl_policy_from_sft_checkpoint(
            tmp_path / "sft", "--policy.variant.type=flow_noise", "--policy.variant.noise_level=0.3"
        )
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "noise_head" in r.getMessage()]
    assert len(warnings) == 1 and "initialized" in warnings[0], warnings
    for key, value in saved.items():  # everything the checkpoint has is loaded
        assert torch.equal(policy.state_dict()[key], value), key
    # the fresh head is a working Flow-Noise head: bounded std, chains that re-score exactly
    batch = make_obs_batch(4)
    sample = policy.sample_chain(batch, generator=gen(21))
    evaluation = policy.evaluate_chain(batch, sample.record)
    assert torch.equal(evaluation.log_prob.detach(), sample.log_prob)
    lo, hi = policy.config.variant.min_std, policy.config.variant.max_std
    assert ((evaluation.std_mean >= lo) & (evaluation.std_mean <= hi)).all()


def test_an_sft_checkpoint_missing_anything_else_still_fails_to_start_an_rl_run(tmp_path) -> None:
    sft = build_policy("sde_hybrid", seed=4)
    sft.save_pretrained(tmp_path / "sft")
    weights = load_file(tmp_path / "sft" / "model.safetensors")
    del weights["backbone.action_out_proj.weight"]
    save_file(weights, tmp_path / "sft" / "model.safetensors")
    with pytest.raises(RuntimeError, match=r"Missing key.*backbone\.action_out_proj\.weight"):
        _rl_policy_from_sft_checkpoint(tmp_path / "sft", "--policy.variant.type=flow_noise")


def test_a_flow_noise_checkpoint_starts_a_flow_sde_rl_run_without_its_noise_head(tmp_path, caplog) -> None:
    build_policy("noise_sum", seed=4).save_pretrained(tmp_path / "sft")
    saved = load_file(tmp_path / "sft" / "model.safetensors")
    with caplog.at_level("WARNING"):
        policy = _rl_policy_from_sft_checkpoint(tmp_path / "sft", "--policy.variant.type=flow_sde")
    assert policy.config.variant.type == "flow_sde" and policy.noise_head is None
    assert any("noise_head" in r.getMessage() and "ignored" in r.getMessage() for r in caplog.records)
    for key, value in policy.state_dict().items():
        assert torch.equal(value, saved[key]), key



@pytest.mark.parametrize("floor", [0.02, 0.0])
def test_state_std_floor_bounds_inputs_from_dimensions_that_never_moved(tmp_path, floor: float) -> None:
    """A state dimension constant in the demonstrations (std 0) or nearly so (std 0.001) is normalized with
    std = max(std, state_std_floor); dimensions above the floor, ENV features' stats and actions are unchanged, and
    the saved processors hold the floored stats. floor 0 keeps LeRobot's plain normalization (and its blow-up)."""
    cfg = make_flow_mlp_config(state_std_floor=floor)
    stats = make_dataset_stats()
    stats[OBS_STATE]["std"] = torch.tensor([0.0, 0.001, 2.0] + [2.0] * (STATE_DIM - 3))
    original = copy.deepcopy(stats)
    pre, post = make_pre_post_processors(copy.deepcopy(cfg), dataset_stats=stats)
    pre.save_pretrained(tmp_path)
    post.save_pretrained(tmp_path)
    reloaded, _ = make_pre_post_processors(cfg, pretrained_path=str(tmp_path))
    for key in stats:
        for name in stats[key]:
            assert torch.equal(stats[key][name], original[key][name])  # the caller's stats are not modified

    state = stats[OBS_STATE]["mean"].clone()
    state[:3] += torch.tensor([0.01, 0.01, 1.0])
    raw = {OBS_STATE: state, OBS_ENV_STATE: torch.zeros(ENV_DIM)}
    for processor in (pre, reloaded):
        out = processor(dict(raw))[OBS_STATE][0]
        if floor:
            assert torch.allclose(out[:3], torch.tensor([0.5, 0.5, 0.5]), atol=1e-5)
        else:
            assert out[0] > 1e5 and out[1] == pytest.approx(10.0, rel=1e-4)
        assert torch.allclose(out[3:], torch.zeros(STATE_DIM - 3), atol=1e-6)
        env = processor(dict(raw))[OBS_ENV_STATE][0]
        assert torch.allclose(env, (0.0 - stats[OBS_ENV_STATE]["mean"]) / stats[OBS_ENV_STATE]["std"], atol=1e-5)


def test_state_std_floor_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="state_std_floor=-0.1"):
        make_flow_mlp_config(state_std_floor=-0.1)
