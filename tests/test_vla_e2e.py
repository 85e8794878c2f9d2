"""End to end with a VLA on a LeRobot sim: `lerobot-pi-rl-train` with a tiny SmolVLA over real gRPC on LeRobot's
own multi-task `metaworld` env, learner SIGKILL + `--resume=true`, `lerobot-pi-rl-export` to a plain `smolvla`
checkpoint, and LeRobot's own `lerobot-eval` on the export.

The SmolVLA is LeRobot's real model and processor code at toy size (tests/tiny_vla.py), with the env's features:
`observation.image` (MetaWorld's 480x480 `pixels/top`, resized with padding to the tiny VLM's 64x64) and a 4-d
`observation.state` (`agent_pos`), 4-d actions. MetaWorld episodes last 500 steps (~100 ms each on a small CPU,
mostly rendering): the rollout size drives the updates here, no episode ends during training.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest
import torch

import tiny_vla as tv
from conftest import subprocess_env

from lerobot.configs.types import FeatureType, PolicyFeature
from lerobot.utils.constants import ACTION, OBS_IMAGE, OBS_LANGUAGE_TOKENS, OBS_STATE

TASKS = {"push-v3": "Push the puck to a goal", "drawer-open-v3": "Open a drawer"}
STATE_DIM = ACTION_DIM = 4
K = 2  # pi_rl denoise steps
UPDATES, CHECKPOINT_EVERY = 4, 2
ROLLOUT_CHUNKS = 4  # two chunk steps of the two envs per update


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


EVAL_EPISODE_STEPS = 20
# LeRobot's `lerobot-eval` (its `main`, unchanged) with MetaWorld episodes cut to EVAL_EPISODE_STEPS: the env fixes
# `_max_episode_steps = 500` and `lerobot-eval` takes its limit from there (`--env.episode_length` is not used),
# so no flag shortens an episode; a full one costs minutes of rendering on a small CPU.
SHORT_EPISODE_EVAL = f"""
import sys
import lerobot.envs.metaworld as metaworld_env
from lerobot.scripts import lerobot_eval

init = metaworld_env.MetaworldEnv.__init__

def short_episodes(self, *args, **kwargs):
    init(self, *args, **kwargs)
    self._max_episode_steps = {EVAL_EPISODE_STEPS}

