"""gym_hil PandaPickCube as a LeRobot `EnvConfig` (`--env.type=pi_rl_pickcube`): state-only by default.

What gym_hil gives (`gymnasium.make("gym_hil/PandaPickCube-v0", image_obs=False, reset_delay_seconds=0)`):
  * `agent_pos` (18, float32): 7 joint positions, 7 joint velocities, gripper command in [0, 255]
    (255 = closed; it is the actuator *command*, not the finger opening), TCP xyz.
  * `environment_state` (3, float32): cube xyz.
  * action (4): `[dx, dy, dz]` in [-1, 1], scaled by 0.025 m onto the end-effector target, and a gripper
    value in [0, 2] that is a *rate* command: the gripper command g in [0, 1] becomes clip(g + (a - 1), 0, 1).
    So 2 closes fully in one step, 0 opens fully, 1 holds, and in-between values move g partially.
  * sparse reward 1 when the cube is 0.1 m above its start height; the episode terminates there (success) or
    when the cube leaves the sampling area by more than 5 cm (failure). `info["succeed"]`.

What this module changes:
  * The cube position. gym_hil always puts the cube at (0.5, 0.0) unless `random_block_position=True`, and then
    draws from the *global* `np.random` (no per-episode seeding). Here the cube xy is drawn from gym_hil's own
    sampling box with a per-env generator re-seeded by `reset(seed=...)`, so `seed` alone fixes an episode
    (the physics is deterministic). `randomize_cube=false` restores gym_hil's fixed cube.
  * `info["is_success"]` (LeRobot's key) mirrors `info["succeed"]`; actions are clipped to the action space.
  * `render()` returns the front camera only (gym_hil returns [front, wrist]), as `lerobot-eval` videos need.
  * `task_description` / `task` attributes carry the language task, as LeRobot's sim envs do.
  * The arm controller runs through `opspace.FastOpspace` (`fast_controller`): gym_hil's arithmetic, bit for
    bit, at two thirds of the CPU per step.

Observation options, for policies that read only `observation.state` and need an image (SmolVLA); both off
by default, and then the observations are exactly gym_hil's:
  * `state_includes_cube`: the cube xyz is appended to `agent_pos` (18 -> 21 dims, `CUBE_IN_STATE`) and
    `environment_state` is not emitted.
  * `camera`: a square `camera_size` RGB frame under `pixels/<name>`. `front` (the scene's front camera) and
    `wrist` (the hand camera `handcam_rgb`) are rendered by a renderer of this wrapper's own with the costly
    effects off (no multisampling, shadows, reflections, skybox or haze): +26 ms (front) and +16 ms (wrist) per
    step at 32 or 64 px with osmesa on 2 cores (`bench/bench_env.py`), where gym_hil's renderer (8x multisampling,
    shadows) takes over 0.25 s per frame. `blank` is an all-zero frame under the
    name `front`, nothing rendered: the CPU-free stand-in for a camera that LeRobot's `empty_cameras` also feeds
    SmolVLA, for policies that refuse a batch without any image.

Two observation layouts:
  * raw gym_hil keys (`agent_pos`, `environment_state`, `pixels: {<name>: (S, S, 3) uint8}`): what LeRobot's
    `make_env`/`lerobot-eval` expect (`envs.utils.preprocess_observation` renames them);
  * LeRobot keys (`observation.state`, `observation.environment_state`, `observation.images.<name>`), numpy,
    unbatched: vectors float32, images float32 `(3, S, S)` in [0, 1] (what `preprocess_observation` makes of a
    uint8 frame): `make_pickcube_env(..., lerobot_keys=True)` (the default), for this package's own loops.

Even state-only, gym_hil builds a MuJoCo renderer: set `MUJOCO_GL=osmesa PYOPENGL_PLATFORM=osmesa` on a
headless machine. gym_hil and MuJoCo are imported lazily, so importing this module is cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import warnings

import gymnasium as gym
import numpy as np

from lerobot.configs import FeatureType, PolicyFeature
from lerobot.envs.configs import EnvConfig
from lerobot.utils.constants import ACTION, OBS_ENV_STATE, OBS_IMAGES, OBS_STATE

from .opspace import install_fast_opspace

GYM_HIL_TASKS = ("PandaPickCube-v0",)
REWARD_TYPES = ("sparse", "dense")

AGENT_POS_DIM = 18
CUBE_DIM = 3
ACTION_DIM = 4

# Layout of `agent_pos` (gym_hil `FrankaGymEnv.get_robot_state`).
JOINT_POS = slice(0, 7)
JOINT_VEL = slice(7, 14)
GRIPPER = 14
TCP_POS = slice(15, 18)
# Where the cube xyz sits in the state when `state_includes_cube` is on (appended after gym_hil's 18 values).
CUBE_IN_STATE = slice(AGENT_POS_DIM, AGENT_POS_DIM + CUBE_DIM)
# `agent_pos[GRIPPER]` is the gripper actuator command in [0, GRIPPER_MAX]; GRIPPER_MAX means closed.
GRIPPER_MAX = 255.0

# Gripper action values (a rate command, see the module docstring).
GRIPPER_OPEN = 0.0
GRIPPER_HOLD = 1.0
GRIPPER_CLOSE = 2.0
# End-effector displacement (m) of a unit xyz action (gym_hil's DEFAULT_EE_STEP_SIZE).
EE_STEP_SIZE = 0.025

DEFAULT_TASK_DESCRIPTION = "Pick up the cube and lift it."

CAMERAS = ("none", "front", "wrist", "blank")
# Image name (`pixels/<name>`, `observation.images.<name>`) of each camera choice; `blank` stands in for `front`.
CAMERA_NAMES = {"front": "front", "wrist": "wrist", "blank": "front"}
# The MJCF camera each rendered choice looks through.
MJCF_CAMERAS = {"front": "front", "wrist": "handcam_rgb"}
MIN_CAMERA_SIZE = 8


@EnvConfig.register_subclass("pi_rl_pickcube")
@dataclass
class PickCubeStateEnvConfig(EnvConfig):
    """gym_hil PandaPickCube, state-only by default (~6 ms CPU per step here). CLI: `--env.type=pi_rl_pickcube`.

    `features` / `features_map` follow from the observation options (`pickcube_features`); `__post_init__` sets them.
    """

    # gym_hil task (the `gym_hil/<task>` id); only the state-only pick task is supported.
    task: str | None = "PandaPickCube-v0"
    # Control rate: gym_hil steps the physics for 0.1 s per action.
    fps: int = 10
    # Episode step limit (truncation).
    episode_length: int = 100
    # Draw the cube xy uniformly from gym_hil's sampling box per episode (seeded); false: always at (0.5, 0.0).
    randomize_cube: bool = True
    # `sparse`: reward 1 on lifting the cube 0.1 m (success = that). `dense`: gym_hil's shaped reward, success =
    # lifted and still within 5 cm of the gripper.
    reward_type: str = "sparse"
    # Language task attached to observations and datasets.
    task_description: str = DEFAULT_TASK_DESCRIPTION
    # Run gym_hil's operational-space controller through `envs.opspace.FastOpspace`: the same arithmetic with less
    # Python per physics substep, bit-identical trajectories, 1.5x faster env steps. False: gym_hil's own controller.
    fast_controller: bool = True
    # Append the cube xyz to the state (`observation.state` 18 -> 21 dims) and emit no `environment_state`: for
    # policies that read only `observation.state` (SmolVLA, pi0).
    state_includes_cube: bool = False
    # Camera image `observation.images.<name>`: `none`; `front` (scene camera) or `wrist` (hand camera), rendered
    # at camera_size x camera_size (+16-26 ms per step); `blank`: an all-zero frame named `front`, nothing
    # rendered (a free stand-in for a camera, for policies that need at least one image, e.g. SmolVLA).
    camera: str = "none"
    # Side of the square camera frame in pixels (ignored with camera=none).
    camera_size: int = 32
    features: dict[str, PolicyFeature] = field(default_factory=dict)
    features_map: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in GYM_HIL_TASKS:
            raise ValueError(f"env.task={self.task!r} is not valid; allowed: {', '.join(GYM_HIL_TASKS)}")
        if self.reward_type not in REWARD_TYPES:
            raise ValueError(f"env.reward_type={self.reward_type!r} is not valid; allowed: {', '.join(REWARD_TYPES)}")
        if self.episode_length < 1:
            raise ValueError(f"env.episode_length={self.episode_length} must be >= 1")
        if self.camera not in CAMERAS:
            raise ValueError(f"env.camera={self.camera!r} is not valid; allowed: {', '.join(CAMERAS)}")
        if isinstance(self.camera_size, bool) or not isinstance(self.camera_size, int) or (
            self.camera_size < MIN_CAMERA_SIZE
        ):
            raise ValueError(f"env.camera_size={self.camera_size!r} must be an integer >= {MIN_CAMERA_SIZE}")
        self.features, self.features_map = pickcube_features(self)

    @property
    def camera_name(self) -> str | None:
        """Name of the image (`pixels/<name>`, `observation.images.<name>`); None without a camera."""
        return CAMERA_NAMES.get(self.camera)

    @property
    def state_dim(self) -> int:
        return AGENT_POS_DIM + (CUBE_DIM if self.state_includes_cube else 0)

    @property
    def gym_id(self) -> str:
        return f"gym_hil/{self.task}"

    @property
    def gym_kwargs(self) -> dict:
        """Keyword arguments of `gymnasium.make(self.gym_id, ...)` (checked against gym_hil 0.1.14)."""
        return {
            "image_obs": False,
            "reset_delay_seconds": 0,
            "reward_type": self.reward_type,
            # The cube is placed by `PickCubeStateEnv` with a seeded generator instead.
            "random_block_position": False,
            "max_episode_steps": self.episode_length,
        }

    def create_envs(self, n_envs: int, use_async_envs: bool = False) -> dict[str, dict[int, gym.vector.VectorEnv]]:
        """`lerobot.envs.make_env` hook: raw gym_hil observation keys, as `lerobot-eval` expects."""
        vec = make_pickcube_vec_env(self, n_envs, lerobot_keys=False, use_async=use_async_envs)
        return {self.type: {0: vec}}


def pickcube_features(cfg: PickCubeStateEnvConfig) -> tuple[dict[str, PolicyFeature], dict[str, str]]:
    """`(features, features_map)` of the raw observation keys that `cfg`'s options produce (LeRobot's `EnvConfig`
    convention: images `pixels/<name>` with shape (H, W, C), mapped to `observation.images.<name>`)."""
    features = {
        ACTION: PolicyFeature(type=FeatureType.ACTION, shape=(ACTION_DIM,)),
        "agent_pos": PolicyFeature(type=FeatureType.STATE, shape=(cfg.state_dim,)),
    }
    features_map = {ACTION: ACTION, "agent_pos": OBS_STATE}
    if not cfg.state_includes_cube:
        features["environment_state"] = PolicyFeature(type=FeatureType.ENV, shape=(CUBE_DIM,))
        features_map["environment_state"] = OBS_ENV_STATE
    if cfg.camera_name is not None:
        key = f"pixels/{cfg.camera_name}"
        features[key] = PolicyFeature(type=FeatureType.VISUAL, shape=(cfg.camera_size, cfg.camera_size, 3))
        features_map[key] = f"{OBS_IMAGES}.{cfg.camera_name}"
    return features, features_map


def cube_position(observation: dict[str, np.ndarray]) -> np.ndarray:
    """Cube xyz of a LeRobot-keyed observation in either layout (`environment_state`, or the state's tail)."""
    if OBS_ENV_STATE in observation:
        return observation[OBS_ENV_STATE]
    state = observation[OBS_STATE]
    if state.shape[-1] != AGENT_POS_DIM + CUBE_DIM:
        raise ValueError(
            f"observation has no {OBS_ENV_STATE!r} and its {OBS_STATE!r} has {state.shape[-1]} values, not "
            f"{AGENT_POS_DIM + CUBE_DIM} (env.state_includes_cube=true): it carries no cube position"
        )
    return state[..., CUBE_IN_STATE]


def make_camera_renderer(model, size: int, mjcf_camera: str):
    """A `mujoco.Renderer` of `size` x `size` for one camera, without the effects that dominate osmesa's cost.

    Multisampling and shadow maps are read from the model when the renderer's GL context is made, so they are
    switched off on the (shared) model only for that moment; the other effects are flags of this renderer's scene.
    gym_hil's own renderer (`render()`, lerobot-eval videos) keeps its settings.
    """
    import mujoco

    if mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, mjcf_camera) < 0:
        raise ValueError(f"the PickCube model has no camera named {mjcf_camera!r}")
    vis = model.vis
    saved = (vis.quality.offsamples, vis.quality.shadowsize, vis.global_.offwidth, vis.global_.offheight)
    vis.quality.offsamples, vis.quality.shadowsize = 0, 0
    # The offscreen buffer must hold the frame (gym_hil sizes it for its own 128 x 128 frames).
    vis.global_.offwidth, vis.global_.offheight = max(size, saved[2]), max(size, saved[3])
    try:
        renderer = mujoco.Renderer(model, height=size, width=size)
    finally:
        vis.quality.offsamples, vis.quality.shadowsize, vis.global_.offwidth, vis.global_.offheight = saved
    for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION, mujoco.mjtRndFlag.mjRND_SKYBOX,
                 mujoco.mjtRndFlag.mjRND_HAZE):
        renderer.scene.flags[flag] = False
    return renderer


