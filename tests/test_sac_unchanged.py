"""LeRobot's stock SAC (`gaussian_actor` + `sac`) still runs end to end with this plugin installed.

Three runs, each a learner + an actor over gRPC on 127.0.0.1 (free port), a few optimization steps, a checkpoint:
  * LeRobot's own `python -m lerobot.rl.learner` / `python -m lerobot.rl.actor` (plugin loaded through
    `--policy.discover_packages_path`), gym_hil PandaPickCube through `gym_manipulator` (two 128x128 cameras,
    about 0.3-2 s per step here: 30 env steps). LeRobot 0.6.1's config bugs (docs/recipes.md, "LeRobot behaviours
    this package works around") are worked around with config only, never patched: a local demo dataset
    (TrainPipelineConfig.validate dereferences `dataset.repo_id`),
    separate actor/learner output dirs (FileExistsError), `env.processor.reset` given to the actor only (the
    learner's `cfg.to_dict()` cannot encode it; the actor needs it to end 10-step episodes, since it only sends
    transitions at episode ends). The stock learner never stops: it gets SIGTERM once the actor is done.
  * This package's `lerobot-pi-rl-train --algorithm.type=sac` on the same gym_manipulator env: LeRobot's actor
    and learner loops run unchanged under this package's config, which fixes those bugs (no dataset, one shared
    output dir, `env.processor.reset` on both sides).
  * `lerobot-pi-rl-train --algorithm.type=sac --env.type=pi_rl_pickcube`: LeRobot's SAC learner with this
    package's SAC actor loop (LeRobot's actor cannot build that env), demos in the offline buffer; the
    checkpoint then loads and acts through `scripts/evaluate.py` (what the demo's SAC baseline does).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lerobot_policy_pi_rl.baselines.sac.runner import free_port, sac_train_argv

pytestmark = [pytest.mark.slow]

PKG = "lerobot_policy_pi_rl"
BIN = Path(sys.executable).parent


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(MUJOCO_GL="osmesa", PYOPENGL_PLATFORM="osmesa", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    return env


@pytest.fixture(scope="module")
def demos(tmp_path_factory) -> Path:
    """Two scripted PickCube episodes as a local LeRobotDataset (obs.state 18, env_state 3, action 4)."""
    from lerobot_policy_pi_rl.scripts.record_demos import record_demos

    root = tmp_path_factory.mktemp("sac") / "demos"
    record_demos(root, num_episodes=2, action_noise=0.3, seed=0, verbose=False)
    return root


def gym_hil_sac_config(*, output_dir: Path, port: int, dataset_root: Path | None, reset: bool,
                       demos: Path) -> dict:
    """A tiny SAC run on gym_manipulator/gym_hil PandaPickCube-v0, state input only (cameras still render)."""
    stats = json.loads((demos / "meta" / "stats.json").read_text())
    cfg = {
        "output_dir": str(output_dir),
        "job_name": "sac_gym_hil",
        "seed": 0,
        "batch_size": 8,
        "save_freq": 10,
        "log_freq": 1,
        "wandb": {"enable": False},
        "env": {
            "type": "gym_manipulator", "name": "gym_hil", "task": "PandaPickCube-v0", "fps": 10,
            "features": {"action": {"type": "ACTION", "shape": [4]},
                         "observation.state": {"type": "STATE", "shape": [18]}},
            "features_map": {"action": "action", "observation.state": "observation.state"},
            "processor": {"control_mode": "gamepad", "gripper": {"use_gripper": True, "gripper_penalty": 0.0}},
        },
        "policy": {
            "type": "gaussian_actor", "device": "cpu", "push_to_hub": False,
            "online_steps": 30, "online_step_before_learning": 5,
            "dataset_stats": {
                "observation.state": {"min": stats["observation.state"]["min"],
                                      "max": stats["observation.state"]["max"]},
                "action": {"min": [-1.0, -1.0, -1.0, 0.0], "max": [1.0, 1.0, 1.0, 2.0]},
            },
            "latent_dim": 32, "state_encoder_hidden_dim": 32, "actor_network_kwargs": {"hidden_dims": [32, 32]},
            "actor_learner_config": {"learner_host": "127.0.0.1", "learner_port": port,
                                     "policy_parameters_push_frequency": 1},
        },
        "algorithm": {"type": "sac", "critic_network_kwargs": {"hidden_dims": [32, 32]}},
    }
    if dataset_root is not None:
        cfg["dataset"] = {"repo_id": "local/pickcube", "root": str(dataset_root)}
    if reset:  # 10-step episodes (control_time_s * fps); gym_hil's own limit is 100 steps
        cfg["env"]["processor"]["reset"] = {"control_time_s": 1.0, "reset_time_s": 0.0}
    return cfg


def _write(path: Path, cfg: dict) -> Path:
    path.write_text(json.dumps(cfg, indent=1))
    return path


def _popen(argv: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(argv, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=_env(),
                            start_new_session=True)


def _stop(proc: subprocess.Popen, grace_s: float = 60.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


def _tail(log: Path, n: int = 40) -> str:
    lines = [ln for ln in log.read_text(errors="replace").splitlines()
             if "torchcodec" not in ln and "libav" not in ln]
    return "\n".join(lines[-n:])


def assert_sac_checkpoint(output_dir: Path) -> dict:
    """LeRobot's checkpoint layout for a gaussian_actor trained by SAC; returns training_step.json."""
    last = output_dir / "checkpoints" / "last"
    assert last.is_dir(), f"no checkpoint under {output_dir}/checkpoints"
    model = last / "pretrained_model"
    for name in ("config.json", "model.safetensors", "train_config.json", "policy_preprocessor.json",
                 "policy_postprocessor.json"):
        assert (model / name).is_file(), f"{name} missing from {model}"
    assert json.loads((model / "config.json").read_text())["type"] == "gaussian_actor"
    assert json.loads((model / "train_config.json").read_text())["algorithm"]["type"] == "sac"
    assert (last / "algorithm" / "model.safetensors").is_file()
    step = json.loads((last / "training_state" / "training_step.json").read_text())
    assert step["step"] >= 1
    return step


