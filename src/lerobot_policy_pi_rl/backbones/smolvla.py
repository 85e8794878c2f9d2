"""`smolvla`: LeRobot's SmolVLA behind the `FlowBackbone` contract.

State enters the *prefix* (a projected state token after images and language), so the whole observation is
encoded by the VLM prefill; with `freeze_vlm=True` the prefix path (VLM and `state_proj`) is frozen and the RL
actor is the action expert (`lm_expert`) with its action/time projections. The expert reads the prefix through
the K/V cache (cross-attention layers) or attends over [prefix; actions] (self-attention layers).
Value features: `auto` = `prefix` (mean over real prefix tokens of the VLM output).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lerobot.policies.common.vla_utils import make_att_2d_masks
from lerobot.policies.pretrained import PreTrainedPolicy
from lerobot.utils.constants import OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS

from ..configuration_pi_rl import VLABackboneConfig
from .vla_base import VLABackbone, VLAContext, cache_tensors, fresh_cache


class SmolVLABackbone(VLABackbone):
    policy_type = "smolvla"
    auto_value_source = "prefix"

    @classmethod
    def _policy_class(cls) -> type[PreTrainedPolicy]:
        from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

        return SmolVLAPolicy

    def _debug_upstream_config(self, config):
        bcfg = config.backbone
        if bcfg.debug_size is None:
            return None
        from .debug_smolvla import debug_smolvla_config

        return debug_smolvla_config(
            bcfg.debug_size,
            input_features=config.input_features or {},
            output_features=config.output_features or {},
            chunk_size=config.chunk_size,
            n_action_steps=config.n_action_steps,
            num_steps=config.num_denoise_steps,
            device=config.device,
        )

    def _configure_upstream(self, upstream, bcfg: VLABackboneConfig) -> None:
        if getattr(bcfg, "debug_size", None):
            from .debug_smolvla import ensure_debug_vlm

            # A saved config names the directory of the machine it was trained on: use this machine's.
            upstream.vlm_model_name = str(ensure_debug_vlm(bcfg.debug_size))
        if upstream.adapt_to_pi_aloha:
            raise NotImplementedError(
                "smolvla checkpoints with adapt_to_pi_aloha=true are not supported by pi_rl (the chain would live "
                "in a different action space than the executed actions)"
            )
        # The denoise loop reads the prefix through the K/V cache.
        upstream.use_cache = True
        # Every weight comes from the checkpoint: never fetch the VLM's own weights from the hub.
        upstream.load_vlm_weights = False

    @property
    def model(self):
        """Upstream `VLAFlowMatching`."""
        return self.policy.model

    def _apply_dtype(self, dtype: str) -> None:
        if dtype == "bfloat16":
            # Projections stay float32; upstream casts hidden states to each layer's weight dtype.
            self.model.vlm_with_expert.to(torch.bfloat16)

    def vlm_modules(self) -> list[nn.Module]:
        return [self.model.vlm_with_expert.vlm, self.model.state_proj]

    def unused_modules(self) -> list[nn.Module]:
        return []

    def _action_out_proj(self) -> nn.Linear:
        return self.model.action_out_proj

    @property
    def vlm_width(self) -> int:
        return int(self.model.vlm_with_expert.config.text_config.hidden_size)

    def _prefix(self, batch: dict[str, Tensor]) -> VLAContext:
        images, img_masks = self.policy.prepare_images(batch)
        state = self.policy.prepare_state(batch)
        embs, pad_masks, att_masks = self.model.embed_prefix(
            images, img_masks, batch[OBS_LANGUAGE_TOKENS], batch[OBS_LANGUAGE_ATTENTION_MASK], state=state
        )
        att_2d = make_att_2d_masks(pad_masks, att_masks)
        position_ids = torch.cumsum(pad_masks, dim=1) - 1
        (prefix_out, _), cache = self.model.vlm_with_expert.forward(
            attention_mask=att_2d,
            position_ids=position_ids,
            past_key_values=None,
            inputs_embeds=[embs, None],
            use_cache=True,
        )
        return VLAContext(prefix_pad_masks=pad_masks, prefix_kv=cache_tensors(cache), prefix_out=prefix_out,
                          extra={"state": state})

    def _expert(self, context: VLAContext, x_t: Tensor, t: Tensor) -> Tensor:
        # Same masks and positions as upstream `VLAFlowMatching.denoise_step`.
        suffix_embs, suffix_pad, suffix_att = self.model.embed_suffix(x_t, t)
        prefix_pad = context.prefix_pad_masks
        bsize, suffix_len, prefix_len = suffix_pad.shape[0], suffix_pad.shape[1], prefix_pad.shape[1]
        prefix_2d = prefix_pad[:, None, :].expand(bsize, suffix_len, prefix_len)
        full_2d = torch.cat([prefix_2d, make_att_2d_masks(suffix_pad, suffix_att)], dim=2)
        position_ids = prefix_pad.sum(dim=-1)[:, None] + torch.cumsum(suffix_pad, dim=1) - 1
        (_, suffix_out), _ = self.model.vlm_with_expert.forward(
            attention_mask=full_2d,
            position_ids=position_ids,
            past_key_values=fresh_cache(context.prefix_kv),
            inputs_embeds=[None, suffix_embs],
            use_cache=True,
        )
        return suffix_out[:, -self.chunk_size :]  # [B, H, W_expert]
