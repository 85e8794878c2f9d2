"""State-only PickCube env and the scripted controller (needs MuJoCo with an OpenGL platform, e.g. osmesa)."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

import numpy as np
import pytest

from lerobot.envs import env_to_policy_features
from lerobot.envs.configs import EnvConfig
from lerobot.envs.utils import preprocess_observation
from lerobot.utils.constants import ACTION, OBS_ENV_STATE, OBS_STATE

from lerobot_policy_pi_rl.envs import (
    PickCubeStateEnvConfig,
    ScriptedPickController,
    make_pickcube_env,
    run_scripted_episode,
)

SEEDS = list(range(10))


@pytest.fixture(scope="module")
def env():
    env = make_pickcube_env(PickCubeStateEnvConfig())
    yield env
    env.close()


@pytest.fixture(scope="module")
def short_env():
    env = make_pickcube_env(PickCubeStateEnvConfig(episode_length=25))
    yield env
    env.close()


@pytest.fixture(scope="module")
def clean_results(env) -> list[dict]:
    return [run_scripted_episode(env, ScriptedPickController(), seed=s) for s in SEEDS]


def test_config_is_registered_and_declares_lerobot_features():
    assert EnvConfig.get_choice_class("pi_rl_pickcube") is PickCubeStateEnvConfig
    features = env_to_policy_features(PickCubeStateEnvConfig())
    assert {k: tuple(f.shape) for k, f in features.items()} == {
        ACTION: (4,),
        OBS_STATE: (18,),
        OBS_ENV_STATE: (3,),
    }


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="reward_type"):
        PickCubeStateEnvConfig(reward_type="shaped")
    with pytest.raises(ValueError, match="episode_length"):
        PickCubeStateEnvConfig(episode_length=0)


def test_make_policy_from_env_config():
    from lerobot.policies.factory import make_policy

    from conftest import make_flow_mlp_config

    cfg = make_flow_mlp_config(input_features={}, output_features={})
    policy = make_policy(cfg, env_cfg=PickCubeStateEnvConfig())
    assert set(policy.config.input_features) == {OBS_STATE, OBS_ENV_STATE}
    assert policy.config.action_dim == 4


def test_observations_match_config_features(env):
    features = env_to_policy_features(PickCubeStateEnvConfig())
    obs, info = env.reset(seed=3)
    assert set(obs) == {OBS_STATE, OBS_ENV_STATE}
    for key, value in obs.items():
        assert value.shape == tuple(features[key].shape) and value.dtype == np.float32
    assert env.action_space.shape == (4,)
    np.testing.assert_allclose(env.action_space.low, [-1, -1, -1, 0])
    np.testing.assert_allclose(env.action_space.high, [1, 1, 1, 2])
    assert info["is_success"] is False
    obs, reward, terminated, truncated, info = env.step(np.array([0.0, 0.0, 0.0, 1.0], dtype=np.float32))
    assert set(obs) == {OBS_STATE, OBS_ENV_STATE} and "is_success" in info
    assert reward == 0.0 and not terminated and not truncated


def test_cube_position_is_seeded(env):
    cube = lambda seed: env.reset(seed=seed)[0][OBS_ENV_STATE].copy()  # noqa: E731
    np.testing.assert_array_equal(cube(7), cube(7))
    assert np.abs(cube(7)[:2] - cube(8)[:2]).max() > 1e-3
    fixed = make_pickcube_env(PickCubeStateEnvConfig(randomize_cube=False))
    try:
        np.testing.assert_allclose(fixed.reset(seed=7)[0][OBS_ENV_STATE][:2], [0.5, 0.0], atol=1e-6)
    finally:
        fixed.close()


def test_episode_step_limit_truncates():
    short = make_pickcube_env(PickCubeStateEnvConfig(episode_length=3))
    try:
        short.reset(seed=0)
        hold = np.array([0.0, 0.0, 0.0, 1.0], dtype=np.float32)
        outcomes = [short.step(hold)[3] for _ in range(3)]
        assert outcomes == [False, False, True]
    finally:
        short.close()


def test_lerobot_make_env_builds_vector_env_with_raw_keys():
    from lerobot.envs import make_env

    envs = make_env(PickCubeStateEnvConfig(episode_length=5), n_envs=2)
    vec = envs["pi_rl_pickcube"][0]
    try:
        obs, _ = vec.reset(seed=0)
        batch = preprocess_observation(obs)
        assert batch[OBS_STATE].shape == (2, 18) and batch[OBS_ENV_STATE].shape == (2, 3)
        assert list(vec.call("task_description")) == [PickCubeStateEnvConfig().task_description] * 2
        assert vec.call("_max_episode_steps")[0] == 5
    finally:
        vec.close()


def test_scripted_controller_succeeds_without_noise(clean_results):
    successes = [r["success"] for r in clean_results]
    assert np.mean(successes) >= 0.9, clean_results
    assert np.mean([r["steps"] for r in clean_results if r["success"]]) < 30
    assert all(r["return"] == 1.0 for r in clean_results if r["success"])


def test_noise_lowers_scripted_success(clean_results, short_env):
    # Strong noise over a 25-step horizon (the clean controller needs ~18 steps): 5 seeds keep this cheap.
    seeds = SEEDS[:5]
    clean = [r["success"] and r["steps"] <= 25 for r in clean_results[: len(seeds)]]
    noisy = [run_scripted_episode(short_env, ScriptedPickController(action_noise=0.5), seed=s) for s in seeds]
    assert np.mean([r["success"] for r in noisy]) < np.mean(clean)


def test_scripted_controller_is_reproducible(short_env):
    a = run_scripted_episode(short_env, ScriptedPickController(action_noise=0.3), seed=4)
    b = run_scripted_episode(short_env, ScriptedPickController(action_noise=0.3), seed=4)
    assert a == b


def test_scripted_controller_rejects_bad_values():
    with pytest.raises(ValueError, match="action_noise"):
        ScriptedPickController(action_noise=-0.1)
    with pytest.raises(ValueError, match="epsilon"):
        ScriptedPickController(epsilon=1.5)


def _physics_trace(cfg: PickCubeStateEnvConfig, seeds: list[int]) -> tuple[list[np.ndarray], list[dict]]:
    """Every step's full MuJoCo state (qpos, qvel, ctrl) under a noisy scripted controller, and each outcome."""
    env = make_pickcube_env(cfg)
    data = env.unwrapped._data
    states: list[np.ndarray] = []

    def record(*_):
        states.append(np.concatenate([data.qpos, data.qvel, data.ctrl]).copy())

    try:
        outcomes = [
            run_scripted_episode(env, ScriptedPickController(action_noise=0.3), seed=s, on_step=record)
            for s in seeds
        ]
    finally:
        env.close()
    return states, outcomes


