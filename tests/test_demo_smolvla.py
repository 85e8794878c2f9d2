"""`make demo BACKBONE=smolvla` in miniature, both variants: the demo pipeline's own command line runs every stage
as a real subprocess (recording, LeRobot's `lerobot-train` building the debug SmolVLA, evaluation, the PI-RL
learner and actor over gRPC, evaluation, report) at toy sizes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lerobot_policy_pi_rl.demo import pipeline


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["flow_noise", "flow_sde"])
def test_smolvla_demo_runs_every_stage(variant: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The debug VLM is written under this test's HF_LEROBOT_HOME by the first stage that needs it.
    monkeypatch.setenv("HF_LEROBOT_HOME", str(tmp_path / "lerobot_home"))
    monkeypatch.setenv("MUJOCO_GL", os.environ.get("MUJOCO_GL", "osmesa"))
    run_dir = tmp_path / "run"
    code = pipeline.main([
        "--backbone", "smolvla", "--variant", variant, "--run_dir", str(run_dir),
        "--demo_episodes", "2", "--sft_steps", "6", "--sft_batch_size", "8", "--eval_episodes", "4",
        "--eval_workers", "1", "--rl_updates", "2", "--rollout_chunks", "16", "--n_envs", "2", "--num_actors", "1",
    ])
    assert code == 0
    report = json.loads((run_dir / "report.json").read_text())
    assert (report["backbone"], report["variant"]) == ("smolvla", variant)
    assert set(report["evals"]) == {"sft", "pi_rl"}
    assert all(e["num_episodes"] == 4 for e in report["evals"].values())
    assert report["pi_rl_env_steps"] > 0
    # The SFT checkpoint is the debug SmolVLA, and PI-RL ran it with its VLM frozen.
    sft_config = json.loads((run_dir / "sft/checkpoints/last/pretrained_model/config.json").read_text())
    assert sft_config["backbone"]["type"] == "smolvla" and sft_config["backbone"]["debug_size"] == "tiny"
    rl_config = json.loads((run_dir / "pi_rl/checkpoints/last/pretrained_model/config.json").read_text())
    assert rl_config["backbone"]["freeze_vlm"] is True and rl_config["variant"]["type"] == variant
    assert (tmp_path / "lerobot_home" / "pi_rl_debug_vlm").is_dir()
    text = (run_dir / "report.md").read_text()
    assert "Backbone `smolvla`" in text and "a blank 32 px camera frame" in text
    assert "### Where the PI-RL stage's time goes" in text and "actor0:" in text and "learner:" in text
