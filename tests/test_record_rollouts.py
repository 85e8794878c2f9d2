"""`--record_rollouts`: actors save finished episodes as LeRobotDatasets that LeRobot, `lerobot-train` and the
offline source read; bad folders fail before the run; Ctrl-C keeps every finished episode."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lerobot.utils.constants import ACTION, DONE, OBS_ENV_STATE, OBS_IMAGES, OBS_STATE, REWARD, SUCCESS, TRUNCATED

from lerobot_policy_pi_rl.runtime.rollout_recorder import (
    INTERVENTION,
    POLICY_VERSION,
    STREAM_EPISODE,
    STREAM_ID,
    RolloutRecorder,
    _observation_copy,
)
from test_runtime import ENV, H, free_port, run_in_threads, tiny_args

REPO_ID = "local/rollouts"
ROLLOUT_COLUMNS = {REWARD, DONE, TRUNCATED, SUCCESS, INTERVENTION, POLICY_VERSION, STREAM_ID, STREAM_EPISODE}


def load(root: Path):
    from lerobot.datasets import LeRobotDataset

    return LeRobotDataset(REPO_ID, root=root)


def pickcube_streams(n: int, *, episode_length: int, **env_kw):
    from lerobot_policy_pi_rl.envs.pickcube import PickCubeStateEnvConfig, make_pickcube_env
    from lerobot_policy_pi_rl.runtime.env_streams import GymStream

    cfg = PickCubeStateEnvConfig(episode_length=episode_length, **env_kw)
    return cfg, [GymStream(make_pickcube_env(cfg, seed=i, lerobot_keys=True), cfg.task_description, seed=i,
                           max_episode_steps=episode_length) for i in range(n)]


def assert_whole_episodes(ds, *, max_length: int) -> None:
    """Every episode ends (`next.done`) on its last frame and only there, within the env's time limit."""
    episode = np.asarray(ds.hf_dataset["episode_index"])
    done = np.asarray(ds.hf_dataset[DONE]).reshape(-1)
    for e in range(ds.meta.total_episodes):
        flags = done[episode == e]
        assert 1 <= len(flags) <= max_length and flags[-1] and not flags[:-1].any(), (e, flags)


# ----------------------------------------------------------------------------------------------------------------
# The recorder on its own
# ----------------------------------------------------------------------------------------------------------------


