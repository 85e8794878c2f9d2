"""`pi05`: LeRobot's π0.5 behind the `FlowBackbone` contract.

π0.5 has no state token: its processor discretizes the state into the language prompt, so the VLM prefix
carries the whole observation and the action expert reads only [prefix K/V; noisy actions], with the time
entering through adaptive RMS norm. Value features: `auto` = `prefix` (mean over real prefix tokens of the VLM
output). Everything else is shared with π0 (`PaliGemmaFlowBackbone`).
"""

from __future__ import annotations

from torch import Tensor

from lerobot.policies.pretrained import PreTrainedPolicy

from .pi0 import PaliGemmaFlowBackbone
from .vla_base import VLAContext


class PI05Backbone(PaliGemmaFlowBackbone):
    policy_type = "pi05"
    auto_value_source = "prefix"

    @classmethod
    def _policy_class(cls) -> type[PreTrainedPolicy]:
        from lerobot.policies.pi05.modeling_pi05 import PI05Policy

        return PI05Policy

    def _embed_suffix(self, context: VLAContext, x_t: Tensor, t: Tensor):
        return self.model.embed_suffix(x_t, t)
