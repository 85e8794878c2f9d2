"""A scripted stand-in for a human at the keyboard of gym_hil's simulated Panda, for tests and demos.

gym_hil's own intervention mechanism is `InputsControlWrapper`: every step it polls an input controller (keyboard
or gamepad, gym_hil's `InputController` interface), and while the controller says `should_intervene()` it
replaces the agent's action with the controller's, reporting `info["is_intervention"]` and the executed action as
`info["teleop_action"]`. LeRobot's `gym_manipulator` env turns those into its intervention flags
(`GymHILAdapterProcessorStep`). Keyboard and gamepad need a display or a device; this module supplies a
controller that needs neither, and keeps everything else gym_hil's:

  * `ScriptedTeleopController` implements gym_hil's `InputController` interface. It takes over on a schedule
    (`InterventionWindow`: steps [start, stop) of every `every`-th episode) and then drives the arm towards the
    cube and lifts it with `ScriptedPickController`, reading the simulator's state (the cube position is not in
    the agent's image observation);
  * `ScriptedInputsControlWrapper` is gym_hil's `InputsControlWrapper` given that controller instead of building
    a keyboard or gamepad one; `step()`, `reset()` and `close()` are gym_hil's;
  * the gym id `gym_hil/PandaPickCubeScriptedTeleop-v0` builds gym_hil's PandaPickCube with gym_hil's wrappers in
    gym_hil's order (gripper penalty, end-effector actions, input control, reset delay) around this controller,
    so LeRobot builds it as `--env.type=gym_manipulator --env.name=gym_hil
    --env.task=PandaPickCubeScriptedTeleop-v0`. Its reset delay is 0 s (no human needs the pause).

Change the schedule of a built env through its controller: `scripted_teleop_controller(env).window =
InterventionWindow(...)` (takes effect from the next step).

Importing this module registers the gym id without importing gym_hil or MuJoCo: the controller does not subclass
gym_hil's `InputController` (whose module imports MuJoCo) but implements every method of it, and the wrapper class
is created on first use (`from lerobot_policy_pi_rl.envs.teleop import ScriptedInputsControlWrapper` works).
"""

from __future__ import annotations

import functools
from collections import deque
from dataclasses import dataclass
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np

from .pickcube import GRIPPER_CLOSE, GRIPPER_HOLD, GRIPPER_OPEN
from .scripted import ScriptedPickController

SCRIPTED_TELEOP_TASK = "PandaPickCubeScriptedTeleop-v0"
SCRIPTED_TELEOP_ENV_ID = f"gym_hil/{SCRIPTED_TELEOP_TASK}"

# gym_hil's `InputsControlWrapper` turns the controller's gripper words into gripper action values: "open" -> 2.0,
# "close" -> 0.0, anything else -> 1.0. Its env applies (value - 1) as a change of the gripper command (255 =
# closed), so the word "open" closes the fingers. The scripted controller thinks in values; these are the words
# that make gym_hil produce them.
_GRIPPER_WORD = {GRIPPER_CLOSE: "open", GRIPPER_OPEN: "close", GRIPPER_HOLD: "no-op"}


@dataclass(frozen=True)
class InterventionWindow:
    """Take over on env steps [start, stop) (counted from 0 after each reset) of episodes 0, every, 2*every, ...

    `start == stop` never takes over.
    """

    start: int = 10
    stop: int = 30
    every: int = 2

    def __post_init__(self) -> None:
        if self.start < 0:
            raise ValueError(f"InterventionWindow.start={self.start} must be >= 0")
        if self.stop < self.start:
            raise ValueError(f"InterventionWindow.stop={self.stop} must be >= start={self.start}")
        if self.every < 1:
            raise ValueError(f"InterventionWindow.every={self.every} must be >= 1")

    def __call__(self, episode: int, step: int) -> bool:
        return episode % self.every == 0 and self.start <= step < self.stop


class Takeover(NamedTuple):
    """One env step the controller took over: episode and step index (from 0), and the action it sent."""

    episode: int
    step: int
    action: np.ndarray