def test_images_are_stored_as_the_uint8_frames_they_came_from():
    frame = torch.randint(0, 256, (1, 3, 5, 7), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    copied = _observation_copy({f"{OBS_IMAGES}.front": frame.float() / 255.0, OBS_STATE: torch.ones(1, 6),
                                "task": "t", "info": torch.zeros(2)})
    assert set(copied) == {f"{OBS_IMAGES}.front", OBS_STATE}
    np.testing.assert_array_equal(copied[f"{OBS_IMAGES}.front"], frame[0].numpy())
    assert copied[OBS_STATE].shape == (6,)  # the env's batch dim of 1 is not stored


def test_finished_episodes_are_written_as_stepped_and_an_unfinished_one_is_dropped(tmp_path):
    """Two streams, episodes of 4 steps, 10 steps each: 2 finished episodes per stream are written frame for frame
    (observation before the step, executed action, flags, version); the 2 running ones are dropped."""
    from lerobot_policy_pi_rl.runtime.rollout_recorder import _known_names

    env_cfg, streams = pickcube_streams(2, episode_length=4, camera="blank", camera_size=8)
    root = tmp_path / "rollouts" / "actor_0"
    recorder = RolloutRecorder(root, repo_id=REPO_ID, fps=env_cfg.fps, robot_type="panda", stream_ids=[5, 6],
                               tasks=[s.task for s in streams], names=_known_names(env_cfg))
    g = torch.Generator().manual_seed(0)
    expected = {5: [], 6: []}
    try:
        observations = [s.reset() for s in streams]
        for i, obs in enumerate(observations):
            recorder.begin(i, obs)
        for t in range(10):
            for i, stream in enumerate(streams):
                step = stream.step(torch.rand(4, generator=g) * 2 - 1)
                recorder.step(i, step, policy_version=t)
                expected[5 + i].append((observations[i][OBS_STATE].clone(), step.executed_action.clone(), t,
                                        step.truncated))
                observations[i] = step.observation
                if step.terminated or step.truncated:
                    recorder.end_episode(i)
                    observations[i] = stream.reset()
                    recorder.begin(i, observations[i])
        recorder.close()
    finally:
        for s in streams:
            s.close()
    assert (recorder.queued, recorder.saved, recorder.dropped) == (4, 4, 2)

    ds = load(root)
    assert ds.meta.total_episodes == 4 and ds.meta.total_frames == 16
    features = ds.meta.features
    assert features[OBS_STATE]["shape"] == (18,) and features[OBS_STATE]["names"][0] == "joint1_pos"
    assert features[OBS_ENV_STATE]["names"] == ["cube_x", "cube_y", "cube_z"]
    assert features[f"{OBS_IMAGES}.front"]["dtype"] == "image"
    assert features[f"{OBS_IMAGES}.front"]["shape"] == (8, 8, 3)
    assert features[ACTION]["shape"] == (4,) and ROLLOUT_COLUMNS <= set(features)
    frames = [ds[k] for k in range(len(ds))]
    by_stream = {5: [f for f in frames if int(f[STREAM_ID]) == 5], 6: [f for f in frames if int(f[STREAM_ID]) == 6]}
    for sid, rows in by_stream.items():
        assert len(rows) == 8
        for row, (state, action, version, truncated) in zip(rows, expected[sid][:8], strict=True):
            torch.testing.assert_close(row[OBS_STATE], state.float())
            torch.testing.assert_close(row[ACTION], action.float())
            assert int(row[POLICY_VERSION]) == version and bool(row[TRUNCATED]) == truncated
        assert [int(r[STREAM_EPISODE]) for r in rows] == [0] * 4 + [1] * 4
        assert [bool(r[DONE]) for r in rows] == [False, False, False, True] * 2
        assert all(r["task"] == "Pick up the cube and lift it." for r in rows)
        assert not any(bool(r[INTERVENTION]) for r in rows)


class _Step:
    """The fields of an env stream's `StepResult` the recorder reads."""

    def __init__(self, observation, action):
        self.observation, self.executed_action = observation, action
        self.reward, self.terminated, self.truncated, self.success, self.intervention = 0.0, True, False, False, False


def test_an_actor_forced_out_right_after_start_up_still_writes_its_finished_episodes(tmp_path):
    """LeRobot's signal handler exits the actor on a second Ctrl-C, possibly while its writer process is still
    starting: the writer must be running by then (it rebuilds its queues from the actor's), so the finished episode
    is written. The process below exits the moment its episode is queued."""
    root = tmp_path / "actor_0"
    script = f"""
import sys, torch
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_record_rollouts import _Step
from lerobot_policy_pi_rl.runtime.rollout_recorder import RolloutRecorder
recorder = RolloutRecorder({str(root)!r}, repo_id={REPO_ID!r}, fps=10, robot_type=None, stream_ids=[0], tasks=["t"])
recorder.begin(0, {{"{OBS_STATE}": torch.zeros(3)}})
recorder.step(0, _Step({{"{OBS_STATE}": torch.ones(3)}}, torch.zeros(2)), policy_version=0)
recorder.end_episode(0)
sys.exit(1)  # as LeRobot's ProcessSignalHandler does on the second signal
"""
    proc = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert load(root).meta.total_episodes == 1, proc.stderr[-3000:]


def test_a_failed_write_is_reported_naming_the_feature_and_keeps_the_episodes_already_written(tmp_path):
    """An episode whose observation no longer matches the dataset's features: the recorder raises naming it, and
    the episodes written before stay on disk, loadable."""
    root = tmp_path / "actor_0"
    recorder = RolloutRecorder(root, repo_id=REPO_ID, fps=10, robot_type=None, stream_ids=[0], tasks=["t"])
    for dim in (3, 3, 5):
        recorder.begin(0, {OBS_STATE: torch.zeros(dim)})
        recorder.step(0, _Step({OBS_STATE: torch.ones(dim)}, torch.zeros(2)), policy_version=0)
        recorder.end_episode(0)
    with pytest.raises(RuntimeError, match=rf"rollout recording to {root} failed: .*{OBS_STATE}"):
        recorder.close()
    ds = load(root)
    assert ds.meta.total_episodes == 2 and ds.meta.features[OBS_STATE]["shape"] == (3,)
    assert ds[1][ACTION].tolist() == [0.0, 0.0]


def test_an_empty_rollouts_repo_id_is_refused(tmp_path, capsys):
    from lerobot_policy_pi_rl.runtime.cli import load_config

    with pytest.raises(SystemExit):
        load_config(tiny_args(free_port(), tmp_path / "run", record_rollouts="true", rollouts_repo_id=""))
    assert "rollouts_repo_id=''" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# Bad settings
# ----------------------------------------------------------------------------------------------------------------


def test_an_existing_non_empty_rollouts_folder_is_refused_before_the_run_and_kept(tmp_path, capsys):
    from lerobot_policy_pi_rl.runtime.cli import load_config

    root = tmp_path / "old"
    (root / "actor_0").mkdir(parents=True)
    (root / "actor_0" / "keep.txt").write_text("earlier rollouts")
    with pytest.raises(SystemExit) as exc:
        load_config(tiny_args(free_port(), tmp_path / "run", record_rollouts="true", rollouts_root=str(root)))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert str(root / "actor_0") in err and "--rollouts_root" in err
    assert (root / "actor_0" / "keep.txt").read_text() == "earlier rollouts"
    # An empty folder is fine; so is a folder of another actor index.
    (tmp_path / "empty" / "actor_0").mkdir(parents=True)
    assert load_config(tiny_args(free_port(), tmp_path / "run", record_rollouts="true",
                                 rollouts_root=str(tmp_path / "empty"))).record_rollouts


def test_the_launcher_checks_every_actors_folder_before_starting_anything(tmp_path):
    """Each actor checks only its own folder (siblings create theirs meanwhile); the launcher checks them all."""
    root = tmp_path / "run" / "rollouts"
    (root / "actor_1").mkdir(parents=True)
    (root / "actor_1" / "data.parquet").write_bytes(b"x")
    proc = subprocess.run([sys.executable, "-m", "lerobot_policy_pi_rl.runtime.train",
                           *tiny_args(free_port(), tmp_path / "run", record_rollouts="true", num_actors=2)],
                          env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert str(root / "actor_1") in proc.stderr.strip().splitlines()[-1]
    assert "learner pid" not in proc.stderr
    assert (root / "actor_1" / "data.parquet").read_bytes() == b"x"


# ----------------------------------------------------------------------------------------------------------------
# Round trips: a real run records, LeRobot / lerobot-train / the offline source read
# ----------------------------------------------------------------------------------------------------------------


def test_a_recorded_run_is_a_dataset_for_lerobot_lerobot_train_and_the_offline_source(tmp_path):
    from lerobot_policy_pi_rl.runtime.cli import load_config
    from lerobot_policy_pi_rl.runtime.learner import build_learner

    out = tmp_path / "run"
    args = tiny_args(free_port(), out, num_updates=2, checkpoint_every_updates=0, record_rollouts="true",
                     **{"env.episode_length": 6})
    actors: list = []
    run_in_threads(args, prepare_actor=actors.append)
    actor = actors[0]

    # (a) LeRobot loads it: every finished episode, the env's features, versions of the learner's weights.
    root = out / "rollouts" / "actor_0"
    ds = load(root)
    assert actor.episodes >= 2 and ds.meta.total_episodes == actor.episodes == actor.recorder.saved
    assert_whole_episodes(ds, max_length=6)
    assert {OBS_STATE, OBS_ENV_STATE, ACTION} | ROLLOUT_COLUMNS <= set(ds.meta.features)
    versions = {int(v) for v in ds.hf_dataset[POLICY_VERSION]}
    assert versions <= {0, 1, 2} and 0 in versions
    assert {int(s) for s in ds.hf_dataset[STREAM_ID]} == {0, 1}

    # (c) the offline source of a later run takes it (the learner builds the source and samples SFT rows).
    offline_args = tiny_args(free_port(), tmp_path / "next", **{
        "algorithm.offline.ratio": 0.25, "algorithm.offline.repo_ids": f"[{REPO_ID}]",
        "algorithm.offline.roots": f"[{root}]"})
    nxt = build_learner(load_config(offline_args), shutdown_event=threading.Event())
    try:
        source = nxt.algorithm.offline
        assert source.num_frames == ds.meta.total_frames
        (part,) = source.sample(5)
        assert part.batch[ACTION].shape == (5, H, 4) and torch.isfinite(part.batch[ACTION]).all()
    finally:
        nxt.shutdown_event.set()
        nxt.transport.server.stop(0)

    # (b) lerobot-train trains on it for a few steps.
    from lerobot_policy_pi_rl.demo.stages import console_script

    sft = tmp_path / "sft"
    proc = subprocess.run([
        console_script("lerobot-train"), "--policy.type=pi_rl", "--policy.backbone.type=flow_mlp",
        "--policy.backbone.hidden_dim=32", "--policy.backbone.num_layers=2", "--policy.backbone.token_dim=16",
        f"--policy.chunk_size={H}", "--policy.n_action_steps=4", "--policy.device=cpu", "--policy.push_to_hub=false",
        f"--dataset.repo_id={REPO_ID}", f"--dataset.root={root}", "--steps=3", "--batch_size=8", "--save_freq=3",
        "--num_workers=0", "--wandb.enable=false", f"--output_dir={sft}",
    ], env=ENV, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (sft / "checkpoints" / "last" / "pretrained_model" / "model.safetensors").exists()


def test_ctrl_c_keeps_every_finished_episode_on_disk(tmp_path):
    """An actor process interrupted mid-run, as `lerobot-pi-rl-train` stops it on Ctrl-C (SIGINT to the process
    group, then the launcher's SIGTERM): every episode it had finished is in the dataset, which loads."""
    from lerobot_policy_pi_rl.runtime.cli import load_config
    from lerobot_policy_pi_rl.runtime.learner import build_learner

    out = tmp_path / "run"
    args = tiny_args(free_port(), out, num_updates=200, checkpoint_every_updates=0, record_rollouts="true",
                     **{"env.episode_length": 5})
    learner = build_learner(load_config(args), shutdown_event=threading.Event())
    learner_thread = threading.Thread(target=learner.run, daemon=True)
    learner_thread.start()
    log = tmp_path / "actor.log"
    actor = subprocess.Popen([sys.executable, "-m", "lerobot_policy_pi_rl.runtime.actor", *args],
                             env={**ENV, "PI_RL_LOG_LEVEL": "DEBUG"}, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while log.read_text().count("rollout episode queued") < 6:
            assert actor.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        actor.send_signal(signal.SIGINT)
        time.sleep(0.05)
        actor.send_signal(signal.SIGTERM)  # the launcher's stop, landing while the actor is stopping
        actor.wait(timeout=60)
    finally:
        if actor.poll() is None:
            actor.kill()
        learner.close()
    text = log.read_text()
    queued = text.count("rollout episode queued")
    ds = load(out / "rollouts" / "actor_0")
    assert queued >= 6 and ds.meta.total_episodes == queued, text[-3000:]
    assert_whole_episodes(ds, max_length=5)
    assert len(ds) == ds.meta.total_frames and ds[len(ds) - 1][ACTION].shape == (4,)
    assert not re.search(r"rollout recording .* failed", text)


def test_the_bench_script_runs_its_smallest_size(capsys):
    from test_bench_scripts import load_script

    rows = load_script("bench_record_rollouts").main(["--episodes", "1", "--repeats", "1", "--episode_length", "4",
                                                      "--observations", "state"])
    assert [r["label"] for r in rows] == ["state"]
    for r in rows:
        assert r["episodes"] == 1 and r["off"] > 0 and r["on"] > 0 and r["handoff_us"] > 0
    assert "hand-off us/step" in capsys.readouterr().out
