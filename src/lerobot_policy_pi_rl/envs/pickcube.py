"""State-only gym_hil PandaPickCube as a LeRobot `EnvConfig` (`--env.type=pi_rl_pickcube`).

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

Two observation layouts:
  * raw gym_hil keys (`agent_pos`, `environment_state`): what LeRobot's `make_env`/`lerobot-eval` expect
    (`envs.utils.preprocess_observation` renames them);
  * LeRobot keys (`observation.state`, `observation.environment_state`), numpy float32, unbatched:
    `make_pickcube_env(..., lerobot_keys=True)` (the default), for this package's own loops.

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
from lerobot.utils.constants import ACTION, OBS_ENV_STATE, OBS_STATE

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
# `agent_pos[GRIPPER]` is the gripper actuator command in [0, GRIPPER_MAX]; GRIPPER_MAX means closed.
GRIPPER_MAX = 255.0

# Gripper action values (a rate command, see the module docstring).
GRIPPER_OPEN = 0.0
GRIPPER_HOLD = 1.0
GRIPPER_CLOSE = 2.0
# End-effector displacement (m) of a unit xyz action (gym_hil's DEFAULT_EE_STEP_SIZE).
EE_STEP_SIZE = 0.025

DEFAULT_TASK_DESCRIPTION = "Pick up the cube and lift it."


@EnvConfig.register_subclass("pi_rl_pickcube")
@dataclass
class PickCubeStateEnvConfig(EnvConfig):
    """State-only gym_hil PandaPickCube (no cameras; ~6 ms CPU per step here). CLI: `--env.type=pi_rl_pickcube`."""

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
    features: dict[str, PolicyFeature] = field(
        default_factory=lambda: {
            ACTION: PolicyFeature(type=FeatureType.ACTION, shape=(ACTION_DIM,)),
            "agent_pos": PolicyFeature(type=FeatureType.STATE, shape=(AGENT_POS_DIM,)),
            "environment_state": PolicyFeature(type=FeatureType.ENV, shape=(CUBE_DIM,)),
        }
    )
    features_map: dict[str, str] = field(
        default_factory=lambda: {
            ACTION: ACTION,
            "agent_pos": OBS_STATE,
            "environment_state": OBS_ENV_STATE,
        }
    )

    def __post_init__(self) -> None:
        if self.task not in GYM_HIL_TASKS:
            raise ValueError(f"env.task={self.task!r} is not valid; allowed: {', '.join(GYM_HIL_TASKS)}")
        if self.reward_type not in REWARD_TYPES:
            raise ValueError(f"env.reward_type={self.reward_type!r} is not valid; allowed: {', '.join(REWARD_TYPES)}")
        if self.episode_length < 1:
            raise ValueError(f"env.episode_length={self.episode_length} must be >= 1")

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


class PickCubeStateEnv(gym.Wrapper):
    """gym_hil PandaPickCube with seeded cube placement, `is_success`, clipped actions, a task description."""

    def __init__(self, env: gym.Env, cfg: PickCubeStateEnvConfig, seed: int | None = None):
        super().__init__(env)
        self.cfg = cfg
        self.task_description = cfg.task_description
        self.task = cfg.task_description
        self._cube_rng = np.random.default_rng(seed)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None:
            self._cube_rng = np.random.default_rng(seed)
        obs, info = self.env.reset(seed=seed, options=options)
        if self.cfg.randomize_cube:
            obs = self._place_cube(obs)
        info = dict(info, is_success=False, succeed=False)
        return obs, info

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float32), self.action_space.low, self.action_space.high)
        obs, reward, terminated, truncated, info = self.env.step(action)
        info = dict(info, is_success=bool(info.get("succeed", False)))
        return obs, float(reward), bool(terminated), bool(truncated), info

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
    """Rename raw gym_hil observation keys to LeRobot keys (`cfg.features_map`); values stay numpy float32."""

    def __init__(self, env: gym.Env, features_map: dict[str, str]):
        super().__init__(env)
        self._rename = {k: v for k, v in features_map.items() if k in env.observation_space.spaces}
        self.observation_space = gym.spaces.Dict(
            {self._rename.get(k, k): space for k, space in env.observation_space.spaces.items()}
        )

    def observation(self, observation: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {self._rename.get(k, k): np.asarray(v, dtype=np.float32) for k, v in observation.items()}


def make_pickcube_env(
    cfg: PickCubeStateEnvConfig | None = None,
    seed: int | None = None,
    *,
    lerobot_keys: bool = True,
) -> gym.Env:
    """One state-only PickCube env. `seed` seeds the cube placement until `reset(seed=...)` re-seeds it.

    `lerobot_keys=True`: observations `{observation.state: (18,), observation.environment_state: (3,)}`;
    False: gym_hil's `{agent_pos, environment_state}`.
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
