"""MetaWorld v3 from state as a LeRobot `EnvConfig` (`--env.type=pi_rl_metaworld --env.task=push-v3`).

LeRobot's own `metaworld` env type is pixels-only (480 x 480 frames and a 4-d `agent_pos`); this one gives a
state-only policy MetaWorld's full observation and keeps LeRobot's task instructions and scripted experts
(`lerobot.envs.metaworld.TASK_DESCRIPTIONS`, `TASK_POLICY_MAPPING`).

Observation `agent_pos` (39, float32; MetaWorld's float64 cast), mapped to `observation.state`:
  * [0:3] end-effector xyz, [3] gripper opening in [0, 1] (finger distance / 0.1 m, clipped);
  * [4:18] up to two objects, each xyz then quaternion (w, x, y, z), zero-padded (`OBJECT_SLOTS`);
  * [18:36] the same 18 values one step earlier (MetaWorld's frame stacking);
  * [36:39] the goal xyz (observable: MetaWorld's multi-task setting, `partially_observable=False`).
  With `task_one_hot=true`, a one-hot of the task over `METAWORLD_V3_TASKS` follows (39 + 50 = 89 values), so a
  state-only policy can tell tasks apart in a multi-task run.
Action (4, [-1, 1]): end-effector xyz displacement (1 = 1 cm) and a gripper effort (-1 open, 1 close); actions
are clipped to [-1, 1].

Episodes: `reset(seed=s)` reseeds MetaWorld's generator, which draws the object and goal positions (the same
seed gives the same scene; `reset()` without a seed continues the generator). An episode ends with
`terminated=True` at the first step whose `info["success"]` is set (the task's own success flag, mirrored as
LeRobot's `info["is_success"]`) and with `truncated=True` after `episode_length` steps (at most MetaWorld's own
limit of 500). The env never resets itself: vector envs (`create_envs`) autoreset on the same step, as
PickCube's do. Rewards: `sparse` gives 1.0 on the success step and 0 otherwise; `dense` is MetaWorld's shaped
reward (0 to 10) divided by 10.

One simulator instance per env, built on the first reset (import and creation are cheap, and an async vector
env builds it in its worker process). Importing this module imports neither MetaWorld nor MuJoCo.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from lerobot.configs import FeatureType, PolicyFeature
from lerobot.envs.configs import EnvConfig
from lerobot.utils.constants import ACTION, OBS_STATE

# MetaWorld's 50 v3 tasks in MT50 order (`metaworld.ALL_V3_ENVIRONMENTS`). The one-hot appended with
# `task_one_hot=true` indexes this tuple, so the order is part of every such policy's input and never changes.
METAWORLD_V3_TASKS: tuple[str, ...] = (
    "assembly-v3", "basketball-v3", "bin-picking-v3", "box-close-v3", "button-press-topdown-v3",
    "button-press-topdown-wall-v3", "button-press-v3", "button-press-wall-v3", "coffee-button-v3",
    "coffee-pull-v3", "coffee-push-v3", "dial-turn-v3", "disassemble-v3", "door-close-v3", "door-lock-v3",
    "door-open-v3", "door-unlock-v3", "hand-insert-v3", "drawer-close-v3", "drawer-open-v3", "faucet-open-v3",
    "faucet-close-v3", "hammer-v3", "handle-press-side-v3", "handle-press-v3", "handle-pull-side-v3",
    "handle-pull-v3", "lever-pull-v3", "pick-place-wall-v3", "pick-out-of-hole-v3", "pick-place-v3",
    "plate-slide-v3", "plate-slide-side-v3", "plate-slide-back-v3", "plate-slide-back-side-v3",
    "peg-insert-side-v3", "peg-unplug-side-v3", "soccer-v3", "stick-push-v3", "stick-pull-v3", "push-v3",
    "push-wall-v3", "push-back-v3", "reach-v3", "reach-wall-v3", "shelf-place-v3", "sweep-into-v3", "sweep-v3",
    "window-open-v3", "window-close-v3",
)
# MetaWorld's MT10 task set (`metaworld.MT10().train_classes`), in its order.
MT10_TASKS: tuple[str, ...] = (
    "reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "drawer-close-v3",
    "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3",
)
# Names `env.task` accepts in place of a task list.
TASK_SETS: dict[str, tuple[str, ...]] = {"mt10": MT10_TASKS}

STATE_DIM = 39
ACTION_DIM = 4
NUM_TASKS = len(METAWORLD_V3_TASKS)
# MetaWorld's episode limit (`SawyerXYZEnv.max_path_length`): stepping further raises inside MetaWorld.
MAX_EPISODE_LENGTH = 500
# MetaWorld's control rate: 5 physics substeps of 2.5 ms per action.
FPS = 80
REWARD_TYPES = ("sparse", "dense")
# MetaWorld's shaped rewards lie in [0, 10]; `dense` divides them by this.
DENSE_REWARD_SCALE = 10.0
# The MT1 benchmark seed of LeRobot's MetaWorld env: it fixes the task data `set_task` installs (object and goal
# positions are drawn per reset from the env's own generator instead).
BENCHMARK_SEED = 42
# `render()`: MetaWorld's `corner2` camera, flipped upright, at this square size (videos only; never observed).
RENDER_CAMERA = "corner2"
RENDER_SIZE = 256

SUCCESS_DEFINITION = (
    "an episode is a success if MetaWorld's task success flag (info['success'], mirrored as info['is_success']) "
    "is true at any step of the episode; the episode ends there"
)

# Names of the 39 state values (dataset metadata), in the layout of the module docstring.
OBJECT_SLOTS = ("obj1", "obj2")
_FRAME_NAMES = ["hand_x", "hand_y", "hand_z", "gripper_opening"] + [
    f"{obj}_{part}" for obj in OBJECT_SLOTS for part in ("x", "y", "z", "qw", "qx", "qy", "qz")
]
STATE_NAMES: list[str] = _FRAME_NAMES + [f"prev_{name}" for name in _FRAME_NAMES] + ["goal_x", "goal_y", "goal_z"]
ONE_HOT_NAMES: list[str] = [f"task_{name}" for name in METAWORLD_V3_TASKS]
ACTION_NAMES: list[str] = ["delta_x", "delta_y", "delta_z", "gripper_effort"]


def parse_tasks(spec: str | None) -> tuple[str, ...]:
    """`env.task` -> task names: one v3 task, a comma-separated list, or a task set name (`mt10`)."""
    if spec is None or not spec.strip():
        raise ValueError(f"env.task={spec!r} names no MetaWorld task; give a v3 task name such as push-v3, a "
                         f"comma-separated list, or one of {', '.join(TASK_SETS)}")
    if spec.strip().lower() in TASK_SETS:
        return TASK_SETS[spec.strip().lower()]
    tasks = tuple(t.strip() for t in spec.split(","))
    if any(not t for t in tasks):
        raise ValueError(f"env.task={spec!r} has an empty entry in its comma-separated list")
    unknown = [t for t in tasks if t not in METAWORLD_V3_TASKS]
    if unknown:
        raise ValueError(
            f"env.task={spec!r}: unknown MetaWorld task(s) {', '.join(unknown)}; valid: "
            f"{', '.join(sorted(METAWORLD_V3_TASKS))} (or a task set: {', '.join(TASK_SETS)})"
        )
    duplicates = sorted({t for t in tasks if tasks.count(t) > 1})
    if duplicates:
        raise ValueError(f"env.task={spec!r} lists {', '.join(duplicates)} more than once")
    return tasks


def task_one_hot(task: str) -> np.ndarray:
    """The (50,) float32 one-hot of `task` over `METAWORLD_V3_TASKS`."""
    one_hot = np.zeros(NUM_TASKS, dtype=np.float32)
    one_hot[METAWORLD_V3_TASKS.index(task)] = 1.0
    return one_hot


@EnvConfig.register_subclass("pi_rl_metaworld")
@dataclass
class MetaWorldStateEnvConfig(EnvConfig):
    """MetaWorld v3 from its 39-d state (~1 ms CPU per step). CLI: `--env.type=pi_rl_metaworld`.

    `features` / `features_map` follow from `task_one_hot`; `__post_init__` sets them.
    """

    # A MetaWorld v3 task (`push-v3`), a comma-separated list (`push-v3,drawer-open-v3`: one vector env per
    # task), or `mt10` (MetaWorld's MT10 set).
    task: str | None = "push-v3"
    # MetaWorld's control rate (the fps of recorded datasets).
    fps: int = FPS
    # Episode step limit, a truncation (1 to 500: MetaWorld's own limit).
    episode_length: int = MAX_EPISODE_LENGTH
    # `sparse`: 1.0 on the step the task succeeds, else 0. `dense`: MetaWorld's shaped reward / 10. Success ends
    # the episode (terminated) in both.
    reward_type: str = "sparse"
    # Append a one-hot of the task over MetaWorld's 50 v3 tasks (MT50 order) to the state: 39 -> 89 values.
    task_one_hot: bool = False
    features: dict[str, PolicyFeature] = field(default_factory=dict)
    features_map: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        parse_tasks(self.task)
        if self.reward_type not in REWARD_TYPES:
            raise ValueError(f"env.reward_type={self.reward_type!r} is not valid; allowed: {', '.join(REWARD_TYPES)}")
        if isinstance(self.episode_length, bool) or not isinstance(self.episode_length, int) or not (
            1 <= self.episode_length <= MAX_EPISODE_LENGTH
        ):
            raise ValueError(f"env.episode_length={self.episode_length!r} must be an integer in "
                             f"[1, {MAX_EPISODE_LENGTH}] (MetaWorld's own limit)")
        if self.fps < 1:
            raise ValueError(f"env.fps={self.fps} must be >= 1")
        self.features = {
            ACTION: PolicyFeature(type=FeatureType.ACTION, shape=(ACTION_DIM,)),
            "agent_pos": PolicyFeature(type=FeatureType.STATE, shape=(self.state_dim,)),
        }
        self.features_map = {ACTION: ACTION, "agent_pos": OBS_STATE}

    @property
    def tasks(self) -> tuple[str, ...]:
        return parse_tasks(self.task)

    @property
    def state_dim(self) -> int:
        return STATE_DIM + (NUM_TASKS if self.task_one_hot else 0)

    @property
    def state_names(self) -> list[str]:
        return STATE_NAMES + (ONE_HOT_NAMES if self.task_one_hot else [])

    @property
    def gym_kwargs(self) -> dict:
        """Keyword arguments of the MetaWorld env class (checked against metaworld 3.0.0): a renderer for
        `render()` only; it draws nothing until asked."""
        return {"render_mode": "rgb_array", "camera_name": RENDER_CAMERA, "width": RENDER_SIZE, "height": RENDER_SIZE}

    def create_envs(self, n_envs: int, use_async_envs: bool = False) -> dict[str, dict[int, gym.vector.VectorEnv]]:
        """`lerobot.envs.make_env` hook: `{task: {0: vector env of n_envs envs}}`, one entry per task, raw
        observation keys (`agent_pos`) as `lerobot-eval` expects. `use_async_envs` runs each task's envs in
        `forkserver` worker processes."""
        if n_envs < 1:
            raise ValueError(f"n_envs={n_envs} must be >= 1")
        return {task: {0: make_metaworld_vec_env(self, task, n_envs, use_async=use_async_envs)} for task in self.tasks}


@functools.lru_cache(maxsize=None)
def _benchmark_task(name: str):
    """`(env class, task)` of MetaWorld's MT1 benchmark for `name`, once per process (building MT1 takes ~1 s)."""
    import metaworld

    mt1 = metaworld.MT1(name, seed=BENCHMARK_SEED)
    return mt1.train_classes[name], mt1.train_tasks[0]


