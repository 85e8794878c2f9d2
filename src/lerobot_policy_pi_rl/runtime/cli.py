"""Shared entry-point prologue: register this plugin's types BEFORE parsing, parse and validate, then run the
configured algorithm's loop for this process's role."""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable

from .config import PiRLTrainRLServerPipelineConfig
from .console import console_level

# Where the loops of every algorithm other than `pi_rl` live: `<package>.<algorithm type>.{learner,actor}`, each
# with `run(cfg) -> int`. The baselines build on this runtime, so the runtime names them instead of importing
# them (as LeRobot finds a policy's `modeling_<type>` module from its type).
BASELINES_PACKAGE = "lerobot_policy_pi_rl.baselines"
ROLES = ("learner", "actor")

Runner = Callable[[PiRLTrainRLServerPipelineConfig], int]


def register_plugin() -> None:
    """Import everything that registers a draccus choice: policy `pi_rl`, algorithm `pi_rl`, env `pi_rl_pickcube`.

    LeRobot's `lerobot.rl.*` entry points do not call `register_third_party_plugins()`, so ours do it by import.
    """
    import lerobot_policy_pi_rl  # noqa: F401  (policy pi_rl, algorithm pi_rl, env pi_rl_pickcube)

    # Robot and teleoperator types (so101_follower, ...) register when LeRobot's gym_manipulator is imported.
    importlib.import_module("lerobot.rl.gym_manipulator")


def load_config(argv: list[str] | None = None) -> PiRLTrainRLServerPipelineConfig:
    """Parse and validate; a bad value (also of `PI_RL_LOG_LEVEL`) exits with status 2 and one line naming it."""
    from .config import parse_config

    register_plugin()
    try:
        console_level()
        return parse_config(argv)
    except (ValueError, TypeError, FileExistsError) as err:
        logging.getLogger("lerobot_policy_pi_rl").debug("invalid config", exc_info=True)
        print(f"error: invalid configuration: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def baseline_runner(algorithm_type: str, role: str) -> Runner:
    """`run` of `<BASELINES_PACKAGE>.<algorithm_type>.<role>`: the loop LeRobot's algorithm runs in that role."""
    if role not in ROLES:
        raise ValueError(f"role={role!r} is not valid; allowed: {', '.join(ROLES)}")
    module = f"{BASELINES_PACKAGE}.{algorithm_type}.{role}"
    try:
        return importlib.import_module(module).run
    except ModuleNotFoundError as err:
        if err.name is None or not module.startswith(err.name):
            raise  # the baseline exists but one of its own imports is missing
        raise ValueError(f"algorithm.type={algorithm_type!r} has no {role} loop: {module} does not exist") from None


def run_entry_point(role: str, argv: list[str] | None, *, pi_rl: Runner) -> int:
    """`lerobot-pi-rl-{learner,actor}`: the PI-RL loop `pi_rl` for `--algorithm.type=pi_rl`, else the baseline's
    loop for this role (`--algorithm.type=sac`: LeRobot's SAC)."""
    cfg = load_config(argv)
    if cfg.algorithm.type == "pi_rl":
        return pi_rl(cfg)
    return baseline_runner(cfg.algorithm.type, role)(cfg)
