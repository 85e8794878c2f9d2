"""A scripted pick controller for the state-only PickCube env, with knobs to make it imperfect.

Phases, chosen from the observation each step (so a perturbed arm is re-planned, not replayed):
  approach: move the TCP above the cube (xy first, at hover height);
  descend:  lower the open gripper around the cube;
  close:    close the gripper and wait for the fingers (`close_wait_steps`);
  lift:     raise the cube; if the cube does not follow (missed grasp), open and start over.
Actions are proportional moves, `clip(error / EE_STEP_SIZE, -1, 1)`: one unit of action is 2.5 cm.

Imperfection: Gaussian noise of std `action_noise` is added to all four action dims (then clipped), and with
probability `epsilon` a uniformly random action replaces the scripted one. Both use the controller's own
generator (`seed`), so a (controller seed, env seed) pair replays exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from lerobot.utils.constants import OBS_STATE

from .pickcube import (
    EE_STEP_SIZE, GRIPPER, GRIPPER_CLOSE, GRIPPER_HOLD, GRIPPER_MAX, GRIPPER_OPEN, TCP_POS, cube_position,
)

ACTION_LOW = np.array([-1.0, -1.0, -1.0, 0.0], dtype=np.float32)
ACTION_HIGH = np.array([1.0, 1.0, 1.0, 2.0], dtype=np.float32)


class ScriptedPickController:
    def __init__(
        self,
        *,
        action_noise: float = 0.0,
        epsilon: float = 0.0,
        seed: int | Sequence[int] | None = None,
        hover_height: float = 0.05,
        grasp_height: float = 0.0,
        xy_tolerance: float = 0.01,
        z_tolerance: float = 0.01,
        close_wait_steps: int = 1,
    ):
        if action_noise < 0:
            raise ValueError(f"action_noise={action_noise} must be >= 0")
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon={epsilon} must be in [0, 1]")
        self.action_noise = action_noise
        self.epsilon = epsilon
        self.hover_height = hover_height
        self.grasp_height = grasp_height
        self.xy_tolerance = xy_tolerance
        self.z_tolerance = z_tolerance
        self.close_wait_steps = close_wait_steps
        self._rng = np.random.default_rng(seed)
        self.reset()

    def reset(self, seed: int | Sequence[int] | None = None) -> None:
        """Start a new episode (optionally re-seeding the noise generator; any `np.random.default_rng` seed)."""
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self._closed_for = 0
        self.phase = "approach"

    def clean_action(self, state: np.ndarray, cube: np.ndarray) -> np.ndarray:
        """The noise-free scripted action for `observation.state` (18,) and cube xyz (3,)."""
        tcp = np.asarray(state[TCP_POS], dtype=np.float64)
        cube = np.asarray(cube, dtype=np.float64)
        closed = state[GRIPPER] / GRIPPER_MAX > 0.5
        xy_err = cube[:2] - tcp[:2]
        grasp_z = cube[2] + self.grasp_height

        if closed:
            self._closed_for += 1
            cube_in_hand = np.linalg.norm(cube - tcp) < 0.03
            if self._closed_for <= self.close_wait_steps:
                self.phase, target, grip = "close", tcp, GRIPPER_HOLD
            elif cube_in_hand:
                self.phase, target, grip = "lift", tcp + np.array([0.0, 0.0, 1.0]), GRIPPER_HOLD
            else:
                # Missed or dropped: open and re-plan from the approach.
                self.phase, target, grip = "approach", tcp, GRIPPER_OPEN
        else:
            self._closed_for = 0
            if np.linalg.norm(xy_err) > self.xy_tolerance:
                self.phase = "approach"
                hover_z = max(cube[2] + self.hover_height, tcp[2]) if np.linalg.norm(xy_err) > 0.03 else tcp[2]
                target, grip = np.array([cube[0], cube[1], hover_z]), GRIPPER_OPEN
            elif tcp[2] - grasp_z > self.z_tolerance:
                self.phase, target, grip = "descend", np.array([cube[0], cube[1], grasp_z]), GRIPPER_OPEN
            else:
                self.phase, target, grip = "close", tcp, GRIPPER_CLOSE
        move = np.clip((target - tcp) / EE_STEP_SIZE, -1.0, 1.0)
        return np.concatenate([move, [grip]]).astype(np.float32)

    def __call__(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        """Action (4,) for an unbatched LeRobot-keyed observation, with the configured imperfection."""
        action = self.clean_action(observation[OBS_STATE], cube_position(observation))
        if self.epsilon > 0 and self._rng.random() < self.epsilon:
            action = self._rng.uniform(ACTION_LOW, ACTION_HIGH).astype(np.float32)
        elif self.action_noise > 0:
            action = action + self._rng.normal(0.0, self.action_noise, size=action.shape).astype(np.float32)
        return np.clip(action, ACTION_LOW, ACTION_HIGH)


def run_scripted_episode(
    env: gym.Env,
    controller: ScriptedPickController,
    *,
    seed: int,
    on_step: Any = None,
) -> dict[str, Any]:
    """Roll out one episode of `controller` on a LeRobot-keyed PickCube env reset with `seed`.

    `on_step(observation, action, reward, terminated, truncated, info)` is called for every step with the
    observation the action was taken from. Returns `{success, steps, return}`; success = the task success flag
    was reached at any step. The controller's noise is re-seeded from `(seed, 1)`: replayable from `seed`
    alone and independent of the env's cube draw.
    """
    controller.reset(seed=(seed, 1))
    observation, _ = env.reset(seed=seed)
    success, total, steps = False, 0.0, 0
    while True:
        action = controller(observation)
        next_observation, reward, terminated, truncated, info = env.step(action)
        if on_step is not None:
            on_step(observation, action, reward, terminated, truncated, info)
        success = success or bool(info.get("is_success", False))
        total += float(reward)
        steps += 1
        observation = next_observation
        if terminated or truncated:
            break
    return {"success": success, "steps": steps, "return": total}