metaworld_env.MetaworldEnv.__init__ = short_episodes
sys.argv = ["lerobot-eval", *sys.argv[1:]]
lerobot_eval.main()
"""


def build_metaworld_smolvla(root: Path) -> Path:
    """A plain `smolvla` checkpoint (tiny VLM) whose features are those of LeRobot's `metaworld` env type.

    The tiny VLM's word-level vocabulary holds the MetaWorld instructions' words, so the two tasks tokenize apart.
    """
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    words = sorted({w for text in TASKS.values() for w in text.split()} - set(tv.TASK_WORDS))
    with mock.patch.object(tv, "TASK_WORDS", tv.TASK_WORDS + words):
        vlm_dir = tv.write_tiny_smolvlm(root / "vlm", image_size=64)
    config = SmolVLAConfig(
        input_features={
            OBS_IMAGE: PolicyFeature(type=FeatureType.VISUAL, shape=(3, 480, 480)),
            OBS_STATE: PolicyFeature(type=FeatureType.STATE, shape=(STATE_DIM,)),
        },
        output_features={ACTION: PolicyFeature(type=FeatureType.ACTION, shape=(ACTION_DIM,))},
        device="cpu",
        chunk_size=tv.CHUNK_SIZE,
        n_action_steps=5,
        vlm_model_name=str(vlm_dir),
        load_vlm_weights=False,
        num_vlm_layers=2,
        resize_imgs_with_padding=(64, 64),
        tokenizer_max_length=16,
        push_to_hub=False,
    )
    stats = {
        OBS_STATE: {"mean": torch.zeros(STATE_DIM), "std": torch.full((STATE_DIM,), 0.5),
                    "min": -torch.ones(STATE_DIM), "max": torch.ones(STATE_DIM)},
        ACTION: {"mean": torch.zeros(ACTION_DIM), "std": torch.full((ACTION_DIM,), 0.3),
                 "min": -torch.ones(ACTION_DIM), "max": torch.ones(ACTION_DIM)},
    }
    torch.manual_seed(0)
    with contextlib.redirect_stdout(None):
        policy = SmolVLAPolicy(config)
    tv._perturb(policy, 0)
    return tv.save_plain_checkpoint(policy, root / "smolvla", stats)


def train_args(checkpoint: Path, out: Path, port: int, **over) -> list[str]:
    args = {
        "policy.type": "pi_rl", "policy.device": "cpu", "policy.backbone.type": "smolvla",
        "policy.backbone.pretrained_path": str(checkpoint), "policy.value_head.hidden_dims": "[32]",
        "policy.chunk_size": tv.CHUNK_SIZE, "policy.n_action_steps": 5, "policy.num_denoise_steps": K,
        "env.type": "metaworld", "env.task": ",".join(TASKS),
        "algorithm.type": "pi_rl", "algorithm.rollout_chunks": ROLLOUT_CHUNKS,
        "algorithm.minibatch_size": ROLLOUT_CHUNKS, "algorithm.update_epochs": 1,
        "num_updates": UPDATES, "checkpoint_every_updates": CHECKPOINT_EVERY, "n_envs": 2, "num_actors": 1,
        "reconnect_timeout_s": 5, "torch_threads": 1, "policy.actor_learner_config.learner_port": port,
        "output_dir": str(out), "seed": 0,
    }
    args.update(over)
    return [f"--{k}={v}" for k, v in args.items()]


def _wait_for(predicate, timeout_s: float, what: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"exited ({proc.returncode}) before {what}:\n{log.read_text()[-4000:]}")
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()[-4000:]}")


# ---------------------------------------------------------------------------------------------------------------
# What the end-to-end run needs from the VLA runtime, pinned by fast tests
# ---------------------------------------------------------------------------------------------------------------


def test_smolvla_rows_of_different_tasks_tokenize_to_one_length(tmp_path: Path) -> None:
    """SmolVLA pads instructions to the longest in a call; the actor preprocesses each env apart and the learner
    stacks rows of every task, so a pi_rl pipeline must pad to `tokenizer_max_length`."""
    from lerobot_policy_pi_rl.configuration_pi_rl import PiRLConfig, SmolVLABackboneConfig, ValueHeadConfig
    from lerobot_policy_pi_rl.processor_pi_rl import make_pi_rl_pre_post_processors

    checkpoint = build_metaworld_smolvla(tmp_path)
    config = PiRLConfig(backbone=SmolVLABackboneConfig(pretrained_path=str(checkpoint)), device="cpu",
                        value_head=ValueHeadConfig(hidden_dims=[32]), num_denoise_steps=K,
                        chunk_size=tv.CHUNK_SIZE, n_action_steps=5)
    preprocessor, _ = make_pi_rl_pre_post_processors(config)
    observation = {OBS_IMAGE: torch.rand(1, 3, 480, 480), OBS_STATE: torch.randn(1, STATE_DIM)}
    tokens = {task: preprocessor({**observation, "task": text})[OBS_LANGUAGE_TOKENS] for task, text in TASKS.items()}
    assert {t.shape for t in tokens.values()} == {(1, 16)}, {k: t.shape for k, t in tokens.items()}
    assert not torch.equal(*tokens.values())


# ---------------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_smolvla_on_metaworld_two_tasks_train_kill_resume_export_eval(tmp_path: Path) -> None:
    started = time.monotonic()
    env = subprocess_env(MUJOCO_GL="osmesa", PYOPENGL_PLATFORM="osmesa", TOKENIZERS_PARALLELISM="false")
    checkpoint = build_metaworld_smolvla(tmp_path / "tiny")
    out = tmp_path / "run"
    args = train_args(checkpoint, out, free_port())
    train = [sys.executable, "-m", "lerobot_policy_pi_rl.runtime.train"]

    # 1) Train until the first checkpoint, then SIGKILL the learner (the launcher then stops its actors).
    log1 = tmp_path / "train1.log"
    run1 = subprocess.Popen([*train, *args], env=env, stdout=open(log1, "w"), stderr=subprocess.STDOUT)
    try:
        ckpt = out / "checkpoints" / f"{CHECKPOINT_EVERY:06d}"
        _wait_for(lambda: (ckpt / "training_state" / "training_step.json").exists()
                  and (out / "checkpoints" / "last").exists(), 240, "the first checkpoint", run1, log1)
        time.sleep(0.5)
        learner_pid = int(re.search(r"learner pid (\d+)", log1.read_text()).group(1))
        os.kill(learner_pid, signal.SIGKILL)
        assert run1.wait(timeout=60) != 0, "a killed learner is a failed run"
    finally:
        if run1.poll() is None:
            run1.kill()
    text1 = log1.read_text()
    # Each stream runs one task and carries its instruction.
    for stream, (task, instruction) in enumerate(TASKS.items()):
        assert f"[ACTOR] task {task}/0 ({instruction!r}): streams [{stream}]" in text1, text1[-4000:]
    assert "update 1/4" in text1 and "update 2/4" in text1, text1[-4000:]
    t_first = time.monotonic() - started

    # 2) Resume from the last checkpoint with the same flags: updates 3 and 4, then a final checkpoint.
    log2 = tmp_path / "train2.log"
    run2 = subprocess.run([*train, *args, "--resume=true"], env=env, stdout=open(log2, "w"),
                          stderr=subprocess.STDOUT, timeout=300)
    text2 = log2.read_text()
    assert run2.returncode == 0, text2[-4000:]
    assert re.search(rf"resumed from .*{CHECKPOINT_EVERY:06d}: update {CHECKPOINT_EVERY}", text2), text2[-4000:]
    assert "update 3/4" in text2 and "update 4/4" in text2 and "update 1/4" not in text2, text2[-4000:]
    step = json.loads((out / "checkpoints" / f"{UPDATES:06d}" / "training_state" / "training_step.json").read_text())
    assert step["step"] == UPDATES and step["interaction_step"] > 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in records][-UPDATES:] == list(range(1, UPDATES + 1))
    assert all(r["rollout/rows"] == ROLLOUT_CHUNKS for r in records)
    t_train = time.monotonic() - started

    # 3) Export to a plain smolvla checkpoint and evaluate it with LeRobot's own lerobot-eval (plugin unused).
    exported = tmp_path / "exported"
    proc = subprocess.run(
        [sys.executable, "-m", "lerobot_policy_pi_rl.export", "--checkpoint",
         str(out / "checkpoints" / "last" / "pretrained_model"), "--output", str(exported)],
        env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((exported / "config.json").read_text())["type"] == "smolvla"
    # The export holds the RL-trained weights: the action expert moved, the frozen VLM did not.
    from safetensors.torch import load_file

    before, after = load_file(str(checkpoint / "model.safetensors")), load_file(str(exported / "model.safetensors"))
    assert before.keys() == after.keys()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("model.vlm_with_expert.lm_expert.") for k in moved), sorted(moved)
    assert not any(k.startswith("model.vlm_with_expert.vlm.") for k in moved), sorted(moved)
    eval_dir = tmp_path / "eval"
    proc = subprocess.run(
        [sys.executable, "-c", SHORT_EPISODE_EVAL, f"--policy.path={exported}", "--policy.device=cpu",
         "--env.type=metaworld", f"--env.task={','.join(TASKS)}", "--eval.n_episodes=1", "--eval.batch_size=1",
         "--eval.use_async_envs=false", f"--output_dir={eval_dir}", "--seed=0"],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    info = json.loads((eval_dir / "eval_info.json").read_text())
    assert info["overall"]["n_episodes"] == len(TASKS), info["overall"]
    assert sorted(t["task_group"] for t in info["per_task"]) == sorted(TASKS)
    t_total = time.monotonic() - started
    print(f"wall time: first run {t_first:.0f}s, train+resume {t_train:.0f}s, total {t_total:.0f}s")
