"""`PiRLConfig`: CLI and JSON parsing of the typed variant/backbone choices, and validation messages."""

from __future__ import annotations

from dataclasses import dataclass

import draccus
import pytest

from lerobot.configs import PreTrainedConfig
from lerobot.configs.train import TrainPipelineConfig

from lerobot_policy_pi_rl.configuration_pi_rl import (
    FlowMLPBackboneConfig,
    FlowNoiseConfig,
    FlowSDEConfig,
    PI0BackboneConfig,
    PI05BackboneConfig,
    PiRLConfig,
    SmolVLABackboneConfig,
    ValueHeadConfig,
)

from conftest import make_flow_mlp_config

BACKBONES = {
    "flow_mlp": FlowMLPBackboneConfig,
    "smolvla": SmolVLABackboneConfig,
    "pi0": PI0BackboneConfig,
    "pi05": PI05BackboneConfig,
}
VARIANTS = {"flow_sde": FlowSDEConfig, "flow_noise": FlowNoiseConfig}


@dataclass
class PolicyCli:
    """The shape of every LeRobot entry point's config: a `policy` field resolved by `--policy.type`."""

    policy: PreTrainedConfig | None = None


# ---------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------


def test_parse_pi_rl_config_directly() -> None:
    cfg = draccus.parse(
        PiRLConfig,
        args=["--variant.type=flow_noise", "--variant.min_std=0.05", "--num_denoise_steps=5", "--chunk_size=8"],
    )
    assert isinstance(cfg.variant, FlowNoiseConfig)
    assert cfg.variant.min_std == 0.05 and cfg.variant.max_std == 0.16
    assert (cfg.num_denoise_steps, cfg.chunk_size) == (5, 8)
    assert isinstance(cfg.backbone, FlowMLPBackboneConfig)


def test_defaults() -> None:
    cfg = PiRLConfig()
    assert cfg.type == "pi_rl"
    assert isinstance(cfg.variant, FlowSDEConfig) and cfg.variant.type == "flow_sde"
    assert cfg.variant.stochastic_steps == "hybrid" and cfg.variant.noise_level == 0.5
    assert cfg.backbone.type == "flow_mlp" and not cfg.backbone.is_vla
    assert cfg.log_prob_level == "chunk"
    assert cfg.push_to_hub is False
    assert cfg.action_delta_indices == list(range(cfg.chunk_size))


@pytest.mark.parametrize("backbone", list(BACKBONES))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_parse_through_policy_type(variant: str, backbone: str) -> None:
    args = ["--policy.type=pi_rl", f"--policy.variant.type={variant}", f"--policy.backbone.type={backbone}"]
    if variant == "flow_sde":
        args += ["--policy.variant.noise_level=0.3", "--policy.variant.stochastic_steps=all"]
    else:
        args += ["--policy.variant.min_std=0.05", "--policy.variant.log_prob_reduction=mean"]
    if backbone != "flow_mlp":
        args += ["--policy.backbone.pretrained_path=/tmp/ckpt", "--policy.backbone.dtype=bfloat16"]
    cfg = draccus.parse(PolicyCli, args=args).policy

    assert isinstance(cfg, PiRLConfig)
    assert isinstance(cfg.variant, VARIANTS[variant]) and cfg.variant.type == variant
    assert isinstance(cfg.backbone, BACKBONES[backbone]) and cfg.backbone.type == backbone
    assert cfg.backbone.is_vla == (backbone != "flow_mlp")
    if variant == "flow_sde":
        assert cfg.variant.noise_level == 0.3 and cfg.variant.stochastic_steps == "all"
    else:
        assert cfg.variant.min_std == 0.05 and cfg.variant.log_prob_reduction == "mean"
    if backbone != "flow_mlp":
        assert cfg.backbone.pretrained_path == "/tmp/ckpt" and cfg.backbone.dtype == "bfloat16"


def test_parse_through_train_pipeline_config(tmp_path) -> None:
    cfg = draccus.parse(
        TrainPipelineConfig,
        args=[
            "--policy.type=pi_rl",
            "--policy.variant.type=flow_noise",
            "--policy.variant.min_std=0.05",
            "--policy.log_prob_level=action",
            "--dataset.repo_id=local/synthetic",
            f"--dataset.root={tmp_path}",
        ],
    )
    assert isinstance(cfg.policy, PiRLConfig)
    assert isinstance(cfg.policy.variant, FlowNoiseConfig) and cfg.policy.variant.min_std == 0.05
    assert cfg.policy.log_prob_level == "action"


@pytest.mark.parametrize(
    ("arg", "bad", "allowed"),
    [
        ("--policy.variant.type", "flow_nois", ["flow_sde", "flow_noise"]),
        ("--policy.backbone.type", "pi1", ["flow_mlp", "smolvla", "pi0", "pi05"]),
    ],
)
def test_unknown_choice_fails_at_parse_time(arg: str, bad: str, allowed: list[str], capsys) -> None:
    with pytest.raises(SystemExit):
        draccus.parse(PolicyCli, args=["--policy.type=pi_rl", f"{arg}={bad}"])
    err = capsys.readouterr().err
    assert f"invalid choice: '{bad}'" in err
    for choice in allowed:
        assert f"'{choice}'" in err


