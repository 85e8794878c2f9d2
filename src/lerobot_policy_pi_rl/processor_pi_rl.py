"""Pre/post-processors of the `pi_rl` policy.

`flow_mlp`: LeRobot's default pipeline (normalize observations and actions with the dataset stats, add the batch
dimension, move to device; un-normalize actions on the way out), with the state standard deviations floored at
`state_std_floor` (`floor_state_std`); the floored stats are what the saved processors hold, so SFT, the PI-RL
actor and learner, and evaluation all normalize alike. VLA backbones use their own LeRobot processors
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
    return make_default_pre_post_processors(config, floor_state_std(config, dataset_stats))


def floor_state_std(
    config: PiRLConfig, dataset_stats: dict[str, dict[str, torch.Tensor]] | None
) -> dict[str, dict[str, torch.Tensor]] | None:
    """`dataset_stats` with the `std` of every MEAN_STD-normalized STATE/ENV input feature raised to at least
    `config.state_std_floor` (other features and stats unchanged; the input is not modified)."""
    from lerobot.configs import FeatureType, NormalizationMode

    if dataset_stats is None or config.state_std_floor <= 0:
        return dataset_stats
    floored = dict(dataset_stats)
    for key, feature in (config.input_features or {}).items():
        if feature.type not in (FeatureType.STATE, FeatureType.ENV) or key not in dataset_stats:
            continue
        if config.normalization_mapping.get(feature.type.value) != NormalizationMode.MEAN_STD:
            continue
        stats = dict(dataset_stats[key])
        if "std" in stats:
            std = torch.as_tensor(stats["std"])
            stats["std"] = torch.clamp(std, min=config.state_std_floor).to(std.dtype)
        floored[key] = stats
    return floored
