"""Environment streams for the PI-RL actor: one object per env instance, stepped one action at a time.

A chunk ends early at a done, and envs of one actor finish chunks at different steps, so the actor steps envs
individually (never a lock-stepped vector env, whose autoreset would run the rest of an old chunk in a new
episode). Three sources:
  * `pi_rl_pickcube`: this package's PickCube (`make_pickcube_env`, LeRobot keys; a camera image arrives as float
    `(3, S, S)` in [0, 1], as LeRobot's `preprocess_observation` makes it);
  * any other LeRobot `EnvConfig` sim: `lerobot.envs.make_env(cfg, n_envs)`, which returns one SyncVectorEnv per
    `(suite, task_id)` (a multi-task suite such as `libero_spatial` or `push-v3,drawer-open-v3` gives several);
    the actor's `n_envs` are spread evenly over all of them and their sub-envs are stepped one by one,
    observations through `preprocess_observation` and the env's own processors, the language task string from
    each env (`task_description`);
  * `gym_manipulator` (gym_hil or a real robot with teleop): LeRobot's `make_robot_env` + `make_processors`,
    stepped with `step_env_and_process_transition`, which reports human interventions.
Observations come out as LeRobot-keyed tensor dicts (no batch dim required) plus a `task` string.

Time limits: every stream counts its steps and truncates the episode at its limit (the env's
`_max_episode_steps`, else the `EnvConfig`'s `episode_length`), so a time-out is reported as `truncated` (and
bootstrapped by the learner) even where the env itself never truncates (LeRobot's LIBERO and MetaWorld envs leave
that to `lerobot-eval`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lerobot.teleoperators.utils import TeleopEvents

from .metrics import task_label


@dataclass
class StepResult:
    observation: dict[str, Any]
    reward: float
    terminated: bool
    truncated: bool
    success: bool
    intervention: bool
    executed_action: Tensor
    info: dict = field(default_factory=dict)


def _success(info: dict) -> bool:
    return bool(info.get("is_success", info.get("succeed", info.get("success", False))))


def _to_tensors(obs: dict) -> dict[str, Any]:
    return {k: torch.as_tensor(np.asarray(v)) if not isinstance(v, (str, Tensor)) else v for k, v in obs.items()}


class GymStream:
    """One gymnasium env whose observations are already LeRobot-keyed (PickCube with `lerobot_keys=True`).

    `task` is the language instruction the policy reads; `task_name` the short label rollout statistics are
    grouped by (one per `(suite, task_id)` of a multi-task suite).
    """

    def __init__(self, env, task: str | None, seed: int, *, max_episode_steps: int | None = None,
                 task_name: str | None = None):
        self.env = env
        self.task = task or getattr(env, "task_description", None) or ""
        self.task_name = task_name or self.task
        self.seed = seed
        if max_episode_steps is not None and max_episode_steps < 1:
            raise ValueError(f"max_episode_steps={max_episode_steps} must be >= 1")
        self.max_episode_steps = max_episode_steps
        self._episode = 0
        self._steps = 0
        low, high = getattr(env.action_space, "low", None), getattr(env.action_space, "high", None)
        self._low = None if low is None else torch.as_tensor(low, dtype=torch.float32)
        self._high = None if high is None else torch.as_tensor(high, dtype=torch.float32)

    def observe(self, raw: dict) -> dict[str, Any]:
        return _to_tensors(raw)

    @property
    def episode_index(self) -> int:
        """Index of the current episode (0 for the first), i.e. of the last reset."""
        return self._episode - 1

    def reset(self) -> dict[str, Any]:
        # Episode e of a stream starts from reset seed `seed + 100_003 * e`: streams sharing a seed (a GRPO group)
        # start their e-th episodes from the same state.
        raw, _ = self.env.reset(seed=self.seed + 100_003 * self._episode)
        self._episode += 1
        self._steps = 0
        return self.observe(raw)

    def clip(self, action: Tensor) -> Tensor:
        if self._low is None:
            return action
        return torch.minimum(torch.maximum(action, self._low), self._high)

    def step(self, action: Tensor) -> StepResult:
        action = self.clip(action.float().cpu())
        raw, reward, terminated, truncated, info = self.env.step(action.numpy())
        self._steps += 1
        terminated = bool(terminated)
        # A time-out is a truncation, never a termination: the learner bootstraps it from V(final observation).
        out_of_time = self.max_episode_steps is not None and self._steps >= self.max_episode_steps
        truncated = (bool(truncated) or out_of_time) and not terminated
        return StepResult(self.observe(raw), float(reward), terminated, truncated, _success(info), False, action, info)

    def close(self) -> None:
        self.env.close()


class LeRobotSimStream(GymStream):
    """A sub-env of LeRobot's `make_env` vector env: raw sim observations -> LeRobot keys (+ env processors)."""

    def __init__(self, env, seed: int, env_preprocessor, env_postprocessor, fallback_task: str | None = None, *,
                 max_episode_steps: int | None = None, task_name: str | None = None):
        # The language task comes from the env (LeRobot sims expose `task_description`); `EnvConfig.task` is a
        # suite or gym id (`libero_10`, `PandaPickCube-v0`) and only a last resort.
        super().__init__(env, _task_of(env) or fallback_task, seed, max_episode_steps=max_episode_steps,
                         task_name=task_name)
        self.env_preprocessor = env_preprocessor
        self.env_postprocessor = env_postprocessor

    def observe(self, raw: dict) -> dict[str, Any]:
        from lerobot.envs.utils import preprocess_observation

        obs = preprocess_observation({k: np.asarray(v)[None] if not isinstance(v, dict) else v for k, v in raw.items()})
        return self.env_preprocessor(obs) if self.env_preprocessor is not None else obs

    def step(self, action: Tensor) -> StepResult:
        if self.env_postprocessor is not None:
            action = self.env_postprocessor({"action": action[None]})["action"][0]
        return super().step(action)


