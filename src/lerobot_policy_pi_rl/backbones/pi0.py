"""`pi0`: LeRobot's π0 behind the `FlowBackbone` contract.

π0's state enters the *suffix* (one state token before the H action tokens, in the action expert), so the
prefix is images + language only and `state_proj` trains with the action expert. With `freeze_vlm=True` the
PaliGemma VLM is frozen; the RL actor is the Gemma action expert with its state/action/time projections.
Value features: `auto` = `action_expert` (mean over action tokens of the expert at the probe x = 0, t = 1; it
sees the state, the VLM prefix does not).

`PaliGemmaFlowBackbone` is shared with π0.5, which differs only in its suffix (no state token; the time enters
through adaptive RMS norm) and in its prompt (state discretized into the language tokens by its processor).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lerobot.policies.common.vla_utils import make_att_2d_masks, prepare_attention_masks_4d
from lerobot.policies.pretrained import PreTrainedPolicy
from lerobot.utils.constants import OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS

from ..configuration_pi_rl import VLABackboneConfig
from .vla_base import VLABackbone, VLAContext, cache_tensors, fresh_cache


class PaliGemmaFlowBackbone(VLABackbone):
    """Common adapter of π0 and π0.5 (PaliGemma VLM + Gemma action expert)."""

    def _configure_upstream(self, upstream, bcfg: VLABackboneConfig) -> None:
        # Upstream keeps the vision path and norms in float32 and casts the rest when dtype is bfloat16.
        upstream.dtype = bcfg.dtype
        upstream.compile_model = False

    def _remap_checkpoint_keys(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        # The key fixes `PI0Policy.from_pretrained` applies, then its "model." prefix.
        fixed = self.policy._fix_pytorch_state_dict_keys(state_dict, self.policy.config)
        return {k if k.startswith("model.") else f"model.{k}": v for k, v in fixed.items()}

    @property
    def model(self):
        """Upstream `PI0Pytorch` / `PI05Pytorch`."""
        return self.policy.model

    @property
    def _with_expert(self):
        return self.model.paligemma_with_expert

    def vlm_modules(self) -> list[nn.Module]:
        return [self._with_expert.paligemma]

    def unused_modules(self) -> list[nn.Module]:
        return [self._with_expert.gemma_expert.lm_head]

    def _action_out_proj(self) -> nn.Linear:
        return self.model.action_out_proj

    @property
    def vlm_width(self) -> int:
        return int(self._with_expert.paligemma.config.text_config.hidden_size)

    def _suffix_inputs(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {}

    def _embed_suffix(self, context: VLAContext, x_t: Tensor, t: Tensor):
        """-> (embs `[B, S, W]`, pad masks `[B, S]`, autoregressive masks `[B, S]`, adaRMS condition or None)."""
        raise NotImplementedError

    def _prefix(self, batch: dict[str, Tensor]) -> VLAContext:
        images, img_masks = self.policy._preprocess_images(batch)
        embs, pad_masks, att_masks = self.model.embed_prefix(
            images, img_masks, batch[OBS_LANGUAGE_TOKENS], batch[OBS_LANGUAGE_ATTENTION_MASK]
        )
        att_4d = prepare_attention_masks_4d(make_att_2d_masks(pad_masks, att_masks))
        position_ids = torch.cumsum(pad_masks, dim=1) - 1
        self._with_expert.paligemma.model.language_model.config._attn_implementation = "eager"  # noqa: SLF001
        (prefix_out, _), cache = self._with_expert.forward(
            attention_mask=att_4d,
            position_ids=position_ids,
            past_key_values=None,
            inputs_embeds=[embs, None],
            use_cache=True,
        )
        return VLAContext(
            prefix_pad_masks=pad_masks,
            prefix_kv=cache_tensors(cache),
            prefix_out=prefix_out,
            extra=self._suffix_inputs(batch),
        )

    def _expert(self, context: VLAContext, x_t: Tensor, t: Tensor) -> Tensor:
        # Same masks and positions as upstream `denoise_step`.
        suffix_embs, suffix_pad, suffix_att, adarms_cond = self._embed_suffix(context, x_t, t)
        expert = self._with_expert.gemma_expert.model
        if expert.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16:
            suffix_embs = suffix_embs.to(torch.bfloat16)
        prefix_pad = context.prefix_pad_masks
        bsize, suffix_len, prefix_len = suffix_pad.shape[0], suffix_pad.shape[1], prefix_pad.shape[1]
        prefix_2d = prefix_pad[:, None, :].expand(bsize, suffix_len, prefix_len)
        full_2d = torch.cat([prefix_2d, make_att_2d_masks(suffix_pad, suffix_att)], dim=2)
        position_ids = prefix_pad.sum(dim=-1)[:, None] + torch.cumsum(suffix_pad, dim=1) - 1
        expert.config._attn_implementation = "eager"  # noqa: SLF001
        (_, suffix_out), _ = self._with_expert.forward(
            attention_mask=prepare_attention_masks_4d(full_2d),
            position_ids=position_ids,
            past_key_values=fresh_cache(context.prefix_kv),
            inputs_embeds=[None, suffix_embs],
            use_cache=False,
            adarms_cond=[None, adarms_cond],
        )
        return suffix_out[:, -self.chunk_size :]  # [B, H, W_expert]


class PI0Backbone(PaliGemmaFlowBackbone):
    policy_type = "pi0"
    auto_value_source = "action_expert"

    @classmethod
    def _policy_class(cls) -> type[PreTrainedPolicy]:
        from lerobot.policies.pi0.modeling_pi0 import PI0Policy

        return PI0Policy

    def _suffix_inputs(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"state": self.policy.prepare_state(batch)}

    def _embed_suffix(self, context: VLAContext, x_t: Tensor, t: Tensor):
        return self.model.embed_suffix(context.extra["state"], x_t, t)
