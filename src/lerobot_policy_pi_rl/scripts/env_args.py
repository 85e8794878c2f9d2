"""The env of the recording and evaluation scripts, from LeRobot-style `--env.<field>=<value>` flags.

`--env.type` picks a registered LeRobot `EnvConfig` (default `pi_rl_pickcube`) and the other `--env.<field>`
flags set its fields, parsed by draccus as `lerobot-train` / `lerobot-eval` parse `--env.*`, e.g.
`--env.type=pi_rl_metaworld --env.task=push-v3,drawer-open-v3 --env.task_one_hot=true`. `--env.<field> <value>`
(two tokens) works too.

The scripts' older PickCube flags (`--episode_length`, `--fixed_cube`, `--state_includes_cube`, `--camera`,
`--camera_size`, and record_demos' `--task`) are shorthands for the PickCube config's fields (`PICKCUBE_SHORTHANDS`)
and only apply to it.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from typing import Any

from lerobot.envs.configs import EnvConfig

from .. import envs  # noqa: F401  (registers pi_rl_pickcube and pi_rl_metaworld)

DEFAULT_ENV_TYPE = "pi_rl_pickcube"
ENV_PREFIX = "--env."
# Script flag -> (PickCube config field, value of the field given the flag's argparse value).
PICKCUBE_SHORTHANDS: dict[str, tuple[str, Any]] = {
    "episode_length": ("episode_length", str),
    "fixed_cube": ("randomize_cube", lambda on: "false"),
    "state_includes_cube": ("state_includes_cube", lambda on: "true"),
    "camera": ("camera", str),
    "camera_size": ("camera_size", str),
    "task": ("task_description", str),
}


def add_pickcube_shorthands(parser: argparse.ArgumentParser, *, task: bool = False) -> None:
    """The PickCube shorthand flags. Their default is None (not given), so a given one can be told apart."""
    from ..envs.pickcube import CAMERAS

    parser.add_argument("--episode_length", type=int, default=None,
                        help="PickCube: env step limit per episode (default 100); else use --env.episode_length")
    parser.add_argument("--fixed_cube", action="store_true", default=None,
                        help="PickCube: gym_hil's fixed cube at (0.5, 0) instead of a seeded random one")
    parser.add_argument("--state_includes_cube", action="store_true", default=None,
                        help="PickCube: append the cube xyz to observation.state (21 dims) instead of an "
                        "observation.environment_state")
    parser.add_argument("--camera", default=None, choices=CAMERAS,
                        help="PickCube: camera image observation.images.<name>: front / wrist (rendered), blank "
                        "(all-zero frame named front); default none")
    parser.add_argument("--camera_size", type=int, default=None,
                        help="PickCube: side of the square camera frame in pixels (default 32)")
    if task:
        parser.add_argument("--task", default=None, help="PickCube: task string stored with every frame")


def normalize_env_flags(tokens: list[str]) -> list[str]:
    """`--env.x=v` / `--env.x v` tokens (argparse's leftovers) -> `["--env.x=v", ...]`; anything else is an error."""
    flags: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith(ENV_PREFIX) or len(token) == len(ENV_PREFIX):
            raise ValueError(f"unrecognized argument {token!r} (env options are --env.<field>=<value>)")
        if "=" not in token:
            if i + 1 >= len(tokens) or tokens[i + 1].startswith("--"):
                raise ValueError(f"{token} needs a value ({token}=<value>)")
            token = f"{token}={tokens[i + 1]}"
            i += 1
        flags.append(token)
        i += 1
    return flags


@dataclass
class _EnvArgs:
    env: EnvConfig


def env_config_class(env_type: str) -> type[EnvConfig]:
    try:
        return EnvConfig.get_choice_class(env_type)
    except KeyError:
        known = ", ".join(sorted(EnvConfig.get_known_choices()))
        raise ValueError(f"--env.type={env_type!r} is not a registered LeRobot env type; known: {known}") from None


def parse_env_config(env_flags: list[str], shorthands: dict[str, Any] | None = None) -> EnvConfig:
    """The `EnvConfig` of normalized `--env.<field>=<value>` flags, with the PickCube `shorthands` given (flag name
    -> argparse value; None = not given) applied to a PickCube config. Bad values raise a ValueError naming them."""
    values: dict[str, str] = {}
    for flag in env_flags:
        name, value = flag[len(ENV_PREFIX):].split("=", 1)
        if name in values:
            raise ValueError(f"--env.{name} is given twice")
        values[name] = value
    env_type = values.pop("type", DEFAULT_ENV_TYPE)
    cls = env_config_class(env_type)
    field_names = {f.name for f in fields(cls)} - {"features", "features_map"}
    unknown = sorted({name.split(".")[0] for name in values} - field_names)
    if unknown:
        raise ValueError(f"--env.{unknown[0]}: env type {env_type} has no such field; its fields: "
                         f"{', '.join(sorted(field_names))}")
    given = {flag: value for flag, value in (shorthands or {}).items() if value is not None}
    if given and env_type != DEFAULT_ENV_TYPE:
        raise ValueError(f"--{', --'.join(given)}: PickCube shorthand(s), not options of --env.type={env_type}; "
                         "set that env's fields with --env.<field>=<value>")
    for flag, value in given.items():
        name, to_text = PICKCUBE_SHORTHANDS[flag]
        if name in values:
            raise ValueError(f"--{flag} and --env.{name} both set env.{name}; give one")
        values[name] = to_text(value)
    args = [f"{ENV_PREFIX}type={env_type}", *(f"{ENV_PREFIX}{k}={v}" for k, v in values.items())]
    try:
        import draccus

        return draccus.parse(_EnvArgs, args=args).env
    except Exception as err:
        # draccus wraps the config's own validation error (which names the bad value) in a ParsingError.
        cause = err.__cause__ if isinstance(err.__cause__, ValueError) else err
        raise ValueError(f"env options {' '.join(args)}: {cause}") from err


def env_config_from_args(leftover: list[str], args: argparse.Namespace) -> EnvConfig:
    """The env of a script: its argparse leftovers (the `--env.*` flags) and its PickCube shorthand values."""
    shorthands = {flag: getattr(args, flag) for flag in PICKCUBE_SHORTHANDS if hasattr(args, flag)}
    return parse_env_config(normalize_env_flags(leftover), shorthands)


def env_options(env_cfg: EnvConfig) -> dict[str, Any]:
    """The env's type and settable fields (JSON-able: what reports record)."""
    return {"type": env_cfg.type, **{f.name: getattr(env_cfg, f.name) for f in fields(env_cfg)
                                     if f.name not in ("features", "features_map")}}


def env_config_from_options(options: dict[str, Any]) -> EnvConfig:
    """Inverse of `env_options` (for worker processes)."""
    options = dict(options)
    return env_config_class(options.pop("type"))(**options)
