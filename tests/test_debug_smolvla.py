"""The debug-size SmolVLA (`backbone.debug_size`): LeRobot's SmolVLA built at a CPU size from the pi_rl config, its
locally written VLM and tokenizer, SFT loss, save/reload on a machine without the VLM directory, bad values."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lerobot.configs.types import FeatureType, PolicyFeature
from lerobot.utils.constants import ACTION, OBS_LANGUAGE_TOKENS, OBS_STATE

from lerobot_policy_pi_rl.backbones import debug_smolvla as dbg
from lerobot_policy_pi_rl.configuration_pi_rl import FlowSDEConfig, PiRLConfig, SmolVLABackboneConfig
from lerobot_policy_pi_rl.modeling_pi_rl import PiRLPolicy
from lerobot_policy_pi_rl.processor_pi_rl import make_pi_rl_pre_post_processors

IMAGE_KEY = "observation.images.front"
STATE_DIM, ACTION_DIM = 21, 4


@pytest.fixture(autouse=True)
def lerobot_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Debug VLM directories go to a per-test HF_LEROBOT_HOME."""
    import lerobot.utils.constants as constants

    home = tmp_path / "lerobot_home"
    monkeypatch.setattr(constants, "HF_LEROBOT_HOME", home)
    return home


def make_config(size: str = "tiny", **backbone) -> PiRLConfig:
    return PiRLConfig(
        backbone=SmolVLABackboneConfig(debug_size=size, **backbone),
        variant=FlowSDEConfig(noise_level=0.5),
        input_features={
            IMAGE_KEY: PolicyFeature(type=FeatureType.VISUAL, shape=(3, 32, 32)),
            OBS_STATE: PolicyFeature(type=FeatureType.STATE, shape=(STATE_DIM,)),
        },
        output_features={ACTION: PolicyFeature(type=FeatureType.ACTION, shape=(ACTION_DIM,))},
        device="cpu",
        chunk_size=6,
        n_action_steps=3,
        num_denoise_steps=3,
    )


def stats() -> dict[str, dict[str, torch.Tensor]]:
    return {
        OBS_STATE: {"mean": torch.zeros(STATE_DIM), "std": torch.ones(STATE_DIM)},
        ACTION: {"mean": torch.zeros(ACTION_DIM), "std": torch.ones(ACTION_DIM)},
        IMAGE_KEY: {"mean": torch.zeros(3, 1, 1), "std": torch.ones(3, 1, 1)},
    }


def observation(batch: int = 2, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        IMAGE_KEY: torch.rand(batch, 3, 32, 32, generator=g),
        OBS_STATE: torch.randn(batch, STATE_DIM, generator=g),
        "task": ["Pick up the cube and lift it."] * batch,
    }


def test_tokenizer_lowercases_splits_punctuation_and_maps_unknown_words(lerobot_home: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(dbg.ensure_debug_vlm("tiny"))
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("Pick up the cube and lift it.").input_ids)
    assert tokens == ["pick", "up", "the", "cube", "and", "lift", "it", "."]
    assert tokenizer.convert_ids_to_tokens(tokenizer("juggle the cube").input_ids) == ["<unk>", "the", "cube"]
    assert dbg.debug_vlm_dir("tiny").is_relative_to(lerobot_home)


@pytest.mark.parametrize("size", sorted(dbg.DEBUG_SIZES))
def test_debug_policy_is_upstream_smolvla_at_the_requested_size(size: str) -> None:
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    config = make_config(size, freeze_vlm=False)
    policy = PiRLPolicy(config)
    spec = dbg.DEBUG_SIZES[size]
    upstream = policy.backbone.policy
    assert isinstance(upstream, SmolVLAPolicy)
    text = upstream.model.vlm_with_expert.config.text_config
    assert (text.hidden_size, text.num_hidden_layers) == (spec.text_width, spec.text_layers)
    # The pi_rl chunk geometry and denoise steps are the upstream policy's.
    assert (upstream.config.chunk_size, upstream.config.n_action_steps, upstream.config.num_steps) == (6, 3, 3)
    assert upstream.config.vlm_model_name == str(dbg.debug_vlm_dir(size))
    # SFT (freeze_vlm=false) trains every upstream weight: the VLM starts random.
    assert all(p.requires_grad for p in upstream.parameters())
    assert config.backbone.upstream_config["type"] == "smolvla"


def test_sft_loss_trains_and_rl_freezes_the_vlm() -> None:
    config = make_config(freeze_vlm=False)
    policy = PiRLPolicy(config)
    pre, _ = make_pi_rl_pre_post_processors(config, stats())
    batch = pre(observation(batch=4))
    assert (batch[OBS_LANGUAGE_TOKENS] != 1).all()  # no <unk> in the instruction
    batch[ACTION] = torch.randn(4, 6, ACTION_DIM)
    batch["action_is_pad"] = torch.zeros(4, 6, dtype=torch.bool)
    loss, _ = policy.forward(batch)
    loss.backward()
    vision = policy.backbone.model.vlm_with_expert.get_vlm_model().vision_model
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in vision.parameters())

    frozen = PiRLPolicy(make_config(freeze_vlm=True))
    trainable = {id(p) for p in frozen.backbone.rl_trainable_parameters()}
    assert not any(id(p) in trainable for m in frozen.backbone.vlm_modules() for p in m.parameters())
    assert trainable


def test_saved_policy_reloads_where_the_vlm_directory_is_missing(tmp_path: Path) -> None:
    import shutil

    config = make_config()
    policy = PiRLPolicy(config)
    pre, post = make_pi_rl_pre_post_processors(config, stats())
    policy.save_pretrained(tmp_path / "ckpt")
    pre.save_pretrained(tmp_path / "ckpt")
    post.save_pretrained(tmp_path / "ckpt")
    batch = pre(observation())
    torch.manual_seed(0)
    expected = policy.eval().predict_action_chunk(batch)

    shutil.rmtree(dbg.debug_vlm_dir("tiny"))  # e.g. another machine, or a cleared cache
    reloaded = PiRLPolicy.from_pretrained(tmp_path / "ckpt")
    assert reloaded.config.backbone.debug_size == "tiny"
    assert (dbg.debug_vlm_dir("tiny") / "config.json").is_file()
    pre2, _ = make_pi_rl_pre_post_processors(reloaded.config, stats())
    batch2 = pre2(observation())
    torch.manual_seed(0)
    torch.testing.assert_close(reloaded.eval().predict_action_chunk(batch2), expected)


def test_bad_debug_settings_name_the_value() -> None:
    with pytest.raises(ValueError, match="debug_size='huge'.*tiny"):
        SmolVLABackboneConfig(debug_size="huge")
    with pytest.raises(ValueError, match="pretrained_path='lerobot/smolvla_base'"):
        SmolVLABackboneConfig(debug_size="tiny", pretrained_path="lerobot/smolvla_base")


def test_a_writer_that_loses_the_race_keeps_the_winners_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Actors and evaluation workers may write the directory at the same time: the loser's rename fails."""
    target = dbg.debug_vlm_dir("tiny")

    def racing_rename(src, dst) -> None:
        dbg.write_smolvlm(Path(dst), dbg.DEBUG_SIZES["tiny"])  # another process finished first
        (Path(dst) / "marker").write_text("winner")
        raise OSError(39, "Directory not empty")

    monkeypatch.setattr(dbg.os, "rename", racing_rename)
    assert dbg.ensure_debug_vlm("tiny") == target
    assert (target / "marker").read_text() == "winner"
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no staging directory left behind
