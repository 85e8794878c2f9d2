"""State-based MetaWorld env (`pi_rl_metaworld`): config, seeded resets, rewards, episode ends, the scripted expert,
and the LeRobot / actor entry points (`make_env`, `make_env_streams`)."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

import numpy as np
import pytest

pytest.importorskip("metaworld")

from lerobot.configs.types import FeatureType
from lerobot.envs import env_to_policy_features, make_env
from lerobot.envs.configs import EnvConfig
from lerobot.envs.utils import preprocess_observation
from lerobot.utils.constants import ACTION, OBS_STATE

from lerobot_policy_pi_rl.envs.metaworld import (
    DENSE_REWARD_SCALE,
    METAWORLD_V3_TASKS,
    MT10_TASKS,
    STATE_NAMES,
    MetaWorldStateEnv,
    MetaWorldStateEnvConfig,
    _benchmark_task,
    make_metaworld_env,
    task_description,
)

TWO_TASKS = "push-v3,drawer-open-v3"


def _env(task: str = "push-v3", **options) -> MetaWorldStateEnv:
    return MetaWorldStateEnv(MetaWorldStateEnvConfig(task=task, **options), task)


def _rollout(env, seed: int, actions=None, max_steps: int = 500) -> list[tuple]:
    """(obs, reward, terminated, truncated, success) per step; the expert acts unless `actions` are given."""
    obs, _ = env.reset(seed=seed)
    steps = []
    for t in range(max_steps):
        action = env.expert_action() if actions is None else actions[t]
        obs, reward, terminated, truncated, info = env.step(action)
        steps.append((obs["agent_pos"], reward, terminated, truncated, info["is_success"]))
        if terminated or truncated:
            break
    return steps


# ----------------------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------------------


def test_config_is_registered_and_declares_lerobot_features():
    assert EnvConfig.get_choice_class("pi_rl_metaworld") is MetaWorldStateEnvConfig
    for one_hot, dim in ((False, 39), (True, 89)):
        cfg = MetaWorldStateEnvConfig(task_one_hot=one_hot)
        features = env_to_policy_features(cfg)
        assert {k: tuple(f.shape) for k, f in features.items()} == {ACTION: (4,), OBS_STATE: (dim,)}
        assert features[OBS_STATE].type is FeatureType.STATE
        assert len(cfg.state_names) == dim == cfg.state_dim
    assert len(STATE_NAMES) == 39 and STATE_NAMES[36:] == ["goal_x", "goal_y", "goal_z"]
    cfg = MetaWorldStateEnvConfig()
    assert (cfg.task, cfg.episode_length, cfg.fps, cfg.reward_type) == ("push-v3", 500, 80, "sparse")


def test_task_lists_match_metaworld_and_lerobot():
    """The fixed one-hot order is MetaWorld's MT50 order; MT10 is MetaWorld's; every task has LeRobot's
    instruction and scripted expert."""
    import metaworld
    from metaworld.env_dict import MT10_V3

    from lerobot.envs.metaworld import TASK_DESCRIPTIONS, TASK_POLICY_MAPPING

    assert METAWORLD_V3_TASKS == tuple(metaworld.ALL_V3_ENVIRONMENTS)
    assert MT10_TASKS == tuple(MT10_V3)
    assert set(METAWORLD_V3_TASKS) <= set(TASK_DESCRIPTIONS) and set(METAWORLD_V3_TASKS) <= set(TASK_POLICY_MAPPING)
    assert MetaWorldStateEnvConfig(task="mt10").tasks == MT10_TASKS
    assert MetaWorldStateEnvConfig(task=" push-v3 , drawer-open-v3").tasks == ("push-v3", "drawer-open-v3")


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match=r"unknown MetaWorld task\(s\) pushh-v3; valid: assembly-v3, .*push-v3"):
        MetaWorldStateEnvConfig(task="pushh-v3")
    with pytest.raises(ValueError, match="unknown MetaWorld task.*push-v2"):
        MetaWorldStateEnvConfig(task="push-v3,push-v2")
    with pytest.raises(ValueError, match="names no MetaWorld task"):
        MetaWorldStateEnvConfig(task="")
    with pytest.raises(ValueError, match="names no MetaWorld task"):
        MetaWorldStateEnvConfig(task=None)
    with pytest.raises(ValueError, match="empty entry"):
        MetaWorldStateEnvConfig(task="push-v3,")
    with pytest.raises(ValueError, match="push-v3 more than once"):
        MetaWorldStateEnvConfig(task="push-v3,push-v3")
    with pytest.raises(ValueError, match=r"reward_type='shaped'.*sparse, dense"):
        MetaWorldStateEnvConfig(reward_type="shaped")
    for bad in (0, 501, True):
        with pytest.raises(ValueError, match=rf"episode_length={bad!r} must be an integer in \[1, 500\]"):
            MetaWorldStateEnvConfig(episode_length=bad)


def test_config_import_and_validation_load_no_simulator():
    code = ("import sys; from lerobot_policy_pi_rl.envs.metaworld import MetaWorldStateEnvConfig as C; "
            "C(task='mt10', task_one_hot=True); assert 'metaworld' not in sys.modules and 'mujoco' not in "
            "sys.modules, sorted(m for m in sys.modules if 'mujoco' in m or 'metaworld' in m)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]


# ----------------------------------------------------------------------------------------------------------------
# The env
# ----------------------------------------------------------------------------------------------------------------


def test_seeded_resets_fix_object_and_goal():
    a, b = _env(), _env()
    try:
        first = a.reset(seed=3)[0]["agent_pos"]
        assert first.shape == (39,) and first.dtype == np.float32
        np.testing.assert_array_equal(b.reset(seed=3)[0]["agent_pos"], first)  # another instance
        other = a.reset(seed=4)[0]["agent_pos"]
        assert not np.allclose(other[4:7], first[4:7]) and not np.allclose(other[36:39], first[36:39])
        np.testing.assert_array_equal(a.reset(seed=3)[0]["agent_pos"], first)  # the same instance, again
        # Without a seed the generator continues: a new scene, the same one after the same seeded reset.
        following = a.reset()[0]["agent_pos"]
        assert not np.allclose(following[4:7], first[4:7])
        b.reset(seed=3)
        np.testing.assert_array_equal(b.reset()[0]["agent_pos"], following)
        # The 18 values of the previous frame equal the current ones at a reset.
        np.testing.assert_array_equal(first[18:36], first[:18])
    finally:
        a.close()
        b.close()


def test_one_hot_is_appended_in_the_fixed_task_order():
    for task in ("push-v3", "drawer-open-v3"):
        plain, hot = _env(task), _env(task, task_one_hot=True)
        try:
            state = hot.reset(seed=1)[0]["agent_pos"]
            assert state.shape == (89,)
            np.testing.assert_array_equal(state[:39], plain.reset(seed=1)[0]["agent_pos"])
            expected = np.zeros(50, dtype=np.float32)
            expected[METAWORLD_V3_TASKS.index(task)] = 1.0
            np.testing.assert_array_equal(state[39:], expected)
            obs, *_ = hot.step(hot.expert_action())
            np.testing.assert_array_equal(obs["agent_pos"][39:], expected)
            # The expert reads the first 39 values, also when handed the one-hot state (float32: to rounding).
            np.testing.assert_allclose(hot.expert_action(obs["agent_pos"]), hot.expert_action(), atol=1e-5)
        finally:
            plain.close()
            hot.close()
    assert METAWORLD_V3_TASKS.index("push-v3") == 40 and METAWORLD_V3_TASKS.index("drawer-open-v3") == 19


def test_expert_succeeds_and_success_terminates():
    """MetaWorld's push expert from 5 fixed seeds: it succeeds on at least 4 (it does on all 5 here); success ends
    the episode as a termination with sparse reward 1 on that step only."""
    env = _env()
    try:
        outcomes = [_rollout(env, seed) for seed in range(5)]
        assert sum(steps[-1][4] for steps in outcomes) >= 4
        for steps in outcomes:
            *before, last = steps
            if last[4]:
                assert last[1:4] == (1.0, True, False)
                assert all(step[1:5] == (0.0, False, False, False) for step in before)
        with pytest.raises(RuntimeError, match="after the episode ended"):
            env.step(np.zeros(4))
    finally:
        env.close()


def test_dense_reward_is_metaworlds_divided_by_ten():
    """The same seed and actions as a bare MetaWorld env set up the same way: the same states, rewards / 10."""
    dense = _env(reward_type="dense")
    env_cls, task = _benchmark_task("push-v3")
    bare = env_cls()
    try:
        steps = _rollout(dense, seed=2, max_steps=40)
        bare.set_task(task)
        bare._freeze_rand_vec, bare.seeded_rand_vec = False, True
        bare.seed(2)
        raw, _ = bare.reset()
        dense.reset(seed=2)
        for obs, reward, *_ in steps:
            action = dense.expert_action(raw)
            raw, raw_reward, *_ = bare.step(action)
            np.testing.assert_array_equal(obs, raw.astype(np.float32))
            assert reward == pytest.approx(raw_reward / DENSE_REWARD_SCALE)
        rewards = [s[1] for s in steps]
        assert all(0.0 <= r <= 1.0 for r in rewards) and len(set(rewards)) > 10  # shaped, not sparse
    finally:
        dense.close()
        bare.close()


def test_time_limit_truncates_and_actions_are_clipped():
    env = _env(episode_length=5)
    try:
        assert env._max_episode_steps == 5
        big = _rollout(env, seed=0, actions=[np.full(4, 5.0, dtype=np.float32)] * 5)
        unit = _rollout(env, seed=0, actions=[np.ones(4, dtype=np.float32)] * 5)
        assert [s[2:4] for s in big] == [(False, False)] * 4 + [(False, True)]
        for (obs_big, *_), (obs_unit, *_) in zip(big, unit, strict=True):
            np.testing.assert_array_equal(obs_big, obs_unit)
        with pytest.raises(ValueError, match=r"action of shape \(3,\)"):
            env.reset(seed=0)
            env.step(np.zeros(3))
    finally:
        env.close()


def test_task_attributes_render_and_lerobot_keys():
    env = make_metaworld_env(MetaWorldStateEnvConfig(task="drawer-open-v3"))
    try:
        base = env.unwrapped
        assert base.task == "drawer-open-v3" and base.task_description == task_description("drawer-open-v3")
        assert base.task_description == "Open a drawer"
        obs, info = env.reset(seed=0)
        assert set(obs) == {OBS_STATE} and obs[OBS_STATE].shape == (39,) and info == {"is_success": False}
        frame = env.render()
        assert frame.shape == (256, 256, 3) and frame.dtype == np.uint8 and frame.std() > 0
    finally:
        env.close()
    with pytest.raises(ValueError, match="names 2 tasks; pass the one to build"):
        make_metaworld_env(MetaWorldStateEnvConfig(task=TWO_TASKS))
    for bad in ("mt10", "push", "push-v3,drawer-open-v3"):
        with pytest.raises(ValueError, match=rf"one MetaWorld v3 task, not {bad!r}; valid: assembly-v3"):
            make_metaworld_env(MetaWorldStateEnvConfig(), bad)


# ----------------------------------------------------------------------------------------------------------------
# LeRobot's make_env and the PI-RL actor
# ----------------------------------------------------------------------------------------------------------------


def test_make_env_gives_one_vector_env_per_task():
    cfg = MetaWorldStateEnvConfig(task=TWO_TASKS, task_one_hot=True, episode_length=3)
    envs = make_env(cfg, n_envs=2)
    try:
        assert list(envs) == ["push-v3", "drawer-open-v3"] and all(list(by_id) == [0] for by_id in envs.values())
        for task, by_id in envs.items():
            vec = by_id[0]
            assert vec.num_envs == 2
            assert [e.task for e in vec.envs] == [task, task]
            assert list(vec.call("task_description")) == [task_description(task)] * 2
            assert list(vec.call("_max_episode_steps")) == [3, 3]
            obs, _ = vec.reset(seed=[0, 1])
            batch = preprocess_observation(obs)
            assert tuple(batch[OBS_STATE].shape) == (2, 89)
            assert batch[OBS_STATE][:, 39 + METAWORLD_V3_TASKS.index(task)].tolist() == [1.0, 1.0]
            for _ in range(3):
                obs, reward, terminated, truncated, info = vec.step(np.zeros((2, 4), dtype=np.float32))
            assert truncated.tolist() == [True, True] and not terminated.any()  # then autoreset, same step
    finally:
        for by_id in envs.values():
            by_id[0].close()


@pytest.mark.slow
def test_make_env_async_runs_the_envs_in_worker_processes():
    cfg = MetaWorldStateEnvConfig(task="push-v3")
    vec = make_env(cfg, n_envs=2, use_async_envs=True)["push-v3"][0]
    sync = make_env(cfg, n_envs=2)["push-v3"][0]
    try:
        obs, _ = vec.reset(seed=[5, 6])
        expected, _ = sync.reset(seed=[5, 6])
        np.testing.assert_array_equal(obs["agent_pos"], expected["agent_pos"])
    finally:
        vec.close()
        sync.close()


def test_actor_streams_run_both_tasks_with_their_instructions():
    import torch

    from lerobot_policy_pi_rl.configuration_pi_rl import PiRLConfig
    from lerobot_policy_pi_rl.runtime import env_streams

    env_cfg = MetaWorldStateEnvConfig(task=TWO_TASKS, episode_length=4)
    policy_cfg = PiRLConfig(
        device="cpu",
        input_features={OBS_STATE: env_cfg.features["agent_pos"]},
        output_features={ACTION: env_cfg.features[ACTION]},
    )
    streams = env_streams.make_env_streams(SimpleNamespace(env=env_cfg, policy=policy_cfg), 4, seed=0)
    try:
        assert [s.task_name for s in streams] == ["push-v3/0", "push-v3/0", "drawer-open-v3/0", "drawer-open-v3/0"]
        assert [s.task for s in streams] == [task_description("push-v3")] * 2 + [task_description("drawer-open-v3")] * 2
        assert all(s.max_episode_steps == 4 for s in streams)
        first = [s.reset()[OBS_STATE] for s in streams]
        assert all(tuple(obs.shape) == (1, 39) for obs in first)
        assert not torch.equal(first[0], first[1])  # different stream seeds, different scenes
        results = [streams[0].step(torch.zeros(4)) for _ in range(4)]
        assert [r.truncated for r in results] == [False, False, False, True]
    finally:
        for s in streams:
            s.close()


# ----------------------------------------------------------------------------------------------------------------
# Scripted demonstrations
# ----------------------------------------------------------------------------------------------------------------


def test_record_demos_writes_every_task_into_one_dataset(tmp_path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from lerobot_policy_pi_rl.scripts import record_demos

    root = tmp_path / "demos"
    report = record_demos.run([
        "--env.type=pi_rl_metaworld", f"--env.task={TWO_TASKS}", "--output_dir", str(root), "--num_episodes", "2",
        "--env.episode_length=60", "--seed", "3", "--action_noise", "0.1",
    ])  # fmt: skip
    assert report["tasks"] == ["push-v3", "drawer-open-v3"] and report["num_episodes"] == 4
    assert [(e["task"], e["seed"]) for e in report["episodes"]] == [
        ("push-v3", 3), ("push-v3", 4), ("drawer-open-v3", 3), ("drawer-open-v3", 4)]
    assert report["per_task"]["drawer-open-v3"]["instruction"] == "Open a drawer"
    assert all(report["per_task"][t]["num_episodes"] == 2 for t in report["tasks"])
    assert report["env"]["type"] == "pi_rl_metaworld" and report["env"]["episode_length"] == 60

    dataset = LeRobotDataset("local/metaworld", root=root)
    assert dataset.num_episodes == 4 and dataset.fps == 80
    assert dataset.num_frames == report["num_frames"] == sum(e["steps"] for e in report["episodes"])
    features = dataset.meta.features
    assert tuple(features[OBS_STATE]["shape"]) == (39,) and features[OBS_STATE]["names"] == STATE_NAMES
    assert tuple(features[ACTION]["shape"]) == (4,)
    assert {"next.reward", "next.done", "next.success"} <= set(features)
    # Each episode carries its task's instruction; every episode ends with a done frame.
    episode = np.asarray(dataset.hf_dataset["episode_index"]).reshape(-1)
    starts = [int(np.flatnonzero(episode == i)[0]) for i in range(4)]
    assert [dataset[i]["task"] for i in starts] == [task_description("push-v3")] * 2 + ["Open a drawer"] * 2
    assert int(np.asarray(dataset.hf_dataset["next.done"]).sum()) == 4
    successes = sum(e["success"] for e in report["episodes"])
    assert int(np.asarray(dataset.hf_dataset["next.success"]).sum()) == successes

    # The first frame is the env's seeded first observation and the expert's action plus the episode's noise.
    env = _env("push-v3", episode_length=60)
    try:
        obs, _ = env.reset(seed=3)
        noise = np.random.default_rng((3, 1)).normal(0.0, 0.1, size=4)
        frame = dataset[0]
        np.testing.assert_array_equal(frame[OBS_STATE].numpy(), obs["agent_pos"])
        np.testing.assert_allclose(frame[ACTION].numpy(), np.clip(env.expert_action() + noise, -1, 1), atol=1e-6)
    finally:
        env.close()


def test_record_demos_with_the_one_hot_and_success_only(tmp_path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from lerobot_policy_pi_rl.scripts import record_demos

    root = tmp_path / "demos"
    report = record_demos.run([
        "--env.type", "pi_rl_metaworld", "--env.task", "push-v3", "--env.task_one_hot=true", "--output_dir",
        str(root), "--num_episodes", "1", "--success_only", "--repo_id", "local/mw_push",
    ])  # fmt: skip
    assert report["num_episodes"] == 1 and report["success_rate_kept"] == 1.0
    dataset = LeRobotDataset("local/mw_push", root=root)
    assert tuple(dataset.meta.features[OBS_STATE]["shape"]) == (89,)
    assert dataset.meta.features[OBS_STATE]["names"][39 + METAWORLD_V3_TASKS.index("push-v3")] == "task_push-v3"
    assert dataset[0][OBS_STATE][39 + METAWORLD_V3_TASKS.index("push-v3")] == 1.0


def test_record_demos_refuses_pickcube_flags_on_metaworld(tmp_path):
    from lerobot_policy_pi_rl.scripts import record_demos

    with pytest.raises(ValueError, match="--camera: PickCube shorthand"):
        record_demos.run(["--env.type=pi_rl_metaworld", "--output_dir", str(tmp_path / "d"), "--num_episodes", "1",
                          "--camera", "blank"])
    with pytest.raises(ValueError, match="unknown MetaWorld task"):
        record_demos.run(["--env.type=pi_rl_metaworld", "--env.task=push", "--output_dir", str(tmp_path / "d"),
                          "--num_episodes", "1"])
    assert not (tmp_path / "d").exists()


# ----------------------------------------------------------------------------------------------------------------
# Evaluation (a random-weight pi_rl flow_mlp policy reading the 39-d state)
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import torch

    from conftest import make_flow_mlp_config
    from lerobot.configs.types import PolicyFeature

    from lerobot_policy_pi_rl.modeling_pi_rl import PiRLPolicy
    from lerobot_policy_pi_rl.processor_pi_rl import make_pi_rl_pre_post_processors

    config = make_flow_mlp_config(input_features={OBS_STATE: PolicyFeature(type=FeatureType.STATE, shape=(39,))})

    def stats(n: int) -> dict:
        return {"mean": torch.zeros(n), "std": torch.ones(n), "min": -torch.ones(n), "max": torch.ones(n)}

    preprocessor, postprocessor = make_pi_rl_pre_post_processors(
        config, dataset_stats={OBS_STATE: stats(39), ACTION: stats(4)}
    )
    path = tmp_path_factory.mktemp("metaworld_policy") / "pretrained_model"
    PiRLPolicy(config).save_pretrained(path)
    preprocessor.save_pretrained(path)
    postprocessor.save_pretrained(path)
    return path


def _eval_args(checkpoint, *extra: str) -> list[str]:
    return ["--env.type=pi_rl_metaworld", f"--env.task={TWO_TASKS}", "--policy_path", str(checkpoint),
            "--num_episodes", "3", "--seed", "100000", "--num_envs", "2", "--env.episode_length=10", "--quiet",
            *extra]


def test_evaluate_reports_every_task_and_the_pooled_rate(checkpoint, tmp_path):
    import json

    from lerobot_policy_pi_rl.scripts import evaluate

    output = tmp_path / "eval.json"
    evaluate.run(_eval_args(checkpoint, "--output", str(output)))
    result = json.loads(output.read_text())
    assert result["tasks"] == ["push-v3", "drawer-open-v3"] and list(result["per_task"]) == result["tasks"]
    assert result["num_episodes"] == 6 and result["seeds"] == [100000, 100001, 100002] * 2
    assert [e["task"] for e in result["episodes"]] == ["push-v3"] * 3 + ["drawer-open-v3"] * 3
    assert all(1 <= e["length"] <= 10 and "final_gripper_cube_distance_m" not in e for e in result["episodes"])
    for task, stats in result["per_task"].items():
        episodes = [e for e in result["episodes"] if e["task"] == task]
        k = sum(e["success"] for e in episodes)
        assert stats["num_episodes"] == 3 and stats["num_successes"] == k
        assert stats["success_rate"] == pytest.approx(k / 3)
        assert stats["success_ci95"] == pytest.approx(list(evaluate.wilson_interval(k, 3)))
        assert stats["env_steps"] == sum(e["length"] for e in episodes)
        assert stats["mean_length"] == pytest.approx(np.mean([e["length"] for e in episodes]))
    k = sum(e["success"] for e in result["episodes"])
    assert result["success_ci95"] == pytest.approx(list(evaluate.wilson_interval(k, 6)))
    assert result["env_steps"] == sum(s["env_steps"] for s in result["per_task"].values())
    assert "info['success']" in result["success_definition"] and "any step" in result["success_definition"]
    assert result["env"]["type"] == "pi_rl_metaworld" and result["env"]["task"] == TWO_TASKS


def test_evaluate_refuses_a_policy_the_env_does_not_feed(checkpoint):
    from lerobot_policy_pi_rl.scripts import evaluate

    with pytest.raises(ValueError, match=r"observation.state of shape \(39,\).*task_one_hot=True.*\(89,\)"):
        evaluate.run(_eval_args(checkpoint, "--env.task_one_hot=true"))
    with pytest.raises(ValueError, match="--episode_length: PickCube shorthand"):
        evaluate.run(_eval_args(checkpoint, "--episode_length", "10"))


@pytest.mark.slow
def test_evaluate_in_workers_reproduces_one_process_on_two_tasks(checkpoint):
    """Every task's waves split over 2 spawned workers give the same per-episode results; dense returns make each
    episode's outcome distinct, so wrong seeds, noise or task order would show."""
    from lerobot_policy_pi_rl.scripts import evaluate

    one, two = (evaluate.run(_eval_args(checkpoint, "--env.reward_type=dense", "--workers", str(w))) for w in (1, 2))
    assert two["workers"] == 2 and one["episodes"] == two["episodes"]
    assert len({e["return"] for e in two["episodes"]}) == 6


@pytest.mark.slow
def test_lerobot_eval_runs_the_env_with_a_pi_rl_policy(checkpoint, tmp_path):
    import json

    from conftest import subprocess_env

    out = tmp_path / "lerobot_eval"
    proc = subprocess.run([
        os.path.join(os.path.dirname(sys.executable), "lerobot-eval"), f"--policy.path={checkpoint}",
        "--env.type=pi_rl_metaworld", f"--env.task={TWO_TASKS}", "--env.episode_length=5", "--eval.n_episodes=1",
        "--eval.batch_size=1", "--eval.use_async_envs=false", "--policy.device=cpu", f"--output_dir={out}",
    ], capture_output=True, text=True, env=subprocess_env(), timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    info = json.loads((out / "eval_info.json").read_text())
    assert info["overall"]["n_episodes"] == 2 and set(info["per_group"]) == {"push-v3", "drawer-open-v3"}