def exception_chain(exc: BaseException) -> list[BaseException]:
    chain = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--policy.variant.type=flow_noise", "--policy.variant.min_std=0.3"],
            "variant.min_std=0.3 must be < variant.max_std=0.16",
        ),
        (["--policy.n_action_steps=20"], "n_action_steps=20 must be in [1, chunk_size=10]"),
    ],
)
def test_validation_error_surfaces_through_the_cli(args: list[str], message: str) -> None:
    """draccus wraps `__post_init__` errors; the original message must still be in the printed chain."""
    with pytest.raises(Exception) as info:
        draccus.parse(PolicyCli, args=["--policy.type=pi_rl", *args])
    causes = exception_chain(info.value)
    assert any(isinstance(e, ValueError) and str(e) == message for e in causes), [str(e) for e in causes]


# ---------------------------------------------------------------------------------------------------------------
# JSON (save_pretrained -> PreTrainedConfig.from_pretrained)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backbone", list(BACKBONES))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_json_round_trip(variant: str, backbone: str, tmp_path) -> None:
    variant_cfg = (
        FlowSDEConfig(noise_level=0.3, noise_level_final=0.1, noise_anneal_updates=7, exclude_last_step=True)
        if variant == "flow_sde"
        else FlowNoiseConfig(min_std=0.05, max_std=0.2, noise_head_hidden_dims=[16, 8], log_prob_reduction="mean")
    )
    backbone_cfg = (
        FlowMLPBackboneConfig(hidden_dim=32, token_dim=8)
        if backbone == "flow_mlp"
        else BACKBONES[backbone](pretrained_path="/tmp/ckpt", freeze_vlm=False)
    )
    cfg = PiRLConfig(
        variant=variant_cfg,
        backbone=backbone_cfg,
        value_head=ValueHeadConfig(hidden_dims=[8], detach_features=False),
        num_denoise_steps=3,
        chunk_size=7,
        n_action_steps=2,
        log_prob_level="element",
    )
    cfg.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").is_file()

    loaded = PreTrainedConfig.from_pretrained(tmp_path)

    assert isinstance(loaded, PiRLConfig)
    assert loaded.variant == cfg.variant and type(loaded.variant) is type(cfg.variant)
    assert loaded.backbone == cfg.backbone and type(loaded.backbone) is type(cfg.backbone)
    assert loaded.value_head == cfg.value_head
    assert (loaded.num_denoise_steps, loaded.chunk_size, loaded.n_action_steps) == (3, 7, 2)
    assert loaded.log_prob_level == "element"


def test_json_round_trip_keeps_features(tmp_path) -> None:
    cfg = make_flow_mlp_config("flow_noise")
    cfg.save_pretrained(tmp_path)
    loaded = PreTrainedConfig.from_pretrained(tmp_path)
    assert loaded.input_features == cfg.input_features
    assert loaded.output_features == cfg.output_features
    assert loaded.action_dim == 4
    assert loaded.state_feature_keys == ["observation.state", "observation.environment_state"]


# ---------------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "pattern"),
    [
        (lambda: PiRLConfig(chunk_size=5, n_action_steps=7), r"n_action_steps=7 .*chunk_size=5"),
        (lambda: PiRLConfig(n_action_steps=0), r"n_action_steps=0 "),
        (lambda: PiRLConfig(num_denoise_steps=0), r"num_denoise_steps=0 must be >= 1"),
        (lambda: FlowNoiseConfig(min_std=0.2, max_std=0.1), r"min_std=0\.2 must be < variant\.max_std=0\.1"),
        (lambda: FlowNoiseConfig(min_std=0.1, max_std=0.1), r"min_std=0\.1 must be < variant\.max_std=0\.1"),
        (lambda: FlowNoiseConfig(min_std=0.0), r"min_std=0\.0 must be > 0"),
        (lambda: FlowNoiseConfig(log_prob_reduction="avg"), r"'avg' is not valid; allowed: sum, mean"),
        (lambda: FlowSDEConfig(noise_level=-0.1), r"noise_level=-0\.1 must be >= 0"),
        (lambda: FlowSDEConfig(noise_level_final=-1.0), r"noise_level_final=-1\.0 must be >= 0"),
        (
            lambda: FlowSDEConfig(stochastic_steps="some"),
            r"stochastic_steps='some' is not valid; allowed: hybrid, all",
        ),
        (
            lambda: PiRLConfig(log_prob_level="token"),
            r"log_prob_level='token' is not valid; allowed: chunk, action, element",
        ),
        (
            lambda: PiRLConfig(variant=FlowSDEConfig(exclude_last_step=True), num_denoise_steps=1),
            r"exclude_last_step.*num_denoise_steps >= 2, got 1",
        ),
        (
            lambda: PiRLConfig(value_head=ValueHeadConfig(feature_source="prefix")),
            r"feature_source.*'prefix' is not valid; allowed: observation, auto",
        ),
        (lambda: ValueHeadConfig(feature_source="cls"), r"'cls' is not valid; allowed: auto, observation, prefix"),
        (lambda: SmolVLABackboneConfig(dtype="float16"), r"dtype='float16' is not valid; allowed: float32, bfloat16"),
        (lambda: FlowMLPBackboneConfig(hidden_dim=0), r"backbone\.hidden_dim=0 must be >= 1"),
    ],
    ids=lambda x: x if isinstance(x, str) else None,
)
def test_invalid_values_are_rejected_with_a_helpful_message(build, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        build()


def test_validate_features_requires_action_and_an_observation() -> None:
    cfg = make_flow_mlp_config()
    cfg.validate_features()  # the valid case passes
    no_action = make_flow_mlp_config(output_features={})
    with pytest.raises(ValueError, match="needs an 'action' output feature"):
        no_action.validate_features()
    no_obs = make_flow_mlp_config(input_features={})
    with pytest.raises(ValueError, match="at least one state"):
        no_obs.validate_features()
