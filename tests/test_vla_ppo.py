"""PPO through every VLA backbone (tiny SmolVLA, π0, π0.5) with LeRobot's real pre/post-processors, as the
runtime wires them: the learner publishes its weights, the actor loads them, preprocesses one observation per env
(`PiRLActor.preprocess_one`), samples one batch in eval mode; the learner scores the recorded chains in train mode
in minibatches of another composition and updates; then save -> load -> export.

π0/π0.5's processors load their tokenizer by the hub id "google/paligemma-3b-pt-224" (gated): the whole module
runs inside `tiny_vla.paligemma_tokenizer_cache`, a hub cache holding a tiny stand-in under that id, so LeRobot's
own `TokenizerProcessorStep` loads and runs it offline.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch

from lerobot.policies import make_pre_post_processors
from lerobot.utils.constants import OBS_LANGUAGE_TOKENS

from lerobot_policy_pi_rl.configuration_pi_rl import (
    FlowNoiseConfig,
    FlowSDEConfig,
    PI0BackboneConfig,
    PI05BackboneConfig,
    PiRLConfig,
    SmolVLABackboneConfig,
    ValueHeadConfig,
)
from lerobot_policy_pi_rl.export import export_checkpoint
from lerobot_policy_pi_rl.modeling_pi_rl import PiRLPolicy
from lerobot_policy_pi_rl.rl.algorithm import PiRLAlgorithm
from lerobot_policy_pi_rl.rl.config import PiRLAlgorithmConfig

import tiny_vla as tv

K = 4
#: Envs of one actor batch; the learner's minibatches (4 rows, shuffled) are composed differently.
ROWS = 6
MINIBATCH = 4
EPOCHS = 2
TASKS = ["pick up the red cube", "put it in the box", "move to the green cube"]
BACKBONE_CONFIGS = {"smolvla": SmolVLABackboneConfig, "pi0": PI0BackboneConfig, "pi05": PI05BackboneConfig}
VARIANTS = {
    "flow_sde": lambda: FlowSDEConfig(noise_level=0.5, stochastic_steps="hybrid"),
    "flow_noise": lambda: FlowNoiseConfig(noise_head_hidden_dims=[32]),
}
BACKBONES = [
    "smolvla",
    pytest.param("pi0", marks=pytest.mark.slow),
    pytest.param("pi05", marks=pytest.mark.slow),
]


@pytest.fixture(scope="module", autouse=True)
def paligemma_tokenizer(tmp_path_factory: pytest.TempPathFactory):
    with tv.paligemma_tokenizer_cache(tmp_path_factory.mktemp("hf_hub_cache")) as root:
        yield root


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory, paligemma_tokenizer) -> dict[str, Path]:
    """Plain LeRobot checkpoints *with* their processors, built lazily once per backbone type."""
    root = tmp_path_factory.mktemp("vla_ppo_checkpoints")

    class _Lazy(dict):
        def __missing__(self, kind: str) -> Path:
            if kind == "smolvla":
                path = tv.build_tiny_smolvla_checkpoint(root / kind)
            else:
                path = tv.build_tiny_pi_checkpoint(root / kind, kind, with_processors=True)
            self[kind] = path
            return path

    return _Lazy()


def _tiny_context(kind: str):
    """π0/π0.5 must be (re)built under the tiny PaliGemma patch; SmolVLA needs nothing."""
    return tv.tiny_paligemma(kind) if kind in ("pi0", "pi05") else contextlib.nullcontext()


def make_config(kind: str, checkpoint: Path, variant: str) -> PiRLConfig:
    inputs, outputs = tv.features()
    return PiRLConfig(
        variant=VARIANTS[variant](),
        backbone=BACKBONE_CONFIGS[kind](pretrained_path=str(checkpoint)),
        value_head=ValueHeadConfig(hidden_dims=[32]),
        num_denoise_steps=K,
        chunk_size=tv.CHUNK_SIZE,
        n_action_steps=5,
        device="cpu",
        input_features=inputs,
        output_features=outputs,
    )


def build_policy(kind: str, checkpoint: Path, variant: str, *, seed: int) -> PiRLPolicy:
    """`seed` initialises the heads: actor and learner start apart until the actor loads published weights."""
    torch.manual_seed(seed)
    with _tiny_context(kind):
        return PiRLPolicy(make_config(kind, checkpoint, variant))


def algorithm_for(policy: PiRLPolicy) -> PiRLAlgorithm:
    config = PiRLAlgorithmConfig(
        policy_config=policy.config, minibatch_size=MINIBATCH, update_epochs=EPOCHS, critic_warmup_updates=0
    )
    return PiRLAlgorithm(policy, config)


def raw_env_observation(i: int, seed: int) -> dict:
    """Env i's observation as an env stream yields it (no batch dimension), with its task string."""
    obs = tv.raw_observation(1, seed=seed * 100 + i, with_task=False)
    return {**{k: v[0] for k, v in obs.items()}, "task": TASKS[i % len(TASKS)]}


