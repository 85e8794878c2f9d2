"""`PiRLConfig`: CLI and JSON parsing of the typed variant/backbone choices, and validation messages."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
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
    load_policy_config,
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


# ---------------------------------------------------------------------------------------------------------------
# RL-runtime fields on the policy config (`lerobot-pi-rl-*` parse through `PiRLTrainRLServerPipelineConfig`)
# ---------------------------------------------------------------------------------------------------------------

# Fields LeRobot's SAC loops read from their own policy config, which nothing on the PI-RL path reads.
SAC_ONLY_FIELDS = (
    "storage_device", "online_steps", "online_step_before_learning", "online_buffer_capacity",
    "offline_buffer_capacity", "async_prefetch", "num_discrete_actions",
)


def test_pi_rl_config_carries_no_field_only_sac_reads() -> None:
    names = {f.name for f in dataclasses.fields(PiRLConfig)}
    assert names.isdisjoint(SAC_ONLY_FIELDS), sorted(names & set(SAC_ONLY_FIELDS))
    # What the runtime does read stays.
    assert {"dataset_stats", "actor_learner_config", "concurrency", "push_to_hub"} <= names


def parse_runtime(*args: str):
    from lerobot_policy_pi_rl.runtime.cli import register_plugin
    from lerobot_policy_pi_rl.runtime.config import parse_config

    register_plugin()
    return parse_config(["--env.type=pi_rl_pickcube", "--output_dir=/tmp/pi_rl_unused", *args])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--policy.type=pi_rl", "--algorithm.type=sac"], "algorithm.type=sac needs its own policy config"),
        (
            ["--policy.type=pi_rl", "--policy.concurrency.actor=processes"],
            "policy.concurrency.actor='processes': a pi_rl run runs LeRobot's transport workers as threads",
        ),
        (
            ["--policy.type=pi_rl", "--policy.concurrency.learner=processes"],
            "policy.concurrency.learner='processes'",
        ),
    ],
)
def test_runtime_rejects_settings_a_pi_rl_run_would_ignore(args: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_runtime(*args)


def test_push_to_hub_on_an_rl_run_warns_that_nothing_pushes(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        cfg = parse_runtime("--policy.type=pi_rl", "--policy.push_to_hub=true")
    assert "the RL learner does not push to the hub" in caplog.text
    assert cfg.policy.push_to_hub is False  # no repo_id: off, so a reused checkpoint does not demand one
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        cfg = parse_runtime("--policy.type=pi_rl", "--policy.push_to_hub=true", "--policy.repo_id=me/run")
    assert "the RL learner does not push to the hub" in caplog.text
    assert cfg.policy.push_to_hub is True


# ---------------------------------------------------------------------------------------------------------------
# Configs saved before the SAC-only fields were removed
# ---------------------------------------------------------------------------------------------------------------

OLD_VALUES = {
    "storage_device": "cpu", "online_steps": 1_000_000, "online_step_before_learning": 0,
    "online_buffer_capacity": 100_000, "offline_buffer_capacity": 100_000, "async_prefetch": False,
    "num_discrete_actions": None,
}


def test_old_values_cover_every_removed_field() -> None:
    assert set(OLD_VALUES) == set(SAC_ONLY_FIELDS)


def save_with_extra_fields(cfg: PiRLConfig, directory, extra: dict) -> None:
    cfg.save_pretrained(directory)
    path = directory / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **extra}))


def test_a_policy_config_saved_with_the_removed_fields_still_loads(tmp_path, caplog) -> None:
    cfg = make_flow_mlp_config("flow_noise")
    cfg.save_pretrained(tmp_path / "new")
    save_with_extra_fields(cfg, tmp_path / "old", OLD_VALUES)
    with caplog.at_level(logging.WARNING):
        loaded = load_policy_config(tmp_path / "old")
    assert loaded == PreTrainedConfig.from_pretrained(tmp_path / "new")
    warnings = [r.getMessage() for r in caplog.records if "no longer" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    for name in SAC_ONLY_FIELDS:
        assert name in warnings[0]


def test_only_the_removed_fields_are_tolerated(tmp_path) -> None:
    save_with_extra_fields(make_flow_mlp_config(), tmp_path, {**OLD_VALUES, "online_stepz": 3})
    with pytest.raises(Exception) as info:
        load_policy_config(tmp_path)
    assert any("online_stepz" in str(e) for e in exception_chain(info.value))


def test_rl_runs_start_from_configs_saved_with_the_removed_fields(tmp_path) -> None:
    """`lerobot-pi-rl-* --policy.path=<old SFT checkpoint>` and `--config_path=<old run's train_config.json>`."""
    save_with_extra_fields(make_flow_mlp_config("flow_noise"), tmp_path / "sft", OLD_VALUES)
    cfg = parse_runtime(f"--policy.path={tmp_path / 'sft'}", "--policy.device=cpu")
    assert isinstance(cfg.policy, PiRLConfig) and isinstance(cfg.policy.variant, FlowNoiseConfig)

    run = {
        "policy": {"type": "pi_rl", "device": "cpu", "chunk_size": 8, **OLD_VALUES},
        "env": {"type": "pi_rl_pickcube"}, "algorithm": {"type": "pi_rl"}, "output_dir": str(tmp_path / "rl"),
    }
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "train_config.json").write_text(json.dumps(run))
    for config_path in (tmp_path / "run" / "train_config.json", tmp_path / "run"):
        cfg = parse_runtime(f"--config_path={config_path}")
        assert isinstance(cfg.policy, PiRLConfig) and cfg.policy.chunk_size == 8


def test_an_old_flow_sde_checkpoint_starts_a_flow_noise_run(tmp_path) -> None:
    """Both updates at once: removed fields dropped and the variant switched to its own defaults."""
    save_with_extra_fields(make_flow_mlp_config("flow_sde"), tmp_path / "sft", OLD_VALUES)
    cfg = parse_runtime(f"--policy.path={tmp_path / 'sft'}", "--policy.variant.type=flow_noise",
                        "--policy.variant.max_std=0.2")
    assert isinstance(cfg.policy.variant, FlowNoiseConfig) and cfg.policy.variant.max_std == 0.2
    assert cfg.policy.variant.min_std == FlowNoiseConfig().min_std
