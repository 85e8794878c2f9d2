"""Pre/post-processors of the `pi_rl` policy.

`flow_mlp`: LeRobot's default pipeline (normalize observations and actions with the dataset stats, add the batch
dimension, move to device; un-normalize actions on the way out). VLA backbones use their own LeRobot processors
(tokenizer, image handling, normalization), plus a step that injects a default task string when an observation
carries none.
"""

from __future__ import annotations

from typing import Any

import torch

from lerobot.processor import PolicyAction, PolicyProcessorPipeline, make_default_pre_post_processors

from .configuration_pi_rl import PiRLConfig


def make_pi_rl_pre_post_processors(
    config: PiRLConfig,
    dataset_stats: dict[str, dict[str, torch.Tensor]] | None = None,
) -> tuple[
    PolicyProcessorPipeline[dict[str, Any], dict[str, Any]],
    PolicyProcessorPipeline[PolicyAction, PolicyAction],
]:
    if dataset_stats is None and config.dataset_stats is not None:
        dataset_stats = {k: {s: torch.as_tensor(v) for s, v in d.items()} for k, d in config.dataset_stats.items()}
    if config.backbone.is_vla:
        from .backbones.vla_processors import make_vla_pre_post_processors

        return make_vla_pre_post_processors(config, dataset_stats)
    return make_default_pre_post_processors(config, dataset_stats)
