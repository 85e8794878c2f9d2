"""VLA backbones (SmolVLA, π0, π0.5) behind the pi_rl policy: chains, log-probs, gradients, values, processors,
save/load and export. All offline, on toy-sized upstream models (`tiny_vla`).

Log-prob reproduction tolerance: |evaluate - sample| <= 1e-5 * max(1, |log-prob|), i.e. 1e-5 absolute for
log-probs of magnitude <= 1 and 1e-5 relative above.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lerobot.configs import PreTrainedConfig
from lerobot.policies.factory import make_pre_post_processors
from lerobot.processor import PolicyProcessorPipeline
from lerobot.utils.constants import OBS_LANGUAGE_TOKENS

from lerobot_policy_pi_rl.backbones.vla_processors import DEFAULT_TASK_STEP_NAME
from lerobot_policy_pi_rl.configuration_pi_rl import (
    FlowNoiseConfig,
    FlowSDEConfig,
    PI0BackboneConfig,
    PI05BackboneConfig,
    PiRLConfig,
    SmolVLABackboneConfig,
    ValueHeadConfig,
)
from lerobot_policy_pi_rl.export import export_checkpoint, main as export_main
from lerobot_policy_pi_rl.modeling_pi_rl import PiRLPolicy
from lerobot_policy_pi_rl.processor_pi_rl import make_pi_rl_pre_post_processors

import tiny_vla as tv

K = 4
BATCH = 3
BACKBONE_CONFIGS = {"smolvla": SmolVLABackboneConfig, "pi0": PI0BackboneConfig, "pi05": PI05BackboneConfig}
VARIANTS = {
    "sde_hybrid": lambda: FlowSDEConfig(noise_level=0.5, stochastic_steps="hybrid"),
    "sde_all": lambda: FlowSDEConfig(noise_level=0.5, stochastic_steps="all"),
    "noise": lambda: FlowNoiseConfig(noise_head_hidden_dims=[32]),
}
BACKBONES = [
    "smolvla",
    pytest.param("pi0", marks=pytest.mark.slow),
    pytest.param("pi05", marks=pytest.mark.slow),
]


def _tiny_context(kind: str):
    """π0/π0.5 must be (re)built under the tiny PaliGemma patch; SmolVLA needs nothing."""
    import contextlib

    return tv.tiny_paligemma(kind) if kind in ("pi0", "pi05") else contextlib.nullcontext()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Lazily built plain LeRobot checkpoints per backbone type (built once per module)."""
    root = tmp_path_factory.mktemp("vla_checkpoints")
    cache: dict[str, Path] = {}

    class _Lazy(dict):
        def __missing__(self, kind: str) -> Path:
            if kind == "smolvla":
                path = tv.build_tiny_smolvla_checkpoint(root / kind)
            else:
                path = tv.build_tiny_pi_checkpoint(root / kind, kind)
            self[kind] = path
            return path

    return _Lazy(cache)


def make_config(kind: str, checkpoint: Path | None, variant: str = "sde_hybrid", value_source: str = "auto",
                **backbone_kwargs) -> PiRLConfig:
    inputs, outputs = tv.features()
    return PiRLConfig(
        variant=VARIANTS[variant](),
        backbone=BACKBONE_CONFIGS[kind](pretrained_path=str(checkpoint) if checkpoint else None, **backbone_kwargs),
        value_head=ValueHeadConfig(hidden_dims=[32], feature_source=value_source),
        num_denoise_steps=K,
        chunk_size=tv.CHUNK_SIZE,
        n_action_steps=5,
        device="cpu",
        input_features=inputs,
        output_features=outputs,
    )


def build_policy(kind: str, checkpoint: Path, variant: str = "sde_hybrid", value_source: str = "auto",
                 **backbone_kwargs) -> PiRLPolicy:
    torch.manual_seed(0)
    with _tiny_context(kind):
        return PiRLPolicy(make_config(kind, checkpoint, variant, value_source, **backbone_kwargs))


def model_batch(kind: str, policy: PiRLPolicy, seed: int = 0, batch: int = BATCH) -> dict:
    """A pre-processed batch: through the real processors for SmolVLA, token ids directly for π0/π0.5 (their
    tokenizer is gated on the hub)."""
    if kind == "smolvla":
        preprocessor, _ = make_pi_rl_pre_post_processors(policy.config, None)
        return preprocessor(tv.raw_observation(batch, seed=seed))
    return tv.tokenized_observation(batch, seed=seed)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_log_prob_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    tol = 1e-5 * torch.clamp(expected.abs(), min=1.0)
    assert bool(((actual - expected).abs() <= tol).all()), f"log-probs differ: {actual} vs {expected}"


