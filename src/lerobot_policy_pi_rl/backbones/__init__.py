"""Flow backbones behind one contract (`FlowBackbone`). VLA adapters import LeRobot's models lazily."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import FlowBackbone

if TYPE_CHECKING:
    from ..configuration_pi_rl import PiRLConfig


def make_backbone(config: PiRLConfig) -> FlowBackbone:
    """Build the backbone named by `config.backbone.type`."""
    kind = config.backbone.type
    if kind == "flow_mlp":
        from .flow_mlp import FlowMLPBackbone

        return FlowMLPBackbone(config)
    if kind == "smolvla":
        from .smolvla import SmolVLABackbone

        return SmolVLABackbone(config)
    if kind == "pi0":
        from .pi0 import PI0Backbone

        return PI0Backbone(config)
    if kind == "pi05":
        from .pi05 import PI05Backbone

        return PI05Backbone(config)
    raise ValueError(f"backbone.type={kind!r} is not valid; allowed: flow_mlp, smolvla, pi0, pi05")


__all__ = ["FlowBackbone", "make_backbone"]
