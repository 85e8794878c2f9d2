"""Simulation environments of this package. Importing registers the `pi_rl_pickcube` and `pi_rl_metaworld` LeRobot
env types (neither import loads a simulator)."""

from .metaworld import MetaWorldStateEnv, MetaWorldStateEnvConfig, make_metaworld_env
from .pickcube import (
    PickCubeStateEnvConfig,
    make_pickcube_env,
    make_pickcube_vec_env,
)
from .scripted import ScriptedPickController, run_scripted_episode
from . import teleop  # noqa: F401  (registers gym id gym_hil/PandaPickCubeScriptedTeleop-v0; no MuJoCo import)

__all__ = [
    "MetaWorldStateEnv",
    "MetaWorldStateEnvConfig",
    "PickCubeStateEnvConfig",
    "ScriptedPickController",
    "make_metaworld_env",
    "make_pickcube_env",
    "make_pickcube_vec_env",
    "run_scripted_episode",
]