class ScriptedTeleopController:
    """gym_hil `InputController` that intervenes on a schedule with `ScriptedPickController`'s moves.

    `sim` is the unwrapped gym_hil Panda env (`get_robot_state()`: the 18-d `agent_pos` layout; the `block_pos`
    sensor: cube xyz). `update()` is called once before every env step (gym_hil's `InputsControlWrapper` does);
    `reset()` once per episode. `history` keeps the last `history_size` steps it took over.
    """

    def __init__(self, sim: Any, window: InterventionWindow | None = None, *, history_size: int = 10_000):
        self.sim = sim
        self.window = window if window is not None else InterventionWindow()
        self.pick = ScriptedPickController()
        self.history: deque[Takeover] = deque(maxlen=history_size)
        self.episode = -1  # no episode before the first reset
        self.step = -1
        self._action: np.ndarray | None = None

    # gym_hil's InputController interface ---------------------------------------------------------------------

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def reset(self) -> None:
        self.episode += 1
        self.step = -1
        self._action = None
        self.pick.reset()

    def update(self) -> None:
        """Decide for the coming env step: take over (and with which action) or leave the agent's action."""
        self.step += 1
        self._action = None
        if self.window(self.episode, self.step):
            state = np.asarray(self.sim.get_robot_state(), dtype=np.float64)
            cube = np.asarray(self.sim.data.sensor("block_pos").data, dtype=np.float64)
            self._action = self.pick.clean_action(state, cube)
            self.history.append(Takeover(self.episode, self.step, self._action.copy()))

    def should_intervene(self) -> bool:
        return self._action is not None

    def get_deltas(self) -> tuple[float, float, float]:
        # gym_hil's wrapper puts the deltas straight into the action (step sizes 1.0): units of the env's
        # end-effector step, in [-1, 1], as `ScriptedPickController` produces them.
        if self._action is None:
            return 0.0, 0.0, 0.0
        return float(self._action[0]), float(self._action[1]), float(self._action[2])

    def gripper_command(self) -> str:
        if self._action is None:
            return "no-op"
        return _GRIPPER_WORD[float(self._action[3])]

    def get_episode_end_status(self) -> str | None:
        return None  # the scripted human never ends an episode: the env's success and time limit do

    # --------------------------------------------------------------------------------------------------------

    @property
    def action(self) -> np.ndarray | None:
        """The action of the current step when taking over (what gym_hil's wrapper executes), else None."""
        return None if self._action is None else self._action.copy()


@functools.cache
def _wrapper_class() -> type:
    from gym_hil.wrappers.hil_wrappers import InputsControlWrapper

    class ScriptedInputsControlWrapper(InputsControlWrapper):
        """gym_hil's `InputsControlWrapper` driven by a given controller (e.g. `ScriptedTeleopController`)."""

        def __init__(self, env: gym.Env, controller: Any, *, use_gripper: bool = True, auto_reset: bool = False,
                     input_threshold: float = 0.001):
            # gym_hil's __init__ builds and starts a keyboard or gamepad controller: set the same attributes
            # around the given one instead.
            gym.Wrapper.__init__(self, env)
            self.controller = controller
            self.auto_reset = auto_reset
            self.use_gripper = use_gripper
            self.input_threshold = input_threshold
            self.controller.start()

    ScriptedInputsControlWrapper.__module__ = __name__
    ScriptedInputsControlWrapper.__qualname__ = "ScriptedInputsControlWrapper"
    return ScriptedInputsControlWrapper


def __getattr__(name: str) -> Any:
    if name == "ScriptedInputsControlWrapper":
        return _wrapper_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_scripted_teleop_env(
    *,
    use_gripper: bool = True,
    gripper_penalty: float = -0.05,
    ee_step_size: dict[str, float] | None = None,
    reset_delay_seconds: float = 0.0,
    window: InterventionWindow | None = None,
    **env_kwargs: Any,
) -> gym.Env:
    """gym_hil's PandaPickCube wrapped as gym_hil's `wrap_env` does, with the scripted controller as the human.

    `env_kwargs` go to gym_hil's `PandaPickCubeGymEnv` (`image_obs`, `render_mode`, `seed`, ...). The gripper
    penalty default is that of gym_hil's `PandaPickCubeKeyboard-v0`.
    """
    from gym_hil.envs.panda_pick_gym_env import PandaPickCubeGymEnv
    from gym_hil.wrappers.hil_wrappers import (
        DEFAULT_EE_STEP_SIZE,
        EEActionWrapper,
        GripperPenaltyWrapper,
        ResetDelayWrapper,
    )

    sim = PandaPickCubeGymEnv(**env_kwargs)
    env: gym.Env = sim
    if use_gripper:
        env = GripperPenaltyWrapper(env, penalty=gripper_penalty)
    env = EEActionWrapper(env, ee_action_step_size=ee_step_size or DEFAULT_EE_STEP_SIZE, use_gripper=True)
    env = _wrapper_class()(env, ScriptedTeleopController(sim, window), use_gripper=use_gripper)
    return ResetDelayWrapper(env, delay_seconds=reset_delay_seconds)


def scripted_teleop_controller(env: gym.Env) -> ScriptedTeleopController:
    """The `ScriptedTeleopController` inside a (wrapped) env built from `SCRIPTED_TELEOP_ENV_ID`."""
    current = env
    while current is not None:
        controller = vars(current).get("controller")
        if isinstance(controller, ScriptedTeleopController):
            return controller
        current = getattr(current, "env", None)
    raise ValueError(f"{env} has no ScriptedTeleopController (was it built from {SCRIPTED_TELEOP_ENV_ID!r}?)")


if SCRIPTED_TELEOP_ENV_ID not in gym.registry:
    # gym_hil's own task ids carry a 100-step limit; so does this one.
    gym.register(
        id=SCRIPTED_TELEOP_ENV_ID,
        entry_point=f"{__name__}:make_scripted_teleop_env",
        max_episode_steps=100,
    )
