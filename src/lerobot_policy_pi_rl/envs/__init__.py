"""Simulation environments of this package. Importing registers the `pi_rl_pickcube` LeRobot env type."""

from .pickcube import (
    PickCubeStateEnvConfig,
    make_pickcube_env,
    make_pickcube_vec_env,
)
from .scripted import ScriptedPickController, run_scripted_episode
from . import teleop  # noqa: F401  (registers gym id gym_hil/PandaPickCubeScriptedTeleop-v0; no MuJoCo import)

__all__ = [
    "PickCubeStateEnvConfig",
    "ScriptedPickController",
    "make_pickcube_env",
    "make_pickcube_vec_env",
    "run_scripted_episode",
]