@functools.lru_cache(maxsize=None)
def _expert_class(name: str):
    from lerobot.envs.metaworld import TASK_POLICY_MAPPING

    return TASK_POLICY_MAPPING[name]


def task_description(name: str) -> str:
    """LeRobot's language instruction of a MetaWorld task (`lerobot.envs.metaworld.TASK_DESCRIPTIONS`)."""
    from lerobot.envs.metaworld import TASK_DESCRIPTIONS

    return TASK_DESCRIPTIONS[name]


class MetaWorldStateEnv(gym.Env):
    """One MetaWorld v3 task from state, with seeded resets, success termination and a truncating time limit
    (module docstring). Observations `{"agent_pos": (39,) or (89,) float32}`."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": FPS}

    def __init__(self, cfg: MetaWorldStateEnvConfig, task: str):
        super().__init__()
        if task not in METAWORLD_V3_TASKS:
            raise ValueError(f"an env runs one MetaWorld v3 task, not {task!r}; valid: "
                             f"{', '.join(sorted(METAWORLD_V3_TASKS))}")
        self.cfg = cfg
        self.task = task
        self.task_description = task_description(task)
        self._max_episode_steps = cfg.episode_length
        self.render_mode = "rgb_array"
        self._one_hot = task_one_hot(task) if cfg.task_one_hot else None
        self.observation_space = gym.spaces.Dict(
            {"agent_pos": gym.spaces.Box(-np.inf, np.inf, (cfg.state_dim,), dtype=np.float32)}
        )
        self.action_space = gym.spaces.Box(-1.0, 1.0, (ACTION_DIM,), dtype=np.float32)
        self._env = None
        self._expert = None
        self._raw_obs: np.ndarray | None = None
        self._steps = 0
        self._episode_over = True

    def _ensure_env(self):
        if self._env is None:
            env_cls, benchmark_task = _benchmark_task(self.task)
            env = env_cls(**self.cfg.gym_kwargs)
            env.set_task(benchmark_task)
            # After `set_task` MetaWorld replays the task's fixed positions; these two make every reset draw
            # them from the env's generator instead, which `seed()` reseeds.
            env._freeze_rand_vec = False
            env.seeded_rand_vec = True
            self._env = env
        return self._env

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        env = self._ensure_env()
        if seed is not None:
            env.seed(seed)
        self._raw_obs, _ = env.reset()
        self._steps = 0
        self._episode_over = False
        return self._observation(), {"is_success": False}

    def step(self, action):
        if self._episode_over:
            raise RuntimeError(f"{self.task}: step() after the episode ended (or before the first reset); call reset()")
        action = np.asarray(action, dtype=np.float32)
        if action.shape != (ACTION_DIM,):
            raise ValueError(f"action of shape {action.shape}; MetaWorld takes ({ACTION_DIM},)")
        action = np.clip(action, -1.0, 1.0)
        self._raw_obs, reward, _, mw_truncated, info = self._env.step(action)
        self._steps += 1
        success = bool(info.get("success", False))
        terminated = success
        truncated = not terminated and (bool(mw_truncated) or self._steps >= self.cfg.episode_length)
        self._episode_over = terminated or truncated
        if self.cfg.reward_type == "sparse":
            # Success ends the episode, so its step is the only one on which the flag turns on.
            reward = 1.0 if success else 0.0
        else:
            reward = float(reward) / DENSE_REWARD_SCALE
        info = dict(info, is_success=success)
        return self._observation(), reward, terminated, truncated, info

    def _observation(self) -> dict[str, np.ndarray]:
        state = self._raw_obs.astype(np.float32)
        if self._one_hot is not None:
            state = np.concatenate([state, self._one_hot])
        return {"agent_pos": state}

    @property
    def raw_observation(self) -> np.ndarray:
        """MetaWorld's current (39,) float64 observation (what its scripted experts read)."""
        if self._raw_obs is None:
            raise RuntimeError(f"{self.task}: no observation before the first reset()")
        return self._raw_obs

    def expert_action(self, observation: np.ndarray | None = None) -> np.ndarray:
        """MetaWorld's scripted expert (`TASK_POLICY_MAPPING`) on `observation` (its first 39 values; default the
        current raw observation), clipped to the action space as `step` would: (4,) float32."""
        if self._expert is None:
            self._expert = _expert_class(self.task)()
        obs = self.raw_observation if observation is None else np.asarray(observation, dtype=np.float64)[:STATE_DIM]
        with warnings.catch_warnings():
            # The experts' proportional gains saturate on purpose; MetaWorld warns about it on every call.
            warnings.filterwarnings("ignore", message=".*Constant\\(s\\) may be too high.*")
            action = self._expert.get_action(obs)
        return np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)

    def render(self) -> np.ndarray:
        """The `corner2` camera, `(RENDER_SIZE, RENDER_SIZE, 3)` uint8, upright (MetaWorld renders it flipped)."""
        image = self._ensure_env().render()
        return np.ascontiguousarray(np.flip(image, (0, 1)))

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None