def test_lerobot_own_sac_entry_points_with_plugin_installed(tmp_path, demos):
    port = free_port()
    learner_dir, actor_dir = tmp_path / "learner", tmp_path / "actor"
    learner_cfg = _write(tmp_path / "learner.json", gym_hil_sac_config(
        output_dir=learner_dir, port=port, dataset_root=demos, reset=False, demos=demos))
    actor_cfg = _write(tmp_path / "actor.json", gym_hil_sac_config(
        output_dir=actor_dir, port=port, dataset_root=demos, reset=True, demos=demos))
    plugin = f"--policy.discover_packages_path={PKG}"
    learner = _popen([sys.executable, "-m", "lerobot.rl.learner", plugin, f"--config_path={learner_cfg}"],
                     tmp_path / "learner.log")
    actor = None
    try:
        actor = _popen([sys.executable, "-m", "lerobot.rl.actor", plugin, f"--config_path={actor_cfg}"],
                       tmp_path / "actor.log")
        try:
            actor.wait(timeout=420)
        except subprocess.TimeoutExpired:
            pytest.fail(f"stock actor did not finish 30 env steps in 420 s:\n{_tail(tmp_path / 'actor.log')}")
        actor_log = (tmp_path / "actor.log").read_text(errors="replace")
        assert actor.returncode == 0, _tail(tmp_path / "actor.log")
        assert "[ACTOR] Policy loop finished" in actor_log, _tail(tmp_path / "actor.log")
        assert "Episode reward" in actor_log  # at least one episode's transitions went to the learner
        assert learner.poll() is None, f"stock learner died:\n{_tail(tmp_path / 'learner.log')}"
    finally:
        if actor is not None:
            _stop(actor)
        learner_code = _stop(learner)
    assert learner_code == 0, _tail(tmp_path / "learner.log")
    assert_sac_checkpoint(learner_dir)
    assert (learner_dir / "dataset_offline" / "meta" / "info.json").is_file()  # demos were its offline buffer
    online = json.loads((learner_dir / "dataset" / "meta" / "info.json").read_text())
    assert online["total_frames"] >= 5  # transitions the actor streamed


