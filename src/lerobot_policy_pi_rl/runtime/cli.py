"""Shared entry-point prologue: register this plugin's types BEFORE parsing, then parse and validate."""

from __future__ import annotations

import importlib
import logging
import sys

from .config import PiRLTrainRLServerPipelineConfig


def register_plugin() -> None:
    """Import everything that registers a draccus choice: policy `pi_rl`, algorithm `pi_rl`, env `pi_rl_pickcube`.

    LeRobot's `lerobot.rl.*` entry points do not call `register_third_party_plugins()`, so ours do it by import.
    """
    import lerobot_policy_pi_rl  # noqa: F401  (policy pi_rl, algorithm pi_rl, env pi_rl_pickcube)

    # Robot and teleoperator types (so101_follower, ...) register when LeRobot's gym_manipulator is imported.
    importlib.import_module("lerobot.rl.gym_manipulator")


def load_config(argv: list[str] | None = None) -> PiRLTrainRLServerPipelineConfig:
    """Parse and validate; a bad value exits with status 2 and one line naming the field."""
    from .config import parse_config

    register_plugin()
    try:
        return parse_config(argv)
    except (ValueError, TypeError, FileExistsError) as err:
        logging.getLogger("lerobot_policy_pi_rl").debug("invalid config", exc_info=True)
        print(f"error: invalid configuration: {err}", file=sys.stderr)
        raise SystemExit(2) from None