def make_metaworld_env(
    cfg: MetaWorldStateEnvConfig | None = None, task: str | None = None, *, lerobot_keys: bool = True
) -> gym.Env:
    """One env of `task` (default: `cfg`'s only task). `lerobot_keys=True`: observations
    `{observation.state: (39,) or (89,) float32}` (this package's loops); False: `{agent_pos: ...}` (LeRobot's
    raw keys). `env.unwrapped` is the `MetaWorldStateEnv` (its `task_description`, `expert_action`)."""
    cfg = cfg or MetaWorldStateEnvConfig()
    if task is None:
        tasks = cfg.tasks
        if len(tasks) != 1:
            raise ValueError(f"env.task={cfg.task!r} names {len(tasks)} tasks; pass the one to build")
        task = tasks[0]
    env: gym.Env = MetaWorldStateEnv(cfg, task)
    if lerobot_keys:
        from .pickcube import LeRobotKeysWrapper

        env = LeRobotKeysWrapper(env, cfg.features_map)
    return env


def make_metaworld_vec_env(
    cfg: MetaWorldStateEnvConfig, task: str, n_envs: int, *, use_async: bool = False
) -> gym.vector.VectorEnv:
    """`n_envs` envs of `task` (raw keys) with same-step autoreset, as LeRobot's `make_env` vector envs."""
    if n_envs < 1:
        raise ValueError(f"n_envs={n_envs} must be >= 1")
    env_fns = [functools.partial(make_metaworld_env, cfg, task, lerobot_keys=False) for _ in range(n_envs)]
    if use_async and n_envs > 1:
        return gym.vector.AsyncVectorEnv(
            env_fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP, context="forkserver"
        )
    return gym.vector.SyncVectorEnv(env_fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