def test_fast_controller_is_bit_identical_to_gym_hil():
    seeds = [0, 1, 2, 5]
    fast_cfg = PickCubeStateEnvConfig(episode_length=40)
    stock_cfg = PickCubeStateEnvConfig(episode_length=40, fast_controller=False)
    fast, fast_outcomes = _physics_trace(fast_cfg, seeds)
    stock, stock_outcomes = _physics_trace(stock_cfg, seeds)
    # The episodes grasp, lift and miss: contact and both orientation branches are exercised.
    assert any(o["success"] for o in stock_outcomes) and not all(o["success"] for o in stock_outcomes)
    assert fast_outcomes == stock_outcomes
    assert len(fast) == len(stock) > 100
    for step, (a, b) in enumerate(zip(fast, stock)):
        assert np.array_equal(a, b), f"physics state differs at step {step}: max |diff| {np.abs(a - b).max()}"


def test_fast_controller_is_installed_only_on_gym_hil_franka_env(monkeypatch):
    from gym_hil.mujoco_gym_env import FrankaGymEnv

    from lerobot_policy_pi_rl.envs import pickcube
    from lerobot_policy_pi_rl.envs.opspace import install_fast_opspace

    fast = make_pickcube_env(PickCubeStateEnvConfig())
    stock = make_pickcube_env(PickCubeStateEnvConfig(fast_controller=False))
    try:
        assert "apply_action" in vars(fast.unwrapped) and "apply_action" not in vars(stock.unwrapped)

        base = stock.unwrapped
        base.__class__ = type("OverridesApplyAction", (type(base),), {"apply_action": FrankaGymEnv.apply_action})
        assert install_fast_opspace(base)  # the same method object: still gym_hil's loop
        base.__class__ = type("OwnApplyAction", (type(base),), {"apply_action": lambda self, action: None})
        del base.apply_action
        assert not install_fast_opspace(base) and "apply_action" not in vars(base)
    finally:
        fast.close()
        stock.close()

    monkeypatch.setattr(pickcube, "install_fast_opspace", lambda env: False)
    with pytest.warns(UserWarning, match="fast_controller"):
        make_pickcube_env(PickCubeStateEnvConfig()).close()


def test_fast_controller_indexes_consecutive_ids_by_slice_and_others_by_array():
    from lerobot_policy_pi_rl.envs.opspace import _index

    values = np.arange(10.0) * 1.5
    assert _index(np.arange(3, 7)) == slice(3, 7)
    scattered = _index(np.array([0, 2, 3]))
    assert isinstance(scattered, np.ndarray)
    # Same values either way: the slice is a view, the array a gather.
    np.testing.assert_array_equal(values[_index(np.arange(3, 7))], values[np.arange(3, 7)])
    np.testing.assert_array_equal(values[scattered], values[[0, 2, 3]])
