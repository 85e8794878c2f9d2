"""Supervised fine-tuning with LeRobot's own `lerobot-train` on a synthetic dataset, end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from lerobot.configs import PreTrainedConfig
from lerobot.policies.factory import make_pre_post_processors
from lerobot.utils.constants import OBS_ENV_STATE, OBS_STATE

from lerobot_policy_pi_rl.configuration_pi_rl import FlowNoiseConfig, PiRLConfig
from lerobot_policy_pi_rl.modeling_pi_rl import PiRLPolicy

from conftest import ACTION_DIM, ENV_DIM, STATE_DIM, SYNTHETIC_REPO_ID, subprocess_env

LEROBOT_TRAIN = Path(sys.executable).parent / "lerobot-train"


def test_lerobot_train_sft_writes_a_loadable_pi_rl_checkpoint(synthetic_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = [
        str(LEROBOT_TRAIN),
        "--policy.type=pi_rl",
        "--policy.backbone.type=flow_mlp",
        "--policy.backbone.hidden_dim=64",
        "--policy.variant.type=flow_noise",  # the noise head must be created, saved and reloaded too
        "--policy.device=cpu",
        f"--dataset.repo_id={SYNTHETIC_REPO_ID}",
        f"--dataset.root={synthetic_dataset}",
        "--steps=20",
        "--batch_size=8",
        "--num_workers=0",
        "--log_freq=10",
        "--save_freq=20",
        f"--output_dir={out}",
        "--policy.push_to_hub=false",
        "--wandb.enable=false",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    logs = proc.stdout + proc.stderr
    assert "flow_mse" in logs  # the policy's own loss info reached LeRobot's logger
    assert "step:20" in logs

    pretrained = out / "checkpoints" / "000020" / "pretrained_model"
    expected_files = (
        "config.json",
        "model.safetensors",
        "train_config.json",
        "policy_preprocessor.json",
        "policy_postprocessor.json",
    )
    for name in expected_files:
        assert (pretrained / name).is_file(), name
    assert json.loads((pretrained / "config.json").read_text())["type"] == "pi_rl"
    assert (out / "checkpoints" / "last").resolve() == (out / "checkpoints" / "000020").resolve()

    cfg = PreTrainedConfig.from_pretrained(pretrained)
    assert isinstance(cfg, PiRLConfig) and isinstance(cfg.variant, FlowNoiseConfig)
    assert cfg.backbone.hidden_dim == 64
    policy = PiRLPolicy.from_pretrained(pretrained)  # strict: every weight incl. noise and value heads
    assert policy.noise_head is not None
    pre, post = make_pre_post_processors(cfg, pretrained_path=str(pretrained))

    obs = {OBS_STATE: torch.zeros(STATE_DIM), OBS_ENV_STATE: torch.zeros(ENV_DIM)}
    action = post(policy.select_action(pre(obs)))
    assert action.shape == (1, ACTION_DIM)
    assert torch.isfinite(action).all()
    sample = policy.sample_chain(pre(obs))
    assert torch.isfinite(sample.log_prob).all()