def test_plugin_entry_points_run_stock_sac_on_gym_manipulator(tmp_path, demos):
    """Our launcher + LeRobot's unchanged SAC loops; our config fixes the upstream config bugs."""
    out = tmp_path / "run"  # one output dir for learner and actor, no dataset, env.processor.reset on both
    cfg = _write(tmp_path / "sac.json", gym_hil_sac_config(
        output_dir=out, port=free_port(), dataset_root=None, reset=True, demos=demos))
    proc = _popen([str(BIN / "lerobot-pi-rl-train"), f"--config_path={cfg}"], tmp_path / "train.log")
    try:
        code = proc.wait(timeout=480)
    except subprocess.TimeoutExpired:
        _stop(proc)
        pytest.fail(f"lerobot-pi-rl-train (SAC, gym_hil) did not finish in 480 s:\n{_tail(tmp_path / 'train.log')}")
    log = (tmp_path / "train.log").read_text(errors="replace")
    assert code == 0, _tail(tmp_path / "train.log")
    assert "[ACTOR] Policy loop finished" in log  # LeRobot's own actor loop ran
    assert "actors done: stopping the SAC learner" in log
    assert_sac_checkpoint(out)
    saved = json.loads((out / "checkpoints" / "last" / "pretrained_model" / "train_config.json").read_text())
    assert saved["env"]["processor"]["reset"]["control_time_s"] == 1.0  # encoded despite the `Any` field


def test_plugin_entry_points_run_sac_on_state_only_pickcube(tmp_path, demos):
    """LeRobot's SAC learner + this package's SAC actor loop on `pi_rl_pickcube`, then evaluate.py loads it."""
    out = tmp_path / "sac"
    argv = sac_train_argv(output_dir=out, demos_dir=demos, env_steps=300, seed=0, port=free_port(),
                          launcher=str(BIN / "lerobot-pi-rl-train"), batch_size=32, save_freq=20,
                          online_step_before_learning=50,
                          extra=["--policy.latent_dim=64", "--policy.state_encoder_hidden_dim=64"])
    proc = _popen(argv, tmp_path / "train.log")
    try:
        code = proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        _stop(proc)
        pytest.fail(f"lerobot-pi-rl-train (SAC, pickcube) did not finish in 300 s:\n{_tail(tmp_path / 'train.log')}")
    assert code == 0, _tail(tmp_path / "train.log")
    assert_sac_checkpoint(out)
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) >= 3  # 300 env steps, episodes of at most 100 steps: at least 3 complete ones
    for row in rows:
        assert {"wall_time_s", "rollout/interaction_steps", "rollout/success_rate"} <= row.keys()
    assert rows[-1]["rollout/interaction_steps"] <= 300
    online = json.loads((out / "dataset" / "meta" / "info.json").read_text())
    assert online["total_frames"] >= 50

    from lerobot_policy_pi_rl.scripts.evaluate import evaluate_policy, load_policy

    policy, pre, post = load_policy(out / "checkpoints" / "last" / "pretrained_model", device="cpu")
    assert policy.config.type == "gaussian_actor"
    result = evaluate_policy(policy, pre, post, num_episodes=2, seed=100_000, num_envs=2, verbose=False)
    assert result["num_episodes"] == 2 and result["deterministic_ode"] is False
    assert all(1 <= e["length"] <= 100 for e in result["episodes"])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_sac_actor_refuses_non_finite_actions(bad):
    """The SAC actor process turns torch.distributions validation off for speed; `act` checks actions instead."""
    from types import SimpleNamespace

    import torch

    from lerobot_policy_pi_rl.baselines.sac.actor import SACEnvActor

    def actor_returning(action):
        actor = SACEnvActor.__new__(SACEnvActor)
        actor.env_steps = 7
        actor.preprocessor = SimpleNamespace(process_observation=lambda obs: obs)
        actor.postprocessor = SimpleNamespace(process_action=lambda a: a)
        actor.policy = SimpleNamespace(select_action=lambda batch: action)
        return actor

    obs = {"observation.state": torch.zeros(1, 3)}
    good = torch.tensor([[0.1, -0.2, 0.3, 1.0]])
    assert torch.equal(actor_returning(good).act(obs), good)
    with pytest.raises(ValueError, match="non-finite action .* at env step 7"):
        actor_returning(torch.tensor([[0.1, bad, 0.3, 1.0]])).act(obs)
