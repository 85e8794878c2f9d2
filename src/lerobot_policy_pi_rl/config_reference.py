"""Generate the configuration reference (docs/configuration.md) from the config classes themselves.

Every field is listed with its CLI path, type, default and the comment written above it in the source (the same
comment draccus shows as CLI help). `tests/test_docs.py` fails when docs/configuration.md is out of date:
regenerate with `python -m lerobot_policy_pi_rl.config_reference > docs/configuration.md`.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
import typing
from enum import Enum

from .configuration_pi_rl import (
    BackboneConfig,
    FlowMLPBackboneConfig,
    FlowNoiseConfig,
    FlowSDEConfig,
    PiRLConfig,
    SmolVLABackboneConfig,
    ValueHeadConfig,
    VariantConfig,
)
from .rl.config import AdvantageConfig, OfflineConfig, PiRLAlgorithmConfig

# Fields inherited from LeRobot's PreTrainedConfig / RLAlgorithmConfig are documented upstream.
_UPSTREAM_POLICY_FIELDS = {
    "n_obs_steps", "input_features", "output_features", "device", "use_amp", "use_peft", "repo_id", "private",
    "tags", "license", "pretrained_path", "pretrained_revision",
}


def field_comments(cls: type) -> dict[str, str]:
    """Comment lines directly above each field assignment in the class body (nearest class defining it)."""
    comments: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass.__module__.startswith(("lerobot.", "draccus")):
            continue
        try:
            lines = inspect.getsource(klass).splitlines()
        except (OSError, TypeError):
            continue
        pending: list[str] = []
        for line in lines:
            stripped = line.strip()
            if stripped.startswith("#"):
                pending.append(stripped.lstrip("#").strip())
                continue
            match = re.match(r"^(\w+)\s*:", stripped)
            if match and line.startswith("    ") and not line.startswith("     "):
                if pending:
                    comments[match.group(1)] = " ".join(pending)
            pending = []
    return comments


def _type_name(tp) -> str:
    text = tp if isinstance(tp, str) else getattr(tp, "__name__", str(tp))
    return str(text).replace("typing.", "")


def _default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = field.default_factory()  # type: ignore[misc]
    else:
        return "(required)"
    if dataclasses.is_dataclass(value):
        choice = getattr(value, "type", None)
        if isinstance(choice, str):
            return f"type={choice}"
        if type(value).__module__.startswith("lerobot."):  # LeRobot's own class: no table below, show its fields
            return "{" + ", ".join(f"{f.name}: {getattr(value, f.name)}" for f in dataclasses.fields(value)) + "}"
        return "(nested, below)"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {v.value if isinstance(v, Enum) else v}" for k, v in value.items()) + "}"
    return repr(value)


def _rows(cls: type, prefix: str, skip: set[str] = frozenset()) -> list[str]:
    comments = field_comments(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if f.name in skip or f.name.startswith("_"):
            continue
        doc = comments.get(f.name, "")
        rows.append(f"| `{prefix}{f.name}` | `{_type_name(f.type)}` | `{_default(f)}` | {doc} |")
    return rows


def _table(title: str, intro: str, cls: type, prefix: str, skip: set[str] = frozenset()) -> list[str]:
    out = [f"## {title}", "", intro, "", "| field | type | default | meaning |", "|---|---|---|---|"]
    out += _rows(cls, prefix, skip)
    out.append("")
    return out


def generate() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Generated from the config classes by `python -m lerobot_policy_pi_rl.config_reference`; a test fails",
        "when this file is out of date. Fields inherited from LeRobot (`device`, `pretrained_path`, features, …)",
        "are documented by LeRobot.",
        "",
    ]
    lines += _table(
        "Policy: `--policy.type=pi_rl`", PiRLConfig.__doc__.strip().splitlines()[0], PiRLConfig, "policy.",
        _UPSTREAM_POLICY_FIELDS,
    )
    for name, cls in sorted(VariantConfig.get_known_choices().items()):
        lines += _table(
            f"Variant `--policy.variant.type={name}`", cls.__doc__.strip().splitlines()[0], cls, "policy.variant."
        )
    seen: set[type] = set()
    for name, cls in sorted(BackboneConfig.get_known_choices().items()):
        doc = (cls.__doc__ or "").strip().splitlines()
        intro = doc[0] if doc and cls not in (SmolVLABackboneConfig,) else ""
        if not intro or cls.__doc__ == BackboneConfig.__doc__:
            intro = "A LeRobot VLA policy loaded from a plain LeRobot checkpoint." if name != "flow_mlp" else ""
        seen.add(cls)
        lines += _table(f"Backbone `--policy.backbone.type={name}`", intro, cls, "policy.backbone.")
    lines += _table("Value head `policy.value_head`", "The critic V(o) on chain-independent features.",
                    ValueHeadConfig, "policy.value_head.")
    lines += _table(
        "Algorithm: `--algorithm.type=pi_rl`", PiRLAlgorithmConfig.__doc__.strip().splitlines()[0],
        PiRLAlgorithmConfig, "algorithm.", {"policy_config"},
    )
    for name, cls in sorted(AdvantageConfig.get_known_choices().items()):
        lines += _table(
            f"Advantage `--algorithm.advantage.type={name}`", cls.__doc__.strip().splitlines()[0], cls,
            "algorithm.advantage.",
        )
    lines += _table("Online/offline mixing `algorithm.offline`", OfflineConfig.__doc__.strip().splitlines()[0],
                    OfflineConfig, "algorithm.offline.")
    try:
        from .runtime.config import PiRLTrainRLServerPipelineConfig
    except ImportError:  # runtime not installed in this build
        PiRLTrainRLServerPipelineConfig = None  # noqa: N806
    if PiRLTrainRLServerPipelineConfig is not None:
        own = {f.name for f in dataclasses.fields(PiRLTrainRLServerPipelineConfig)}
        base_fields = {
            f.name for base in PiRLTrainRLServerPipelineConfig.__mro__[1:] if dataclasses.is_dataclass(base)
            for f in dataclasses.fields(base)
        }
        lines += _table(
            "Runtime: `lerobot-pi-rl-learner` / `-actor` / `-train`",
            "Fields this package adds to LeRobot's `TrainRLServerPipelineConfig` (all of LeRobot's fields apply too).",
            PiRLTrainRLServerPipelineConfig, "", base_fields - (own - base_fields),
        )
        from .runtime.transport import TransportSecurityConfig

        lines += _table("Transport security `security`", TransportSecurityConfig.__doc__.strip().splitlines()[0],
                        TransportSecurityConfig, "security.")
    _ = (FlowMLPBackboneConfig, FlowNoiseConfig, FlowSDEConfig, typing)
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    sys.stdout.write(generate())


if __name__ == "__main__":
    main()