# ---------------------------------------------------------------------------------------------------------------
# Chains, log-probs, gradients, values
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("kind", BACKBONES)
def test_chain_log_prob_gradients_and_value(kind: str, variant: str, checkpoints) -> None:
    policy = build_policy(kind, checkpoints[kind], variant)
    backbone = policy.backbone
    batch = model_batch(kind, policy)

    sample = policy.sample_chain(batch, generator=gen(1))
    a_model = backbone.model_action_dim
    assert a_model == 32 and backbone.chunk_size == tv.CHUNK_SIZE
    assert sample.record.chain.shape == (BATCH, K + 1, tv.CHUNK_SIZE, a_model)
    assert sample.record.chain.dtype == torch.float32
    assert sample.action_chunk.shape == (BATCH, tv.CHUNK_SIZE, tv.ACTION_DIM)
    assert sample.log_prob.shape == (BATCH,) and sample.log_prob.dtype == torch.float32
    assert sample.value.shape == (BATCH,)
    assert torch.isfinite(sample.log_prob).all() and torch.isfinite(sample.value).all()

    # Learner side: same weights, same chain -> same log-prob; with gradients.
    policy.train()
    policy.zero_grad(set_to_none=True)
    evaluation = policy.evaluate_chain(batch, sample.record)
    assert_log_prob_close(evaluation.log_prob.detach(), sample.log_prob)
    (evaluation.log_prob.sum() + evaluation.value.sum()).backward()

    actor = backbone.rl_trainable_parameters()
    assert actor, "no trainable action-expert parameters"
    assert all(p.grad is not None for p in actor), "some action-expert parameters got no gradient"
    assert float(backbone._action_out_proj().weight.grad.abs().sum()) > 0
    vlm_params = [p for m in backbone.vlm_modules() for p in m.parameters()]
    assert vlm_params and all(not p.requires_grad and p.grad is None for p in vlm_params)
    assert all(p.grad is not None for p in policy.value_head.parameters())
    if variant == "noise":
        assert policy.noise_head is not None
        assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in policy.noise_head.parameters())

    # The value reads the observation only: two different chains, same value; another observation, another value.
    with torch.no_grad():
        other = policy.sample_chain(batch, generator=gen(7))
        assert not torch.equal(other.record.chain, sample.record.chain)
        torch.testing.assert_close(other.value, sample.value, rtol=0, atol=1e-6)
        torch.testing.assert_close(policy.value(batch), sample.value, rtol=0, atol=1e-6)
        assert not torch.allclose(policy.value(model_batch(kind, policy, seed=5)), sample.value)


@pytest.mark.parametrize("kind", [k for k in BACKBONES if getattr(k, "values", [k])[0] != "pi05"])
def test_prefix_state_critic_reads_the_prefix_mean_and_the_state(kind: str, checkpoints) -> None:
    """`feature_source=prefix_state`: the critic's features are the prefix mean followed by the padded state the
    backbone fed its model, and the value head is as wide as both."""
    from lerobot_policy_pi_rl.backbones.vla_base import masked_mean

    policy = build_policy(kind, checkpoints[kind], value_source="prefix_state")
    backbone = policy.backbone
    batch = model_batch(kind, policy)
    with torch.no_grad():
        context = backbone.encode(batch)
        features = backbone.value_features(context)
        state = backbone.policy.prepare_state(batch)
        prefix_mean = masked_mean(context.prefix_out, context.prefix_pad_masks).float()
    assert state.shape == (BATCH, backbone.policy.config.max_state_dim)
    assert features.shape == (BATCH, backbone.vlm_width + state.shape[1]) == (BATCH, backbone.value_feature_dim)
    torch.testing.assert_close(features, torch.cat([prefix_mean, state.float()], dim=-1), rtol=0, atol=0)
    assert policy.value_head.mlp[0].in_features == backbone.value_feature_dim
    with pytest.raises(ValueError, match="prefix_state"):
        make_config("pi05", None, value_source="prefix_state")