def actor_batch(preprocessor, seed: int) -> dict[str, torch.Tensor]:
    """The actor's batch: each env's observation through the preprocessor alone, then stacked."""
    rows = []
    for i in range(ROWS):
        processed = preprocessor(raw_env_observation(i, seed))
        rows.append({k: v for k, v in processed.items() if k.startswith("observation") and torch.is_tensor(v)})
    return {k: torch.cat([r[k] for r in rows]) for k in rows[0]}


def assert_log_prob_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """|learner - actor| <= 1e-5 * max(1, |log-prob|) (float32 on CPU: re-scoring reproduces the sample)."""
    tol = 1e-5 * torch.clamp(expected.abs(), min=1.0)
    assert bool(((actual - expected).abs() <= tol).all()), f"log-probs differ: {actual} vs {expected}"


def frozen_vlm_names(policy: PiRLPolicy) -> set[str]:
    vlm = {id(p) for m in policy.backbone.vlm_modules() for p in m.parameters()}
    return {name for name, p in policy.named_parameters() if id(p) in vlm}


def sample_and_publish(learner_algo: PiRLAlgorithm, actor_algo: PiRLAlgorithm, preprocessor, seed: int):
    """One actor round: load the learner's published weights, sample one batch in eval mode."""
    actor_algo.load_weights(learner_algo.get_weights())
    actor = actor_algo.policy.eval()
    batch = actor_batch(preprocessor, seed)
    torch.manual_seed(seed)
    sample = actor.sample_chain(batch)
    return batch, sample, tv.vla_rollout(batch, sample, version=actor_algo.policy_version)


def check_published_weights(learner_algo: PiRLAlgorithm) -> None:
    """`get_weights` holds exactly the trainable set and buffers, at the learner's current values."""
    policy = learner_algo.policy
    weights = learner_algo.get_weights()
    assert weights["policy_version"] == learner_algo.policy_version
    published = set(weights["state_dict"])
    trainable = {name for name, p in policy.named_parameters() if p.requires_grad}
    buffers = {name for name, _ in policy.named_buffers()} & set(policy.state_dict())
    assert published == trainable | buffers
    frozen = frozen_vlm_names(policy)
    assert frozen and not (published & frozen), sorted(published & frozen)[:5]
    assert not published & {name for name, p in policy.named_parameters() if not p.requires_grad}
    state = policy.state_dict()
    assert all(torch.equal(weights["state_dict"][k], state[k]) for k in published)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("kind", BACKBONES)