def _task_of(env) -> str:
    for obj in (env, getattr(env, "unwrapped", None)):
        for name in ("task_description", "task"):
            value = getattr(obj, name, None)
            if isinstance(value, str):
                return value
    return ""


class ManipulatorStream:
    """LeRobot's `gym_manipulator` env (gym_hil or a robot + teleop): interventions flag the chunk.

    A step is an intervention when the human took over on that step (gym_hil: its `InputsControlWrapper`; a robot:
    LeRobot's teleop processor steps); its `executed_action` is what the env executed, the human's action then.
    The policy's actions are clipped to the env's action space (gym_manipulator declares end-effector steps in
    [-1, 1] and a gripper value in [0, 2], for gym_hil and robots alike), as `GymStream` does. Episodes last
    `env.processor.reset.control_time_s * fps` steps when that is set (else gym_hil's own limit).
    """

    def __init__(self, env_cfg, input_keys, device: str):
        from lerobot.rl.gym_manipulator import make_processors, make_robot_env

        self.env, teleop = make_robot_env(cfg=env_cfg)
        self.env_processor, self.action_processor = make_processors(self.env, teleop, env_cfg, device)
        self.input_keys = set(input_keys)
        self.task = env_cfg.task or ""
        self.task_name = self.task
        self._transition = None
        space = getattr(self.env, "action_space", None)
        low, high = getattr(space, "low", None), getattr(space, "high", None)
        self._low = None if low is None else torch.as_tensor(low, dtype=torch.float32)
        self._high = None if high is None else torch.as_tensor(high, dtype=torch.float32)

    def _observation(self) -> dict[str, Any]:
        from lerobot.processor import TransitionKey

        obs = self._transition[TransitionKey.OBSERVATION]
        return {k: v for k, v in obs.items() if k in self.input_keys}

    def reset(self) -> dict[str, Any]:
        from lerobot.rl.gym_manipulator import reset_and_build_transition

        from lerobot.processor.hil_processor import TimeLimitProcessorStep

        self._transition = reset_and_build_transition(self.env, self.env_processor, self.action_processor)
        # LeRobot runs the reset observation through the env pipeline, whose time limit counts it as a step:
        # episodes would end one step before `control_time_s * fps`. Restart the count at the first real step.
        for step in getattr(self.env_processor, "steps", ()):
            if isinstance(step, TimeLimitProcessorStep):
                step.reset()
        return self._observation()

    def step(self, action: Tensor) -> StepResult:
        from lerobot.processor import TransitionKey
        from lerobot.rl.gym_manipulator import step_env_and_process_transition

        action = action.float().cpu().reshape(-1)
        if self._low is not None:
            action = torch.minimum(torch.maximum(action, self._low), self._high)
        # LeRobot's action pipeline takes the intervention flag from the transition it is given, i.e. the previous
        # step's: for gym_hil (whose wrapper takes over inside env.step) the human's last action would replace the
        # policy's on the first step after they let go, reported as the policy's. Each step's teleop events come
        # from that step's input (gym_hil: inside env.step; a robot: LeRobot's teleop processor steps).
        previous = self._transition
        stale = previous.get(TransitionKey.INFO) or {}
        info = {k: v for k, v in stale.items() if not isinstance(k, TeleopEvents)}
        self._transition = step_env_and_process_transition(
            env=self.env,
            transition={**previous, TransitionKey.INFO: info},
            action=action[None],
            env_processor=self.env_processor,
            action_processor=self.action_processor,
        )
        tr = self._transition
        info = tr[TransitionKey.INFO]
        executed = tr[TransitionKey.COMPLEMENTARY_DATA].get("teleop_action", action)
        return StepResult(
            self._observation(),
            float(tr[TransitionKey.REWARD]),
            bool(tr.get(TransitionKey.DONE, False)),
            bool(tr.get(TransitionKey.TRUNCATED, False)),
            _success(info),
            bool(info.get(TeleopEvents.IS_INTERVENTION, False)),
            torch.as_tensor(executed, dtype=torch.float32).reshape(-1).cpu(),
            info,
        )

    def close(self) -> None:
        self.env.close()