class PickCubeStateEnv(gym.Wrapper):
    """gym_hil PandaPickCube with seeded cube placement, `is_success`, clipped actions, a task description, and
    the observation options of `PickCubeStateEnvConfig` (cube in the state, a camera)."""

    def __init__(self, env: gym.Env, cfg: PickCubeStateEnvConfig, seed: int | None = None):
        super().__init__(env)
        self.cfg = cfg
        self.task_description = cfg.task_description
        self.task = cfg.task_description
        self._cube_rng = np.random.default_rng(seed)
        self._camera_name = cfg.camera_name
        self._frame_shape = (cfg.camera_size, cfg.camera_size, 3)
        self._renderer = None
        if cfg.camera in MJCF_CAMERAS:
            self._mjcf_camera = MJCF_CAMERAS[cfg.camera]
            self._renderer = make_camera_renderer(env.unwrapped.model, cfg.camera_size, self._mjcf_camera)
        self.observation_space = self._configured_space(env.observation_space)

    def _configured_space(self, space: gym.spaces.Dict) -> gym.spaces.Dict:
        spaces = dict(space.spaces)
        if self.cfg.state_includes_cube:
            state, cube = spaces["agent_pos"], spaces.pop("environment_state")
            spaces["agent_pos"] = gym.spaces.Box(
                np.concatenate([state.low, cube.low]), np.concatenate([state.high, cube.high]), dtype=np.float32
            )
        if self._camera_name is not None:
            frame = gym.spaces.Box(0, 255, self._frame_shape, dtype=np.uint8)
            spaces["pixels"] = gym.spaces.Dict({self._camera_name: frame})
        return gym.spaces.Dict(spaces)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None:
            self._cube_rng = np.random.default_rng(seed)
        obs, info = self.env.reset(seed=seed, options=options)
        if self.cfg.randomize_cube:
            obs = self._place_cube(obs)
        info = dict(info, is_success=False, succeed=False)
        return self._observation(obs), info

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float32), self.action_space.low, self.action_space.high)
        obs, reward, terminated, truncated, info = self.env.step(action)
        info = dict(info, is_success=bool(info.get("succeed", False)))
        return self._observation(obs), float(reward), bool(terminated), bool(truncated), info

    def _observation(self, obs: dict[str, np.ndarray]) -> dict[str, Any]:
        """gym_hil's state-only observation -> the configured layout (unchanged with the options off)."""
        if self.cfg.state_includes_cube:
            obs = dict(obs)
            obs["agent_pos"] = np.concatenate([obs["agent_pos"], obs.pop("environment_state")]).astype(np.float32)
        if self._camera_name is not None:
            obs = dict(obs, pixels={self._camera_name: self._frame()})
        return obs

    def _frame(self) -> np.ndarray:
        if self._renderer is None:  # blank
            return np.zeros(self._frame_shape, dtype=np.uint8)
        self._renderer.update_scene(self.env.unwrapped.data, camera=self._mjcf_camera)
        return self._renderer.render()

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        super().close()

    def render(self) -> np.ndarray:
        """The front camera, `(128, 128, 3)` uint8 (gym_hil renders front and wrist; LeRobot's video wants one)."""
        return self.env.unwrapped.render()[0]

    def _place_cube(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import mujoco
        from gym_hil.envs.panda_pick_gym_env import _SAMPLING_BOUNDS

        base = self.env.unwrapped
        xy = self._cube_rng.uniform(_SAMPLING_BOUNDS[0], _SAMPLING_BOUNDS[1])
        qpos = base.data.jnt("block").qpos
        # The height is unchanged, so gym_hil's cached start height (success threshold) stays valid.
        qpos[:2] = xy
        mujoco.mj_forward(base.model, base.data)
        return dict(obs, environment_state=base.data.sensor("block_pos").data.astype(np.float32))


class LeRobotKeysWrapper(gym.ObservationWrapper):
    """Rename raw gym_hil observation keys to LeRobot keys (`cfg.features_map`, images `pixels/<name>`).

    Vectors stay numpy float32; uint8 `(H, W, 3)` frames become float32 `(3, H, W)` in [0, 1], as LeRobot's
    `preprocess_observation` converts them (without its batch dimension).
    """

    def __init__(self, env: gym.Env, features_map: dict[str, str]):
        super().__init__(env)
        raw = dict(env.observation_space.spaces)
        frames = raw.pop("pixels").spaces if "pixels" in raw else {}
        self._rename = {k: v for k, v in features_map.items() if k in raw}
        self._image_keys = {name: features_map.get(f"pixels/{name}", f"{OBS_IMAGES}.{name}") for name in frames}
        spaces = {self._rename.get(k, k): space for k, space in raw.items()}
        for name, frame in frames.items():
            h, w, c = frame.shape
            spaces[self._image_keys[name]] = gym.spaces.Box(0.0, 1.0, (c, h, w), dtype=np.float32)
        self.observation_space = gym.spaces.Dict(spaces)

    def observation(self, observation: dict[str, Any]) -> dict[str, np.ndarray]:
        out = {self._rename.get(k, k): np.asarray(v, dtype=np.float32) for k, v in observation.items() if k != "pixels"}
        for name, frame in observation.get("pixels", {}).items():
            out[self._image_keys[name]] = np.ascontiguousarray(frame.transpose(2, 0, 1), dtype=np.float32) / 255.0
        return out


def make_pickcube_env(
    cfg: PickCubeStateEnvConfig | None = None,
    seed: int | None = None,
    *,
    lerobot_keys: bool = True,
) -> gym.Env:
    """One PickCube env. `seed` seeds the cube placement until `reset(seed=...)` re-seeds it.

    `lerobot_keys=True`: observations `{observation.state: (18,), observation.environment_state: (3,)}` by default;
    False: gym_hil's `{agent_pos, environment_state}`. The options of `cfg` change them (module docstring).
    """
    import gym_hil  # noqa: F401  (registers the gym_hil/* ids)

    cfg = cfg or PickCubeStateEnvConfig()
    with warnings.catch_warnings():
        # gym_hil builds its 4-D action Box from float64 bounds; the float32 cast it warns about is exact.
        warnings.filterwarnings("ignore", message=".*precision lowered by casting to float32.*")
        env = gym.make(cfg.gym_id, disable_env_checker=cfg.disable_env_checker, **cfg.gym_kwargs)
    if cfg.fast_controller and not install_fast_opspace(env.unwrapped):
        warnings.warn(
            f"env.fast_controller=true but {type(env.unwrapped).__name__} is not the gym_hil FrankaGymEnv this "
            "package's controller mirrors; using gym_hil's own controller",
            stacklevel=2,
        )
    env = PickCubeStateEnv(env, cfg, seed=seed)
    if lerobot_keys:
        env = LeRobotKeysWrapper(env, cfg.features_map)
    return env


def make_pickcube_vec_env(
    cfg: PickCubeStateEnvConfig | None,
    n_envs: int,
    *,
    lerobot_keys: bool = True,
    use_async: bool = False,
    seed: int | None = None,
) -> gym.vector.VectorEnv:
    """`n_envs` PickCube envs as a gymnasium vector env with same-step autoreset (as LeRobot's `make_env`).

    Same-step autoreset: on the step an episode ends the returned observation is already the next episode's
    first one; the last observation is in `info["final_obs"]` and the last info in `info["final_info"]`.
    Sub-env i's cube generator starts from `seed + i` (when given); `reset(seed=s)` re-seeds them as s + i.
    `use_async` runs the envs in `forkserver` worker processes (a plain fork of a process that holds a MuJoCo
    OSMesa context hangs); on a 2-core CPU the synchronous env is the faster choice.
    """
    if n_envs < 1:
        raise ValueError(f"n_envs={n_envs} must be >= 1")
    cfg = cfg or PickCubeStateEnvConfig()

    def factory(i: int):
        return lambda: make_pickcube_env(cfg, None if seed is None else seed + i, lerobot_keys=lerobot_keys)

    env_fns = [factory(i) for i in range(n_envs)]
    if use_async and n_envs > 1:
        return gym.vector.AsyncVectorEnv(
            env_fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP, context="forkserver"
        )
    return gym.vector.SyncVectorEnv(env_fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
