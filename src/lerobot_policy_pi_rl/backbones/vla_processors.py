"""Pre/post-processors of VLA-backed `pi_rl` policies: the upstream policy's own pipelines plus a default task.

π0, π0.5 and SmolVLA tokenize `complementary_data["task"]` and raise `KeyError: 'task'` when it is absent,
which is what RL actors and LeRobot's stock loops send. `DefaultTaskProcessorStep` (inserted right after the
batch dimension is added, before tokenization) fills in `config.backbone.default_task` for every observation
without a task. Instructions are padded to the tokenizer's `max_length` (SmolVLA pads to the longest in a call by
default): the actor preprocesses each env on its own and the learner stacks rows of every task into one batch, so
every row must hold the same number of tokens. Padding is masked, so it does not change what the model computes. The step is registered, so saved pipelines reload; `lerobot-pi-rl-export` strips it again when
writing a plain LeRobot checkpoint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from lerobot.configs import PipelineFeatureType, PolicyFeature
from lerobot.processor import (
    AddBatchDimensionProcessorStep,
    EnvTransition,
    TokenizerProcessorStep,
    PolicyAction,
    PolicyProcessorPipeline,
    ProcessorStep,
    ProcessorStepRegistry,
    TransitionKey,
)


from ..configuration_pi_rl import PiRLConfig, VLABackboneConfig

DEFAULT_TASK_STEP_NAME = "pi_rl_default_task"
PREPROCESSOR_FILE = "policy_preprocessor.json"
POSTPROCESSOR_FILE = "policy_postprocessor.json"


def _batch_size(observation: dict[str, Any] | None) -> int:
    for value in (observation or {}).values():
        if isinstance(value, torch.Tensor) and value.dim() >= 1:
            return int(value.shape[0])
    return 1


@ProcessorStepRegistry.register(name=DEFAULT_TASK_STEP_NAME)
@dataclass
class DefaultTaskProcessorStep(ProcessorStep):
    """Set `complementary_data["task"]` to `task` (one copy per batch row) where it is missing or empty.

    Runs after the batch dimension is added: the task becomes a list of B strings, which is what the tokenizer
    step turns into `[B, L]` tokens. Empty strings inside a given task list are replaced too.
    """

    task: str = "Complete the task."

    def __call__(self, transition: EnvTransition) -> EnvTransition:
        transition = transition.copy()
        complementary = dict(transition.get(TransitionKey.COMPLEMENTARY_DATA) or {})
        task = complementary.get("task")
        if task is None or (isinstance(task, (str, list, tuple)) and len(task) == 0):
            complementary["task"] = [self.task] * _batch_size(transition.get(TransitionKey.OBSERVATION))
        elif isinstance(task, (list, tuple)):
            complementary["task"] = [t if t else self.task for t in task]
        transition[TransitionKey.COMPLEMENTARY_DATA] = complementary
        return transition

    def get_config(self) -> dict[str, Any]:
        return {"task": self.task}

    def transform_features(
        self, features: dict[PipelineFeatureType, dict[str, PolicyFeature]]
    ) -> dict[PipelineFeatureType, dict[str, PolicyFeature]]:
        return features


def with_default_task(pipeline: PolicyProcessorPipeline, task: str) -> PolicyProcessorPipeline:
    """Insert (or replace) a `DefaultTaskProcessorStep` right after the add-batch-dimension step."""
    steps = [s for s in pipeline.steps if not isinstance(s, DefaultTaskProcessorStep)]
    index = next((i + 1 for i, s in enumerate(steps) if isinstance(s, AddBatchDimensionProcessorStep)), 0)
    steps.insert(index, DefaultTaskProcessorStep(task=task))
    pipeline.steps = steps
    return pipeline


def without_default_task(pipeline: PolicyProcessorPipeline) -> PolicyProcessorPipeline:
    """The pipeline minus this plugin's task step (plain LeRobot can then load it)."""
    pipeline.steps = [s for s in pipeline.steps if not isinstance(s, DefaultTaskProcessorStep)]
    return pipeline


def _has_saved_processors(path: str) -> bool:
    if os.path.isdir(path):
        return os.path.isfile(os.path.join(path, PREPROCESSOR_FILE)) and os.path.isfile(
            os.path.join(path, POSTPROCESSOR_FILE)
        )
    from huggingface_hub import file_exists

    try:
        return file_exists(path, PREPROCESSOR_FILE) and file_exists(path, POSTPROCESSOR_FILE)
    except Exception:  # noqa: BLE001 - offline or unknown repo: fall back to building from the config
        return False


def make_vla_pre_post_processors(
    config: PiRLConfig,
    dataset_stats: dict[str, dict[str, torch.Tensor]] | None = None,
) -> tuple[
    PolicyProcessorPipeline[dict[str, Any], dict[str, Any]],
    PolicyProcessorPipeline[PolicyAction, PolicyAction],
]:
    """The backbone policy's processors (its saved ones if the checkpoint has them, else built from its config),
    with the default-task step added. `dataset_stats`, when given, replace the normalization stats."""
    from lerobot.configs import PreTrainedConfig
    from lerobot.policies.factory import make_pre_post_processors

    from .vla_base import decode_upstream_config

    bcfg: VLABackboneConfig = config.backbone  # type: ignore[assignment]
    path = bcfg.pretrained_path
    debug_size = getattr(bcfg, "debug_size", None)
    if bcfg.upstream_config is not None:
        upstream = decode_upstream_config(bcfg.upstream_config)
        if debug_size:
            from .debug_smolvla import ensure_debug_vlm

            # The tokenizer step loads the debug VLM's tokenizer from this machine's copy.
            upstream.vlm_model_name = str(ensure_debug_vlm(debug_size))
    elif path:
        upstream = PreTrainedConfig.from_pretrained(path)
    else:
        raise ValueError(
            f"backbone.type={bcfg.type} needs backbone.pretrained_path, backbone.debug_size (smolvla) or a saved "
            "upstream_config to build its processors (building the policy first records the upstream config)"
        )
    upstream.device = config.device
    if path and _has_saved_processors(path):
        # LeRobot's own loader (converters, relative/absolute action step wiring), with our stats and device.
        pre_overrides: dict[str, Any] = {"device_processor": {"device": config.device}}
        post_overrides: dict[str, Any] = {}
        if dataset_stats is not None:
            pre_overrides["normalizer_processor"] = {"stats": dataset_stats}
            post_overrides["unnormalizer_processor"] = {"stats": dataset_stats}
        preprocessor, postprocessor = make_pre_post_processors(
            upstream, pretrained_path=path, preprocessor_overrides=pre_overrides, postprocessor_overrides=post_overrides
        )
    else:
        preprocessor, postprocessor = make_pre_post_processors(upstream, dataset_stats=dataset_stats)
    for step in preprocessor.steps:
        if isinstance(step, TokenizerProcessorStep):
            step.padding = "max_length"
    return with_default_task(preprocessor, bcfg.default_task), postprocessor