@pytest.mark.parametrize("kind", BACKBONES)
def test_velocity_matches_upstream_denoise_step_and_keeps_the_cache(kind: str, checkpoints) -> None:
    """Our re-implemented expert pass equals upstream's `denoise_step`, for per-sample t, repeatedly."""
    policy = build_policy(kind, checkpoints[kind])
    backbone = policy.backbone
    batch = model_batch(kind, policy)
    with torch.no_grad():
        context = backbone.encode(batch)
        x = torch.randn(BATCH, tv.CHUNK_SIZE, 32, generator=gen(3))
        t = torch.tensor([1.0, 0.5, 0.25])
        v1, hidden = backbone.velocity(context, x, t)
        v2, _ = backbone.velocity(context, x, t)  # the prefix cache must be unchanged by the first call
        assert hidden.shape == (BATCH, tv.CHUNK_SIZE, backbone.token_dim)
        torch.testing.assert_close(v1, v2, rtol=0, atol=0)
        # Upstream, one sample at a time (its denoise_step takes a shared cache object).
        for i in range(BATCH):
            sub = {k: (v[i : i + 1] if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
            ctx_i = backbone.encode(sub)
            from lerobot_policy_pi_rl.backbones.vla_base import fresh_cache

            kwargs = dict(
                prefix_pad_masks=ctx_i.prefix_pad_masks,
                past_key_values=fresh_cache(ctx_i.prefix_kv),
                x_t=x[i : i + 1],
                timestep=t[i : i + 1],
            )
            if kind == "pi0":
                kwargs["state"] = ctx_i.extra["state"]
            v_up = backbone.model.denoise_step(**kwargs)
            torch.testing.assert_close(v1[i : i + 1], v_up, rtol=1e-5, atol=1e-5)


def test_bfloat16_smolvla_keeps_float32_log_probs(checkpoints) -> None:
    policy = build_policy("smolvla", checkpoints["smolvla"], dtype="bfloat16")
    assert policy.backbone.model.vlm_with_expert.lm_expert.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    batch = model_batch("smolvla", policy)
    sample = policy.sample_chain(batch, generator=gen(1))
    assert sample.record.chain.dtype == torch.float32 and sample.log_prob.dtype == torch.float32
    evaluation = policy.evaluate_chain(batch, sample.record)
    assert_log_prob_close(evaluation.log_prob.detach(), sample.log_prob)


@pytest.mark.parametrize("variant", ["sde_hybrid", "noise"])
def test_bf16_ratio_guard_holds_on_honest_runs_and_trips_on_a_config_mismatch(variant, checkpoints) -> None:
    """bf16 backbone, real processors: the actor samples 12 chains in eval mode in one batch; the learner scores
    them in train mode in minibatches of another composition (5 rows, shuffled). Measured on this CPU: per-term
    |log ratio| exactly 0 in bf16 at any composition (<= 1e-7 in float32), so the default tolerance (1e-3 per
    term) holds; a learner whose Flow-Noise std bounds or compute dtype differ from the actor's is off by
    7e-4 to 3e-2 per term and must be caught."""
    from lerobot_policy_pi_rl.rl.algorithm import PiRLAlgorithm, RatioMismatchError
    from lerobot_policy_pi_rl.rl.config import PiRLAlgorithmConfig

    actor = build_policy("smolvla", checkpoints["smolvla"], variant, dtype="bfloat16").eval()
    batch = model_batch("smolvla", actor, seed=3, batch=12)
    sample = actor.sample_chain(batch, generator=gen(4))
    rollout = tv.vla_rollout(batch, sample)

    def update(learner: PiRLPolicy, sync: bool = True):
        if sync:
            learner.load_state_dict(actor.state_dict())
        config = PiRLAlgorithmConfig(policy_config=learner.config, minibatch_size=5, update_epochs=1)
        return PiRLAlgorithm(learner, config).update_rollout(rollout)

    honest = build_policy("smolvla", checkpoints["smolvla"], variant, dtype="bfloat16")
    assert update(honest).steps_taken == 3
    if variant == "noise":
        VARIANTS["noise_wider"] = lambda: FlowNoiseConfig(noise_head_hidden_dims=[32], max_std=0.2)
        other, sync = build_policy("smolvla", checkpoints["smolvla"], "noise_wider", dtype="bfloat16"), True
    else:  # backbone.pretrained_path of another checkpoint
        other_checkpoint = tv.build_tiny_smolvla_checkpoint(checkpoints["smolvla"].parent / "other", seed=1)
        other, sync = build_policy("smolvla", other_checkpoint, variant, dtype="bfloat16"), False
    with pytest.raises(RatioMismatchError, match="per Gaussian term"):
        update(other, sync=sync)


def test_bad_backbone_checkpoints_fail_loudly(checkpoints, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_policy("smolvla", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="'smolvla' policy"):
        build_policy("pi0", checkpoints["smolvla"])
    # A checkpoint with a missing tensor must not silently load random weights.
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(checkpoints["smolvla"], broken)
    weights = load_file(broken / "model.safetensors")
    weights.pop("model.action_out_proj.weight")
    save_file(weights, broken / "model.safetensors")
    with pytest.raises(RuntimeError, match="1 missing keys"):
        build_policy("smolvla", broken)


# ---------------------------------------------------------------------------------------------------------------
# Processors
# ---------------------------------------------------------------------------------------------------------------


def test_processors_inject_the_default_task(checkpoints) -> None:
    config = make_config("smolvla", checkpoints["smolvla"], default_task="pick up the cube")
    preprocessor, _ = make_pi_rl_pre_post_processors(config, None)
    names = [type(s).__name__ for s in preprocessor.steps]
    assert names.index("DefaultTaskProcessorStep") < names.index("TokenizerProcessorStep")

    no_task = preprocessor(tv.raw_observation(BATCH, with_task=False))
    explicit = tv.raw_observation(BATCH)
    explicit["task"] = ["pick up the cube"] * BATCH
    with_task = preprocessor(explicit)
    assert no_task[OBS_LANGUAGE_TOKENS].shape[0] == BATCH
    torch.testing.assert_close(no_task[OBS_LANGUAGE_TOKENS], with_task[OBS_LANGUAGE_TOKENS])
    other = preprocessor(tv.raw_observation(BATCH))  # "pick up the red cube": a given task is kept
    assert not torch.equal(other[OBS_LANGUAGE_TOKENS], no_task[OBS_LANGUAGE_TOKENS])

    # Without the step, upstream's own pipeline fails on the same observation.
    upstream_pre = PolicyProcessorPipeline.from_pretrained(checkpoints["smolvla"], "policy_preprocessor.json")
    with pytest.raises(Exception, match="task"):
        upstream_pre(tv.raw_observation(BATCH, with_task=False))


# ---------------------------------------------------------------------------------------------------------------
# Save / load and export
# ---------------------------------------------------------------------------------------------------------------


def _save_pi_rl(policy: PiRLPolicy, directory: Path, *, with_processors: bool = True) -> Path:
    policy.save_pretrained(directory)
    if with_processors:
        preprocessor, postprocessor = make_pi_rl_pre_post_processors(policy.config, None)
        preprocessor.save_pretrained(directory)
        postprocessor.save_pretrained(directory)
    return directory


def _deterministic_chunk(policy: PiRLPolicy, batch: dict, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return policy.predict_action_chunk(batch)


@pytest.mark.parametrize("kind", BACKBONES)
def test_save_load_round_trip_without_the_original_checkpoint(kind: str, checkpoints, tmp_path: Path) -> None:
    original = shutil.copytree(checkpoints[kind], tmp_path / "original")
    policy = build_policy(kind, original, "noise")
    with torch.no_grad():  # move the weights away from the checkpoint's, as RL would
        for p in policy.backbone.rl_trainable_parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=gen(11)))
    saved = _save_pi_rl(policy, tmp_path / "pi_rl", with_processors=False)
    shutil.rmtree(original)  # the pi_rl checkpoint must be self-contained

    with _tiny_context(kind):
        loaded = PiRLPolicy.from_pretrained(saved)
    batch = model_batch(kind, policy) if kind != "smolvla" else None
    if batch is None:
        preprocessor, _ = make_pi_rl_pre_post_processors(loaded.config, None)
        batch = preprocessor(tv.raw_observation(BATCH))
    torch.testing.assert_close(_deterministic_chunk(loaded, batch, 0), _deterministic_chunk(policy, batch, 0))
    a = policy.sample_chain(batch, generator=gen(2))
    b = loaded.sample_chain(batch, generator=gen(2))
    torch.testing.assert_close(b.record.chain, a.record.chain)
    torch.testing.assert_close(b.log_prob, a.log_prob)
    torch.testing.assert_close(b.value, a.value)

    # Loading stays strict: a missing head tensor is an error, not a random init.
    from safetensors.torch import load_file, save_file

    weights = load_file(saved / "model.safetensors")
    weights.pop(next(k for k in weights if k.startswith("noise_head.")))
    save_file(weights, saved / "model.safetensors")
    with pytest.raises(RuntimeError), _tiny_context(kind):
        PiRLPolicy.from_pretrained(saved)


def test_export_smolvla_loads_with_plain_lerobot_and_acts_the_same(checkpoints, tmp_path: Path) -> None:
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    policy = build_policy("smolvla", checkpoints["smolvla"], "sde_hybrid")
    with torch.no_grad():
        for p in policy.backbone.rl_trainable_parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=gen(12)))
    saved = _save_pi_rl(policy, tmp_path / "pi_rl")
    exported = export_checkpoint(saved, tmp_path / "exported")

    config = json.loads((exported / "config.json").read_text())
    assert config["type"] == "smolvla" and config["num_steps"] == K
    for name in ("policy_preprocessor.json", "policy_postprocessor.json"):
        assert DEFAULT_TASK_STEP_NAME not in (exported / name).read_text()

    plain = SmolVLAPolicy.from_pretrained(exported, strict=True)
    plain_pre, plain_post = make_pre_post_processors(plain.config, pretrained_path=str(exported))
    pi_pre, pi_post = make_pi_rl_pre_post_processors(policy.config, None)
    obs = tv.raw_observation(BATCH)
    plain_batch, pi_batch = plain_pre(dict(obs)), pi_pre(dict(obs))
    torch.testing.assert_close(plain_batch[OBS_LANGUAGE_TOKENS], pi_batch[OBS_LANGUAGE_TOKENS])

    expected = _deterministic_chunk(policy, pi_batch, 3)
    torch.manual_seed(3)
    noise = torch.randn(BATCH, tv.CHUNK_SIZE, 32)
    actual = plain.predict_action_chunk(plain_batch, noise=noise)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(plain_post(actual), pi_post(expected), rtol=1e-5, atol=1e-5)

    # And in a fresh interpreter that never imports this plugin.
    script = (
        "import sys, torch\n"
        "from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy\n"
        "from lerobot.processor import PolicyProcessorPipeline\n"
        f"p = SmolVLAPolicy.from_pretrained({str(exported)!r}, strict=True)\n"
        f"pre = PolicyProcessorPipeline.from_pretrained({str(exported)!r}, 'policy_preprocessor.json')\n"
        "obs = {'observation.images.top': torch.rand(1, 3, 32, 32), 'observation.state': torch.randn(1, 6),"
        " 'task': ['pick up the cube']}\n"
        "a = p.predict_action_chunk(pre(obs))\n"
        "assert a.shape == (1, 10, 4), a.shape\n"
        "assert 'lerobot_policy_pi_rl' not in sys.modules\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]


def test_export_flow_mlp_is_a_clean_pi_rl_checkpoint(tmp_path: Path) -> None:
    from conftest import make_dataset_stats, make_flow_mlp_config, make_obs_batch

    from lerobot.policies.factory import get_policy_class

    config = make_flow_mlp_config("flow_noise", stochastic_inference=True)
    torch.manual_seed(0)
    policy = PiRLPolicy(config)
    policy.save_pretrained(tmp_path / "pi_rl")
    preprocessor, postprocessor = make_pi_rl_pre_post_processors(config, make_dataset_stats())
    preprocessor.save_pretrained(tmp_path / "pi_rl")
    postprocessor.save_pretrained(tmp_path / "pi_rl")

    exported = export_checkpoint(tmp_path / "pi_rl", tmp_path / "exported")
    loaded_config = PreTrainedConfig.from_pretrained(exported)
    assert loaded_config.type == "pi_rl" and loaded_config.stochastic_inference is False
    loaded = get_policy_class("pi_rl").from_pretrained(exported)
    pre, _ = make_pre_post_processors(loaded_config, pretrained_path=str(exported))
    batch = make_obs_batch(4)
    policy.config.stochastic_inference = False
    torch.testing.assert_close(_deterministic_chunk(loaded, batch, 1), _deterministic_chunk(policy, batch, 1))
    assert "NormalizerProcessorStep" in [type(s).__name__ for s in pre.steps]


def test_export_cli_errors(checkpoints, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert export_main(["--checkpoint", str(tmp_path / "missing"), "--output", str(tmp_path / "o")]) == 2
    assert "missing" in capsys.readouterr().err
    # A plain (non pi_rl) checkpoint is rejected by type.
    assert export_main(["--checkpoint", str(checkpoints["smolvla"]), "--output", str(tmp_path / "o")]) == 2
    assert "'smolvla' policy, not pi_rl" in capsys.readouterr().err

    saved = _save_pi_rl(build_policy("smolvla", checkpoints["smolvla"]), tmp_path / "pi_rl")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    assert export_main(["--checkpoint", str(saved), "--output", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and (out / "keep.txt").exists()
    assert export_main(["--checkpoint", str(saved), "--output", str(out), "--overwrite"]) == 0
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
