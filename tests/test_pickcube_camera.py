"""PickCube observation options (`state_includes_cube`, `camera`, `camera_size`), and their whole path: scripted
demos -> `lerobot-train` -> evaluation (this package's and `lerobot-eval`) -> PI-RL actor and learner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

import numpy as np
import pytest

from lerobot.configs import FeatureType, PolicyFeature
from lerobot.envs import env_to_policy_features, make_env
from lerobot.envs.utils import preprocess_observation
from lerobot.utils.constants import ACTION, OBS_ENV_STATE, OBS_STATE

from conftest import subprocess_env
from lerobot_policy_pi_rl.envs import PickCubeStateEnvConfig, ScriptedPickController, make_pickcube_env
from lerobot_policy_pi_rl.envs.pickcube import CUBE_IN_STATE, cube_position
from lerobot_policy_pi_rl.envs.scripted import run_scripted_episode

FRONT = "observation.images.front"
WRIST = "observation.images.wrist"
HOLD = np.array([0.0, 0.0, 0.0, 1.0], dtype=np.float32)
BIN = Path(sys.executable).parent

OPTIONS = [
    {},
    {"state_includes_cube": True},
    {"camera": "blank", "camera_size": 16},
    {"camera": "front", "state_includes_cube": True},
    {"camera": "wrist", "camera_size": 24},
]


def _env(lerobot_keys: bool = True, **options):
    return make_pickcube_env(PickCubeStateEnvConfig(episode_length=20, **options), lerobot_keys=lerobot_keys)


def test_default_config_produces_exactly_the_old_observations():
    cfg = PickCubeStateEnvConfig()
    assert cfg.features == {
        ACTION: PolicyFeature(type=FeatureType.ACTION, shape=(4,)),
        "agent_pos": PolicyFeature(type=FeatureType.STATE, shape=(18,)),
        "environment_state": PolicyFeature(type=FeatureType.ENV, shape=(3,)),
    }
    assert cfg.features_map == {ACTION: ACTION, "agent_pos": OBS_STATE, "environment_state": OBS_ENV_STATE}
    for lerobot_keys, keys in ((False, ("agent_pos", "environment_state")), (True, (OBS_STATE, OBS_ENV_STATE))):
        env = _env(lerobot_keys)
        try:
            obs, _ = env.reset(seed=0)
            assert {k: (v.shape, v.dtype) for k, v in obs.items()} == {
                keys[0]: ((18,), np.float32), keys[1]: ((3,), np.float32)
            }
            assert set(env.observation_space.spaces) == set(keys)
        finally:
            env.close()


def test_state_includes_cube_appends_the_cube_sensor_to_the_state():
    cfg = PickCubeStateEnvConfig(state_includes_cube=True)
    assert {k: tuple(f.shape) for k, f in env_to_policy_features(cfg).items()} == {ACTION: (4,), OBS_STATE: (21,)}
    plain, with_cube = _env(), _env(state_includes_cube=True)
    try:
        a, _ = plain.reset(seed=4)
        b, _ = with_cube.reset(seed=4)
        for step in range(4):
            assert set(b) == {OBS_STATE} and b[OBS_STATE].shape == (21,) and b[OBS_STATE].dtype == np.float32
            np.testing.assert_array_equal(b[OBS_STATE][:18], a[OBS_STATE])
            np.testing.assert_array_equal(b[OBS_STATE][CUBE_IN_STATE], a[OBS_ENV_STATE])
            sensor = with_cube.unwrapped.data.sensor("block_pos").data
            np.testing.assert_array_equal(b[OBS_STATE][18:], sensor.astype(np.float32))
            np.testing.assert_array_equal(cube_position(b), cube_position(a))
            action = np.array([0.3, -0.2, -0.5, 1.0 + step / 4], dtype=np.float32)
            a, b = plain.step(action)[0], with_cube.step(action)[0]
    finally:
        plain.close()
        with_cube.close()
    with pytest.raises(ValueError, match="18 values"):
        cube_position({OBS_STATE: np.zeros(18, dtype=np.float32)})


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_observation_space_and_features_match_the_observations(options):
    features = env_to_policy_features(PickCubeStateEnvConfig(**options))
    for lerobot_keys in (False, True):
        env = _env(lerobot_keys, **options)
        try:
            for obs in (env.reset(seed=1)[0], env.step(HOLD)[0]):
                assert env.observation_space.contains(obs), {k: getattr(v, "shape", v) for k, v in obs.items()}
                assert set(obs) == set(env.observation_space.spaces)
                if lerobot_keys:
                    # The package's own loops see what a policy built from the env config expects.
                    assert {k: v.shape for k, v in obs.items()} == {
                        k: tuple(f.shape) for k, f in features.items() if k != ACTION
                    }
        finally:
            env.close()


def test_blank_frames_are_zeros_and_nothing_is_rendered(monkeypatch):
    import mujoco

    raw, keyed = _env(False, camera="blank", camera_size=16), _env(camera="blank", camera_size=16)

    def no_rendering(self, *args, **kwargs):
        raise AssertionError("camera=blank rendered a frame")

    monkeypatch.setattr(mujoco.Renderer, "render", no_rendering)
    try:
        frame = raw.reset(seed=0)[0]["pixels"]["front"]
        assert frame.shape == (16, 16, 3) and frame.dtype == np.uint8 and not frame.any()
        assert not raw.step(HOLD)[0]["pixels"]["front"].any()
        image = keyed.reset(seed=0)[0][FRONT]
        assert image.shape == (3, 16, 16) and image.dtype == np.float32 and not image.any()
    finally:
        raw.close()
        keyed.close()


def test_front_camera_sees_the_cube_and_renderers_do_not_interfere():
    """Two envs with their own renderers (and gym_hil's renderer used in between): each frame is what its env's
    state shows, the cube's position changes the front frame, and LeRobot keys are `preprocess_observation`'s."""
    one, two = _env(False, camera="front", camera_size=32), _env(False, camera="front", camera_size=32)
    keyed = _env(camera="front", camera_size=32)
    try:
        first = one.reset(seed=3)[0]["pixels"]["front"]
        other_cube = two.reset(seed=5)[0]["pixels"]["front"]
        one.render()  # gym_hil's own 128 x 128 renderer, unchanged
        same_cube = two.reset(seed=3)[0]["pixels"]["front"]
        assert first.shape == (32, 32, 3) and first.dtype == np.uint8 and first.std() > 10
        np.testing.assert_array_equal(first, same_cube)
        # Same arm pose, other cube position: only a few pixels (the cube) differ.
        changed = np.any(first != other_cube, axis=-1).mean()
        assert 0 < changed < 0.1, changed
        image = keyed.reset(seed=3)[0][FRONT]
        np.testing.assert_array_equal(image, preprocess_observation({"pixels": {"front": first}})[FRONT][0].numpy())
        assert one.render().shape == (128, 128, 3)
    finally:
        for env in (one, two, keyed):
            env.close()


def test_wrist_camera_renders_the_hand_camera():
    front, wrist = _env(False, camera="front"), _env(False, camera="wrist")
    try:
        f = front.reset(seed=2)[0]["pixels"]["front"]
        obs = wrist.reset(seed=2)[0]
        assert set(obs["pixels"]) == {"wrist"}
        w = obs["pixels"]["wrist"]
        assert w.shape == f.shape and w.std() > 1 and not np.array_equal(w, f)
        moved = wrist.step(np.array([0.0, 0.0, -1.0, 1.0], dtype=np.float32))[0]["pixels"]["wrist"]
        assert not np.array_equal(moved, w)  # the camera moves with the hand
    finally:
        front.close()
        wrist.close()


@pytest.mark.parametrize(
    ("options", "message"),
    [({"camera": "top"}, "env.camera='top'"), ({"camera": "Front"}, "'Front'"),
     ({"camera_size": 4}, "env.camera_size=4"), ({"camera_size": 0, "camera": "blank"}, "camera_size=0")],
)
def test_bad_camera_options_are_rejected_naming_the_value(options, message):
    with pytest.raises(ValueError, match=message):
        PickCubeStateEnvConfig(**options)


def test_lerobot_make_env_gives_raw_pixels_and_the_cube_in_the_state():
    cfg = PickCubeStateEnvConfig(episode_length=5, camera="blank", camera_size=16, state_includes_cube=True)
    vec = make_env(cfg, n_envs=2)["pi_rl_pickcube"][0]
    try:
        batch = preprocess_observation(vec.reset(seed=0)[0])
        assert set(batch) == {OBS_STATE, FRONT}
        assert batch[OBS_STATE].shape == (2, 21) and batch[FRONT].shape == (2, 3, 16, 16)
    finally:
        vec.close()


def test_scripted_controller_acts_the_same_on_both_state_layouts():
    plain, with_cube = _env(), _env(state_includes_cube=True, camera="blank")
    try:
        for seed in (0, 1):
            a = run_scripted_episode(plain, ScriptedPickController(action_noise=0.2), seed=seed)
            b = run_scripted_episode(with_cube, ScriptedPickController(action_noise=0.2), seed=seed)
            assert a == b
    finally:
        plain.close()
        with_cube.close()


def test_record_demos_stores_the_state_with_the_cube_and_png_frames(tmp_path: Path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from lerobot_policy_pi_rl.scripts import record_demos

    root = tmp_path / "demos"
    report = record_demos.run([
        "--output_dir", str(root), "--num_episodes", "1", "--seed", "3", "--episode_length", "6",
        "--state_includes_cube", "--camera", "front", "--camera_size", "16",
    ])  # fmt: skip
    assert report["env"]["camera"] == "front" and report["env"]["state_includes_cube"] is True
    dataset = LeRobotDataset("local/pickcube", root=root)
    meta = dataset.meta.features
    assert OBS_ENV_STATE not in meta and meta[OBS_STATE]["names"][-3:] == ["cube_x", "cube_y", "cube_z"]
    assert meta[FRONT]["dtype"] == "image" and tuple(meta[FRONT]["shape"]) == (16, 16, 3)
    assert not list(root.rglob("*.mp4"))
    frame = dataset[0]
    assert frame[OBS_STATE].shape == (21,) and frame["task"] == report["task"]
    # The stored image is the env's frame, exactly (PNG is lossless).
    env = _env(camera="front", camera_size=16, state_includes_cube=True)
    try:
        obs, _ = env.reset(seed=3)
    finally:
        env.close()
    np.testing.assert_array_equal(frame[FRONT].numpy(), obs[FRONT])
    np.testing.assert_array_equal(frame[OBS_STATE].numpy(), obs[OBS_STATE])


def test_evaluate_refuses_a_policy_the_env_options_do_not_feed():
    from lerobot_policy_pi_rl.scripts.evaluate import check_policy_matches_env

    from conftest import make_flow_mlp_config

    config = make_flow_mlp_config(input_features={
        OBS_STATE: PolicyFeature(type=FeatureType.STATE, shape=(21,)),
        FRONT: PolicyFeature(type=FeatureType.VISUAL, shape=(3, 32, 32)),
    })
    check_policy_matches_env(config, PickCubeStateEnvConfig(state_includes_cube=True, camera="blank"))
    with pytest.raises(ValueError, match=r"observation.state of shape \(21,\).*state_includes_cube=False"):
        check_policy_matches_env(config, PickCubeStateEnvConfig(camera="blank"))
    with pytest.raises(ValueError, match=r"images \['observation.images.front'\].*camera='none'"):
        check_policy_matches_env(config, PickCubeStateEnvConfig(state_includes_cube=True))
    with pytest.raises(ValueError, match=r"observation.images.front of shape \(3, 32, 32\).*camera_size=64"):
        check_policy_matches_env(config, PickCubeStateEnvConfig(state_includes_cube=True, camera="front",
                                                                camera_size=64))


# ----------------------------------------------------------------------------------------------------------------
# The whole path with camera=blank, state_includes_cube=true (what SmolVLA needs)
# ----------------------------------------------------------------------------------------------------------------

ENV_FLAGS = ["--state_includes_cube", "--camera", "blank", "--camera_size", "16"]
ENV_OVERRIDES = {"env.state_includes_cube": "true", "env.camera": "blank", "env.camera_size": 16}


@pytest.fixture(scope="module")
def sft_checkpoint(tmp_path_factory) -> Path:
    """Two scripted demos with the options, then a few `lerobot-train` steps of a tiny flow_mlp pi_rl policy."""
    from lerobot_policy_pi_rl.scripts import record_demos

    tmp = tmp_path_factory.mktemp("blank_cube")
    record_demos.run(["--output_dir", str(tmp / "demos"), "--num_episodes", "2", "--episode_length", "12",
                      "--seed", "0", *ENV_FLAGS])
    out = tmp / "sft"
    cmd = [
        str(BIN / "lerobot-train"), "--policy.type=pi_rl", "--policy.backbone.type=flow_mlp",
        "--policy.backbone.hidden_dim=32", "--policy.backbone.num_layers=2", "--policy.backbone.token_dim=16",
        "--policy.backbone.image_channels=[8,8]", "--policy.value_head.hidden_dims=[32]", "--policy.chunk_size=4",
        "--policy.n_action_steps=4", "--policy.num_denoise_steps=2", "--policy.device=cpu",
        "--policy.push_to_hub=false", "--dataset.repo_id=local/pickcube", f"--dataset.root={tmp / 'demos'}",
        "--steps=4", "--batch_size=4", "--num_workers=0", "--save_freq=4", "--log_freq=2", "--wandb.enable=false",
        f"--output_dir={out}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    pretrained = out / "checkpoints" / "last" / "pretrained_model"
    features = json.loads((pretrained / "config.json").read_text())["input_features"]
    assert features[OBS_STATE]["shape"] == [21] and features[FRONT]["shape"] == [3, 16, 16], features
    return pretrained


def test_blank_camera_and_cube_state_through_both_evaluations(sft_checkpoint: Path, tmp_path: Path):
    from lerobot_policy_pi_rl.scripts import evaluate

    args = ["--policy_path", str(sft_checkpoint), "--num_episodes", "2", "--num_envs", "2", "--episode_length",
            "6", "--seed", "7", "--quiet"]
    result = evaluate.run([*args, *ENV_FLAGS])
    assert result["num_episodes"] == 2 and result["env"]["camera"] == "blank"
    assert all(0 < e["final_gripper_cube_distance_m"] < 1 for e in result["episodes"])
    with pytest.raises(ValueError, match="state_includes_cube=False"):
        evaluate.run(args)

    proc = subprocess.run([
        str(BIN / "lerobot-eval"), f"--policy.path={sft_checkpoint}", "--env.type=pi_rl_pickcube",
        *(f"--{k}={v}" for k, v in {**ENV_OVERRIDES, "env.episode_length": 5}.items()),
        "--eval.n_episodes=1", "--eval.batch_size=1", "--eval.use_async_envs=false", "--policy.device=cpu",
        f"--output_dir={tmp_path / 'lerobot_eval'}",
    ], capture_output=True, text=True, env=subprocess_env(), timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    (info,) = list((tmp_path / "lerobot_eval").rglob("eval_info.json"))
    assert json.loads(info.read_text())["overall"]["n_episodes"] == 1


def test_blank_camera_and_cube_state_through_the_pi_rl_actor_and_learner(sft_checkpoint: Path, tmp_path: Path):
    from test_runtime import free_port, run_in_threads, tiny_args

    args = tiny_args(free_port(), tmp_path / "run", num_updates=1, checkpoint_every_updates=0, **ENV_OVERRIDES,
                     **{"env.episode_length": 8})
    # The RL flags stay; the policy (architecture, features, normalization) comes from the SFT checkpoint.
    args = [a for a in args if not a.startswith("--policy.") or a.startswith(
        ("--policy.device", "--policy.actor_learner_config"))] + [f"--policy.path={sft_checkpoint}"]
    rollouts = []

    def record_rollouts(learner):
        update = learner.algorithm.update_rollout
        learner.algorithm.update_rollout = lambda rollout: rollouts.append(rollout) or update(rollout)

    run_in_threads(args, prepare_learner=record_rollouts)
    (rollout,) = rollouts
    assert rollout.observations[OBS_STATE].shape[1:] == (21,)
    assert rollout.observations[FRONT].shape[1:] == (3, 16, 16) and not rollout.observations[FRONT].any()
    assert OBS_ENV_STATE not in rollout.observations