def assign_groups(streams: list, group_size: int) -> None:
    """Group consecutive streams `group_size` at a time for GRPO.

    The streams of a group share their first stream's reset seed, so their e-th episodes start from the same
    state. They must all run the same task, and they must be resettable to a chosen state (sims, not robots).
    """
    if group_size < 1 or len(streams) % group_size:
        raise ValueError(
            f"GRPO groups of {group_size} episodes run on {group_size} envs each: n_envs={len(streams)} is not a "
            f"multiple of algorithm.advantage.group_size={group_size}"
        )
    for start in range(0, len(streams), group_size):
        members = streams[start : start + group_size]
        if not all(isinstance(s, GymStream) for s in members):
            raise ValueError(
                f"GRPO needs envs that reset to a chosen initial state; {type(members[0]).__name__} cannot "
                "(use algorithm.advantage.type=gae on robots)"
            )
        tasks = sorted({s.task_name for s in members})
        if len(tasks) > 1:
            raise ValueError(
                f"a GRPO group of {group_size} envs would mix tasks {tasks}: make n_envs per task a multiple of "
                f"algorithm.advantage.group_size={group_size}"
            )
        for s in members:
            s.seed = members[0].seed


def make_env_streams(cfg, n_envs: int, seed: int) -> list:
    """`n_envs` streams for `cfg.env` (see module docstring)."""
    env_cfg = cfg.env
    if env_cfg.type == "pi_rl_pickcube":
        from ..envs.pickcube import make_pickcube_env

        return [
            GymStream(make_pickcube_env(env_cfg, seed=seed + i, lerobot_keys=True), env_cfg.task_description, seed + i)
            for i in range(n_envs)
        ]
    if env_cfg.type == "gym_manipulator":
        if n_envs != 1:
            raise ValueError(f"n_envs={n_envs}: env.type=gym_manipulator drives one robot, use 1")
        return [ManipulatorStream(env_cfg, cfg.policy.input_features, cfg.policy.device)]
    return make_lerobot_sim_streams(cfg, n_envs, seed)


def episode_limit(env, env_cfg) -> int | None:
    """Steps after which an episode of `env` is cut: the env's own `_max_episode_steps` (or its spec's), else the
    `EnvConfig`'s `episode_length`; None when neither exists."""
    for obj in (env, getattr(env, "unwrapped", None)):
        limit = getattr(obj, "_max_episode_steps", None)
        if isinstance(limit, int) and limit > 0:
            return limit
    spec = getattr(env, "spec", None)
    if spec is not None and getattr(spec, "max_episode_steps", None):
        return int(spec.max_episode_steps)
    limit = getattr(env_cfg, "episode_length", None)
    return int(limit) if limit else None


def _build_suites(env_cfg, per_task: int) -> list[tuple[str, int, Any]]:
    """`make_env` flattened to `[(suite, task_id, vec_env)]`, in LeRobot's order."""
    from lerobot.envs import make_env

    suites = make_env(env_cfg, n_envs=per_task, use_async_envs=False)
    return [(suite, task_id, vec) for suite, by_id in suites.items() for task_id, vec in by_id.items()]


def make_lerobot_sim_streams(cfg, n_envs: int, seed: int) -> list:
    """Streams over every `(suite, task_id)` of LeRobot's `make_env` (libero, metaworld, ... any `EnvConfig`),
    `n_envs` spread evenly over the tasks, each stream with its task's language instruction and time limit."""
    from lerobot.envs.factory import make_env_pre_post_processors

    env_cfg = cfg.env
    if n_envs < 1:
        raise ValueError(f"n_envs={n_envs} must be >= 1")
    # `make_env`'s n_envs is per task and the task count is only known once it has run: build one env per task
    # first (LeRobot sims create their simulators lazily, so this is cheap), then the rest if more are wanted.
    tasks = _build_suites(env_cfg, 1)
    per_task, rest = divmod(n_envs, len(tasks))
    if rest or per_task == 0:
        names = ", ".join(task_label(suite, task_id) for suite, task_id, _ in tasks[:12]) + (", ..." if len(tasks) > 12 else "")
        for *_, vec in tasks:
            vec.close()
        raise ValueError(
            f"n_envs={n_envs} cannot be spread evenly over the {len(tasks)} tasks of env.task={env_cfg.task!r} "
            f"({names}): use a multiple of {len(tasks)}"
        )
    if per_task > 1:
        for *_, vec in tasks:
            vec.close()
        tasks = _build_suites(env_cfg, per_task)
    env_pre, env_post = make_env_pre_post_processors(env_cfg, cfg.policy)
    streams = []
    for suite, task_id, vec in tasks:
        name = task_label(suite, task_id) if len(tasks) > 1 else None
        for sub in vec.envs:
            streams.append(
                LeRobotSimStream(
                    sub, seed + len(streams), env_pre, env_post, fallback_task=env_cfg.task,
                    max_episode_steps=episode_limit(sub, env_cfg), task_name=name,
                )
            )
    return streams
