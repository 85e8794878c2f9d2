"""Scripted demos into a LeRobotDataset, and the evaluation script on a freshly built pi_rl checkpoint."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

import numpy as np
import pytest

from lerobot.utils.constants import ACTION, OBS_ENV_STATE, OBS_STATE

from conftest import make_dataset_stats, make_flow_mlp_config
from lerobot_policy_pi_rl.scripts import evaluate, record_demos


def test_record_demos_writes_a_loadable_dataset(tmp_path: Path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = tmp_path / "demos"
    report = record_demos.run(
        ["--output_dir", str(root), "--num_episodes", "3", "--seed", "0", "--episode_length", "30"]
    )
    assert report["num_episodes"] == 3 and len(report["episodes"]) == 3
    assert [e["seed"] for e in report["episodes"]] == [0, 1, 2]
    assert json.loads((root / "recording_report.json").read_text())["num_frames"] == report["num_frames"]

    dataset = LeRobotDataset("local/pickcube", root=root)
    assert dataset.num_episodes == 3
    assert dataset.num_frames == report["num_frames"] == sum(e["steps"] for e in report["episodes"])
    frame = dataset[0]
    assert frame[OBS_STATE].shape == (18,) and frame[OBS_ENV_STATE].shape == (3,) and frame[ACTION].shape == (4,)
    assert frame["task"] == report["task"]
    # The last frame of each successful episode carries the success flag and the sparse reward.
    successes = [e["success"] for e in report["episodes"]]
    assert int(np.sum(np.asarray(dataset.hf_dataset["next.success"]))) == sum(successes)
    assert float(np.sum(np.asarray(dataset.hf_dataset["next.reward"]))) == pytest.approx(sum(successes))


def test_record_demos_refuses_an_existing_directory(tmp_path: Path):
    with pytest.raises(FileExistsError):
        record_demos.run(["--output_dir", str(tmp_path), "--num_episodes", "1"])


def _save_random_checkpoint(path: Path) -> Path:
    from lerobot_policy_pi_rl.modeling_pi_rl import PiRLPolicy
    from lerobot_policy_pi_rl.processor_pi_rl import make_pi_rl_pre_post_processors

    config = make_flow_mlp_config()
    policy = PiRLPolicy(config)
    preprocessor, postprocessor = make_pi_rl_pre_post_processors(config, dataset_stats=make_dataset_stats())
    policy.save_pretrained(path)
    preprocessor.save_pretrained(path)
    postprocessor.save_pretrained(path)
    return path


def test_evaluate_writes_the_documented_json(tmp_path: Path):
    checkpoint = _save_random_checkpoint(tmp_path / "pretrained_model")
    output = tmp_path / "eval.json"
    evaluate.run(
        [
            "--policy_path", str(checkpoint),
            "--num_episodes", "3",
            "--seed", "5",
            "--num_envs", "2",
            "--episode_length", "8",
            "--output", str(output),
            "--quiet",
        ]
    )  # fmt: skip
    result = json.loads(output.read_text())
    for key in (
        "success_rate", "success_ci95", "mean_return", "mean_length", "episodes", "seeds", "policy_path",
        "wall_time_s", "env_steps", "success_definition", "num_episodes",
    ):  # fmt: skip
        assert key in result, key
    assert result["seeds"] == [5, 6, 7] and result["num_episodes"] == 3
    lengths = [e["length"] for e in result["episodes"]]
    assert all(1 <= n <= 8 for n in lengths) and result["env_steps"] == sum(lengths)
    assert result["mean_length"] == pytest.approx(np.mean(lengths))
    k = sum(e["success"] for e in result["episodes"])
    assert result["success_rate"] == pytest.approx(k / 3)
    assert result["success_ci95"] == pytest.approx(list(evaluate.wilson_interval(k, 3)))
    assert "any step" in result["success_definition"]
    # PickCube is one task: its per-task entry repeats the pooled numbers.
    assert list(result["per_task"]) == ["PandaPickCube-v0"] == result["tasks"]
    assert result["per_task"]["PandaPickCube-v0"]["success_ci95"] == result["success_ci95"]
    assert result["per_task"]["PandaPickCube-v0"]["env_steps"] == result["env_steps"]


@pytest.mark.parametrize(
    ("episodes", "envs", "workers", "expected"),
    [(100, 4, 2, [(0, 48), (48, 52)]), (10, 4, 2, [(0, 8), (8, 2)]), (10, 4, 5, [(0, 4), (4, 4), (8, 2)]),
     (7, 10, 3, [(0, 7)]), (12, 4, 3, [(0, 4), (4, 4), (8, 4)])],
)
def test_split_waves_cuts_at_wave_boundaries(episodes, envs, workers, expected):
    assert evaluate.split_waves(episodes, envs, workers) == expected


def test_evaluate_in_workers_reproduces_one_process(tmp_path: Path):
    """Same waves and per-wave seeds in 2 spawned workers: the per-episode results are identical."""
    checkpoint = _save_random_checkpoint(tmp_path / "pretrained_model")
    results = []
    for workers in (1, 2):
        results.append(evaluate.run([
            "--policy_path", str(checkpoint), "--num_episodes", "5", "--seed", "11", "--num_envs", "2",
            "--episode_length", "6", "--workers", str(workers), "--quiet",
        ]))  # fmt: skip
    assert results[1]["workers"] == 2 and results[1]["seeds"] == [11, 12, 13, 14, 15]
    assert results[0]["episodes"] == results[1]["episodes"]
    # Random initial cubes and random-weight actions: each episode ends somewhere else, so a worker that ran the
    # wrong seeds or noise would not match.
    distances = [e["final_gripper_cube_distance_m"] for e in results[1]["episodes"]]
    assert len(set(distances)) == 5 and all(0.0 < d < 1.0 for d in distances)


def test_wilson_interval_matches_hand_computation():
    # 7/10 at 95 %: p = 0.7, z^2 = 3.8415, centre = (0.7 + 0.19207) / 1.38415 = 0.64449,
    # half-width = 1.96 * sqrt(0.021 + 0.0096037) / 1.38415 = 0.24772.
    low, high = evaluate.wilson_interval(7, 10)
    assert low == pytest.approx(0.39677, abs=1e-4) and high == pytest.approx(0.89221, abs=1e-4)
    assert evaluate.wilson_interval(0, 20)[0] == 0.0
    assert evaluate.wilson_interval(20, 20)[1] == pytest.approx(1.0)
    # 0/3: upper bound z^2 / (n + z^2) = 3.8415 / 6.8415.
    assert evaluate.wilson_interval(0, 3)[1] == pytest.approx(0.56149, abs=1e-4)


def test_wilson_interval_is_exactly_closed_at_zero_and_all_successes():
    """0/n has lower bound 0 and n/n upper bound 1 exactly (reports print them; no 3e-17 from rounding)."""
    for n in range(1, 60):
        assert evaluate.wilson_interval(0, n)[0] == 0.0, n
        assert evaluate.wilson_interval(n, n)[1] == 1.0, n


# ----------------------------------------------------------------------------------------------------------------
# The env of the scripts: --env.<field> flags and the PickCube shorthands
# ----------------------------------------------------------------------------------------------------------------


def test_env_flags_and_pickcube_shorthands_give_the_same_config():
    from lerobot_policy_pi_rl.envs.metaworld import MetaWorldStateEnvConfig
    from lerobot_policy_pi_rl.envs.pickcube import PickCubeStateEnvConfig
    from lerobot_policy_pi_rl.scripts.env_args import normalize_env_flags, parse_env_config

    expected = PickCubeStateEnvConfig(episode_length=30, randomize_cube=False, state_includes_cube=True,
                                      camera="blank", camera_size=16, task_description="Lift it.")
    shorthands = {"episode_length": 30, "fixed_cube": True, "state_includes_cube": True, "camera": "blank",
                  "camera_size": 16, "task": "Lift it."}
    assert parse_env_config([], shorthands) == expected
    flags = normalize_env_flags(["--env.type=pi_rl_pickcube", "--env.episode_length", "30",
                                 "--env.randomize_cube=false",
                                 "--env.state_includes_cube=true", "--env.camera=blank", "--env.camera_size=16",
                                 "--env.task_description=Lift it."])
    assert parse_env_config(flags) == expected
    assert parse_env_config([], {"camera": None, "fixed_cube": None}) == PickCubeStateEnvConfig()
    assert parse_env_config(["--env.type=pi_rl_metaworld", "--env.task=mt10", "--env.task_one_hot=true"]) == (
        MetaWorldStateEnvConfig(task="mt10", task_one_hot=True))


@pytest.mark.parametrize(
    ("tokens", "shorthands", "message"),
    [
        (["--env.type=nope"], None, "--env.type='nope' is not a registered LeRobot env type; known: .*pi_rl_metaworld"),
        (["--env.camerra=front"], None, "--env.camerra: env type pi_rl_pickcube has no such field; its fields: ca"),
        (["--env.type=pi_rl_metaworld", "--env.episode_length=abc"], None, "episode_length=abc.*invalid literal"),
        (["--env.type=pi_rl_metaworld", "--env.episode_length=600"], None, "episode_length=600 must be"),
        (["--env.camera=front"], {"camera": "blank"}, "--camera and --env.camera both set env.camera"),
        (["--env.type=pi_rl_metaworld"], {"episode_length": 9}, "--episode_length: PickCube shorthand"),
        (["--env.camera=front", "--env.camera=blank"], None, "--env.camera is given twice"),
        (["--camera_typo", "x"], None, "unrecognized argument '--camera_typo'"),
        (["--env.camera"], None, "--env.camera needs a value"),
    ],
)
def test_env_flags_refuse_bad_input_naming_it(tokens, shorthands, message):
    from lerobot_policy_pi_rl.scripts.env_args import normalize_env_flags, parse_env_config

    with pytest.raises(ValueError, match=message):
        parse_env_config(normalize_env_flags(tokens), shorthands)