def test_ppo_update_through_the_real_processors(kind: str, variant: str, checkpoints, tmp_path: Path) -> None:
    checkpoint = checkpoints[kind]
    learner = build_policy(kind, checkpoint, variant, seed=0)
    learner_algo = algorithm_for(learner)
    actor = build_policy(kind, checkpoint, variant, seed=1)
    actor_algo = algorithm_for(actor)
    # The runtime's processors: LeRobot's factory dispatching to the plugin (the backbone checkpoint's own
    # tokenizer, image and normalization steps, plus the default task).
    preprocessor, postprocessor = make_pre_post_processors(policy_cfg=actor.config, pretrained_path=None)
    assert "TokenizerProcessorStep" in [type(s).__name__ for s in preprocessor.steps]

    # An observation without a task gets the configured default task, before tokenization.
    no_task = {k: v for k, v in raw_env_observation(0, seed=0).items() if k != "task"}
    with_default = {**no_task, "task": actor.config.backbone.default_task}
    defaulted, explicit = preprocessor(dict(no_task)), preprocessor(with_default)
    assert defaulted["task"] == explicit["task"]
    torch.testing.assert_close(defaulted[OBS_LANGUAGE_TOKENS], explicit[OBS_LANGUAGE_TOKENS], rtol=0, atol=0)

    # Publication: the actor starts with other heads; after loading it is the learner, bit for bit.
    assert not all(torch.equal(actor.state_dict()[k], v) for k, v in learner.state_dict().items())
    check_published_weights(learner_algo)
    batch, sample, rollout = sample_and_publish(learner_algo, actor_algo, preprocessor, seed=1)
    assert all(torch.equal(actor.state_dict()[k], v) for k, v in learner.state_dict().items())
    assert not actor.training
    assert int(batch[OBS_LANGUAGE_TOKENS].max()) < tv.TINY_VOCAB or kind == "smolvla"
    assert batch[OBS_LANGUAGE_TOKENS].shape[0] == ROWS
    # Envs 0 and 3 share a task, not a state: only π0.5 puts the (discretized) state into the prompt.
    same_prompt = torch.equal(batch[OBS_LANGUAGE_TOKENS][0], batch[OBS_LANGUAGE_TOKENS][3])
    assert same_prompt == (kind != "pi05")
    assert not torch.equal(batch[OBS_LANGUAGE_TOKENS][0], batch[OBS_LANGUAGE_TOKENS][1])
    actions = postprocessor(sample.action_chunk[:, : actor.config.n_action_steps])
    assert actions.shape == (ROWS, actor.config.n_action_steps, tv.ACTION_DIM) and torch.isfinite(actions).all()

    # Learner side: train mode, other minibatch composition, same log-probs.
    learner.train()
    with torch.no_grad():
        for rows in torch.randperm(ROWS, generator=torch.Generator().manual_seed(0)).split(MINIBATCH):
            obs = {k: v[rows] for k, v in rollout.observations.items()}
            evaluation = learner.evaluate_chain(obs, rollout.chain_record(rows))
            assert_log_prob_close(evaluation.log_prob, rollout.log_prob[rows])

    before = {name: p.detach().clone() for name, p in learner.named_parameters()}
    trainable = {name for name, p in learner.named_parameters() if p.requires_grad}
    result = learner_algo.update_rollout(rollout)  # raises RatioMismatchError if the first minibatch is off
    assert result.steps_taken == EPOCHS * -(-ROWS // MINIBATCH) and result.steps_skipped == 0
    assert result.version_moved and learner_algo.policy_version == 1

    after = dict(learner.named_parameters())
    unchanged_trainable = sorted(n for n in trainable if torch.equal(after[n], before[n]))
    assert not unchanged_trainable, f"trainable weights that did not move: {unchanged_trainable[:5]}"
    frozen = frozen_vlm_names(learner)
    assert frozen and not (frozen & trainable)
    moved_frozen = sorted(n for n in before if n not in trainable and not torch.equal(after[n], before[n]))
    assert not moved_frozen, f"frozen weights that moved: {moved_frozen[:5]}"
    check_published_weights(learner_algo)

    # Second round at version 1: the actor with the newly published weights samples, the learner's guard holds.
    _, _, rollout = sample_and_publish(learner_algo, actor_algo, preprocessor, seed=2)
    assert actor_algo.policy_version == 1
    assert all(torch.equal(actor.state_dict()[k], v) for k, v in learner.state_dict().items())
    assert learner_algo.update_rollout(rollout).steps_taken > 0

    check_save_load_export(kind, learner, preprocessor, postprocessor, tmp_path)


def _deterministic_chunk(policy, batch: dict, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    with torch.no_grad():
        return policy.predict_action_chunk(batch)


def check_save_load_export(kind: str, trained: PiRLPolicy, preprocessor, postprocessor, tmp_path: Path) -> None:
    """The trained policy saved as the learner's checkpoint does, reloaded, and exported to a plain checkpoint
    of the backbone type that acts like the trained policy's deterministic ODE."""
    import importlib

    saved = tmp_path / "pretrained_model"
    trained.save_pretrained(saved)
    preprocessor.save_pretrained(saved)
    postprocessor.save_pretrained(saved)

    trained.eval()
    with _tiny_context(kind):
        loaded = PiRLPolicy.from_pretrained(saved)
    loaded_pre, loaded_post = make_pre_post_processors(policy_cfg=loaded.config, pretrained_path=str(saved))
    batch = actor_batch(loaded_pre, seed=3)
    torch.testing.assert_close(batch, actor_batch(preprocessor, seed=3), rtol=0, atol=0)
    for name, tensor in trained.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    expected = _deterministic_chunk(trained, batch, 4)
    torch.testing.assert_close(_deterministic_chunk(loaded, batch, 4), expected, rtol=0, atol=0)
    with torch.no_grad():
        a = trained.sample_chain(batch, generator=torch.Generator().manual_seed(5))
        b = loaded.sample_chain(batch, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(b.log_prob, a.log_prob, rtol=0, atol=0)
    torch.testing.assert_close(b.value, a.value, rtol=0, atol=0)

    with _tiny_context(kind):
        exported = export_checkpoint(saved, tmp_path / "exported")
    config = json.loads((exported / "config.json").read_text())
    steps_field = "num_steps" if kind == "smolvla" else "num_inference_steps"
    assert config["type"] == kind and config[steps_field] == K
    modeling = importlib.import_module(f"lerobot.policies.{kind}.modeling_{kind}")
    plain_cls = {"smolvla": "SmolVLAPolicy", "pi0": "PI0Policy", "pi05": "PI05Policy"}[kind]
    with _tiny_context(kind), contextlib.redirect_stdout(None):
        plain = getattr(modeling, plain_cls).from_pretrained(exported)
    # π0's `from_pretrained` falls back to random weights on a failed load: compare every tensor.
    upstream = trained.backbone.policy.state_dict()
    for name, tensor in plain.state_dict().items():
        assert torch.equal(tensor, upstream[name]), name
    plain_pre, plain_post = make_pre_post_processors(plain.config, pretrained_path=str(exported))
    obs = raw_env_observation(0, seed=6)
    plain_batch = plain_pre(dict(obs))
    pi_batch = loaded_pre(dict(obs))
    torch.testing.assert_close(plain_batch[OBS_LANGUAGE_TOKENS], pi_batch[OBS_LANGUAGE_TOKENS], rtol=0, atol=0)

    expected = _deterministic_chunk(trained, pi_batch, 7)
    torch.manual_seed(7)
    noise = torch.randn(1, tv.CHUNK_SIZE, trained.backbone.model_action_dim)
    with torch.no_grad():
        actual = plain.predict_action_chunk(plain_batch, noise=noise)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(plain_post(actual), loaded_post(expected), rtol=1e-5, atol=1e-5)
