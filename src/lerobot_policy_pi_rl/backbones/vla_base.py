"""Shared machinery of the VLA backbones (SmolVLA, π0, π0.5), composed over LeRobot's own policies.

What every VLA adapter does the same way:
  * Build the upstream policy from its LeRobot config and load a plain LeRobot checkpoint, checking the load
    explicitly (every model key filled, nothing unexpected): `PI0Policy.from_pretrained` would silently return
    random weights, `SmolVLAPolicy.from_pretrained` loads non-strictly.
  * Remember the upstream config in `config.backbone.upstream_config`, so a saved pi_rl checkpoint rebuilds the
    same architecture without the original checkpoint (its weights then come from the pi_rl checkpoint).
  * Encode the prefix (images + language [+ state]) once per decision: VLM output `[B, L, W_vlm]`, real pad mask
    `[B, L]` and the per-layer prefix K/V. Each `velocity` call builds a fresh cache object over those same
    tensors (no copy), so the prefix stays valid for any number of action-expert passes, with or without
    gradients (upstream crops or clones the cache after each step instead).
  * Run one action-expert pass per `velocity` and return the projected velocity (float32) together with the
    expert's hidden output on the H action tokens, which the Flow-Noise head reads.

Time convention: t = 1 noise, t = 0 action. Actions are padded to the upstream `max_action_dim`.
"""

from __future__ import annotations

import abc
import json
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

import draccus
import torch
from torch import Tensor, nn

from lerobot.configs import PreTrainedConfig
from lerobot.policies.pretrained import PreTrainedPolicy

from ..configuration_pi_rl import PiRLConfig, VLABackboneConfig
from .base import FlowBackbone

SAFETENSORS_FILE = "model.safetensors"


@dataclass
class VLAContext:
    """One decision's encoded observation, reused by every `velocity` call."""

    #: `[B, L]` bool, True on real (non-padding) prefix tokens.
    prefix_pad_masks: Tensor
    #: Per layer `(keys, values)`, `[B, kv_heads, L, head_dim]`, as the prefix prefill stored them.
    prefix_kv: list[tuple[Tensor, Tensor]]
    #: `[B, L, W_vlm]` VLM output over the prefix (final norm applied).
    prefix_out: Tensor
    #: Backbone-specific inputs: the padded state `[B, max_state_dim]` under "state" (π0's suffix input; SmolVLA's
    #: prefix token), which `value_head.feature_source=prefix_state` also reads.
    extra: dict[str, Tensor] = field(default_factory=dict)
    #: Memoized chain-independent value features `[B, F]`.
    value_cache: Tensor | None = None


def fresh_cache(prefix_kv: list[tuple[Tensor, Tensor]]):
    """A new `DynamicCache` whose layers hold the given prefix K/V tensors (no copy).

    The attention layers append suffix K/V with `torch.cat`, which allocates new tensors: the prefix tensors are
    never written to, so the same prefix serves every denoise step and every backward pass.
    """
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache()
    for keys, values in prefix_kv:
        layer = DynamicLayer()
        layer.lazy_initialization(keys, values)
        layer.keys, layer.values = keys, values
        cache.layers.append(layer)
    return cache


def cache_tensors(cache) -> list[tuple[Tensor, Tensor]]:
    """Per-layer `(keys, values)` of a filled `DynamicCache`."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def masked_mean(tokens: Tensor, mask: Tensor) -> Tensor:
    """Mean of `tokens [B, L, W]` over positions where `mask [B, L]` is True -> `[B, W]` float32."""
    weights = mask.to(torch.float32).unsqueeze(-1)
    return (tokens.float() * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def encode_upstream_config(upstream: PreTrainedConfig) -> dict[str, Any]:
    """LeRobot's JSON encoding of a policy config (with its choice `type`), as plain JSON types."""
    return json.loads(json.dumps(draccus.encode(upstream, PreTrainedConfig)))


def decode_upstream_config(encoded: dict[str, Any]) -> PreTrainedConfig:
    return draccus.decode(PreTrainedConfig, encoded)


def resolve_checkpoint_file(path: str, filename: str) -> str:
    """Local `path/filename`, or the hub file (cache only when offline). Errors name the path."""
    if os.path.isdir(path):
        local = os.path.join(path, filename)
        if not os.path.isfile(local):
            raise FileNotFoundError(f"{path!r} is a directory but has no {filename}")
        return local
    if os.path.exists(path):
        raise FileNotFoundError(f"{path!r} is not a checkpoint directory")
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo_id=path, filename=filename)
    except Exception as err:  # noqa: BLE001 - re-raised with the path named
        raise FileNotFoundError(
            f"could not resolve {filename} of backbone checkpoint {path!r} (local dir or hub id): {err}"
        ) from err


def load_state_dict_checked(module: nn.Module, state_dict: dict[str, Tensor], source: str) -> None:
    """`load_state_dict` that fails unless every model key is filled and no checkpoint key is left over.

    Tied parameters (one storage under several names; safetensors keeps one name) count as filled when any of
    their names is in the checkpoint.
    """
    missing, unexpected = module.load_state_dict(state_dict, strict=False)
    if missing:
        storage = {name: tensor.data_ptr() for name, tensor in module.state_dict(keep_vars=True).items()}
        loaded = {storage[k] for k in state_dict if k in storage}
        missing = [k for k in missing if storage[k] not in loaded]
    if missing or unexpected:
        raise RuntimeError(
            f"backbone checkpoint {source!r} does not match the {type(module).__name__} it configures: "
            f"{len(missing)} missing keys (e.g. {sorted(missing)[:5]}), "
            f"{len(unexpected)} unexpected keys (e.g. {sorted(unexpected)[:5]})"
        )


class VLABackbone(FlowBackbone, abc.ABC):
    """A LeRobot VLA policy (`self.policy`) behind the `FlowBackbone` contract."""

    #: Upstream policy type name (`smolvla`, `pi0`, `pi05`).
    policy_type: ClassVar[str]
    #: Value feature source that `value_head.feature_source=auto` resolves to.
    auto_value_source: ClassVar[str]

    def __init__(self, config: PiRLConfig):
        super().__init__()
        bcfg: VLABackboneConfig = config.backbone  # type: ignore[assignment]
        self.freeze_vlm = bcfg.freeze_vlm
        self.detach_value_features = config.value_head.detach_features
        source = config.value_head.feature_source
        self.value_source = self.auto_value_source if source == "auto" else source

        first_build = bcfg.upstream_config is None
        upstream = self._resolve_upstream_config(config)
        upstream.device = config.device
        self._configure_upstream(upstream, bcfg)
        self.policy: PreTrainedPolicy = self._policy_class()(upstream)
        if first_build:
            if bcfg.pretrained_path:
                self._load_weights(bcfg.pretrained_path)
            bcfg.upstream_config = encode_upstream_config(upstream)
        self._apply_dtype(bcfg.dtype)

        upstream_action_dim = int(upstream.output_features["action"].shape[0])
        if upstream_action_dim != config.action_dim:
            raise ValueError(
                f"pi_rl action feature has {config.action_dim} dims but the {self.policy_type} checkpoint "
                f"predicts {upstream_action_dim}; the pi_rl input/output features must match the backbone's"
            )
        self.chunk_size = int(upstream.chunk_size)
        self.model_action_dim = int(upstream.max_action_dim)
        self._set_trainable(freeze_vlm=bcfg.freeze_vlm)

    # ----- what each VLA adapter provides -----

    @classmethod
    @abc.abstractmethod
    def _policy_class(cls) -> type[PreTrainedPolicy]: ...

    def _configure_upstream(self, upstream: PreTrainedConfig, bcfg: VLABackboneConfig) -> None:
        """Adjust the upstream config before the policy is built (dtype, caches, ...)."""

    def _apply_dtype(self, dtype: str) -> None:
        """Cast the VLM / expert to the compute dtype after loading (projections stay float32)."""

    def _remap_checkpoint_keys(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Upstream's own key fixes for older checkpoints (identity unless overridden)."""
        return state_dict

    @abc.abstractmethod
    def vlm_modules(self) -> list[nn.Module]:
        """Modules of the prefix path that `freeze_vlm` freezes (vision + language model)."""

    @abc.abstractmethod
    def unused_modules(self) -> list[nn.Module]:
        """Modules that never receive gradients (e.g. the expert's LM head); always frozen."""

    @abc.abstractmethod
    def _prefix(self, batch: dict[str, Tensor]) -> VLAContext:
        """Embed the prefix and run the VLM prefill."""

    @abc.abstractmethod
    def _expert(self, context: VLAContext, x_t: Tensor, t: Tensor) -> Tensor:
        """Action-expert pass: hidden output on the H action tokens `[B, H, W_expert]`."""

    @abc.abstractmethod
    def _action_out_proj(self) -> nn.Linear: ...

    # ----- construction helpers -----

    def _debug_upstream_config(self, config: PiRLConfig) -> PreTrainedConfig | None:
        """A random-weight upstream config built from the pi_rl config (`backbone.debug_size`), or None."""
        return None

    def _resolve_upstream_config(self, config: PiRLConfig) -> PreTrainedConfig:
        bcfg: VLABackboneConfig = config.backbone  # type: ignore[assignment]
        debug = None if bcfg.upstream_config is not None else self._debug_upstream_config(config)
        if bcfg.upstream_config is not None:
            upstream = decode_upstream_config(bcfg.upstream_config)
        elif debug is not None:
            upstream = debug
        else:
            if not bcfg.pretrained_path:
                raise ValueError(
                    f"backbone.type={self.policy_type} needs backbone.pretrained_path (a LeRobot {self.policy_type} "
                    "checkpoint: hub id or local directory)"
                )
            config_file = resolve_checkpoint_file(bcfg.pretrained_path, "config.json")
            upstream = PreTrainedConfig.from_pretrained(os.path.dirname(config_file))
        if upstream.type != self.policy_type:
            raise ValueError(
                f"backbone.type={self.policy_type} but {bcfg.pretrained_path or 'backbone.upstream_config'!r} "
                f"holds a {upstream.type!r} policy"
            )
        return upstream

    def _load_weights(self, path: str) -> None:
        from safetensors.torch import load_file

        weights_file = resolve_checkpoint_file(path, SAFETENSORS_FILE)
        state_dict = self._remap_checkpoint_keys(load_file(weights_file))
        load_state_dict_checked(self.policy, state_dict, path)

    def _set_trainable(self, *, freeze_vlm: bool) -> None:
        for module in self.vlm_modules():
            for p in module.parameters():
                p.requires_grad = not freeze_vlm
        for module in self.unused_modules():
            for p in module.parameters():
                p.requires_grad = False
        if freeze_vlm:
            for module in self.vlm_modules():
                module.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_vlm:
            for module in self.vlm_modules():
                module.eval()
        return self

    # ----- FlowBackbone contract -----

    def encode(self, batch: dict[str, Tensor]) -> VLAContext:
        # A frozen VLM needs no graph: the prefix is an observation encoding.
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_vlm):
            return self._prefix(batch)

    def velocity(self, context: VLAContext, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """`x_t [B, H, A_model]`, `t [B]` -> (`v [B, H, A_model]` float32, `hidden [B, H, W_expert]`)."""
        bsize = context.prefix_pad_masks.shape[0]
        if x_t.shape[0] != bsize or t.shape != (bsize,):
            raise ValueError(f"x_t {tuple(x_t.shape)} / t {tuple(t.shape)} do not match the context batch {bsize}")
        hidden = self._expert(context, x_t.float(), t.float())
        v = self._action_out_proj()(hidden.to(torch.float32))
        return v.float(), hidden

    def value_features(self, context: VLAContext) -> Tensor:
        """Chain-independent critic features `[B, F]` float32 (docs/concepts.md, "The critic")."""
        if context.value_cache is not None:
            return context.value_cache
        if self.value_source == "prefix":
            features = masked_mean(context.prefix_out, context.prefix_pad_masks)
        elif self.value_source == "prefix_state":
            # The prefix mean holds the state as one token among hundreds of image and language tokens; the critic
            # also gets the state itself.
            features = torch.cat([masked_mean(context.prefix_out, context.prefix_pad_masks).float(),
                                  context.extra["state"].float()], dim=-1)
        else:
            # The action expert at a fixed probe input (x = 0, t = 1): depends on the observation only.
            bsize = context.prefix_pad_masks.shape[0]
            device = context.prefix_pad_masks.device
            x0 = torch.zeros(bsize, self.chunk_size, self.model_action_dim, device=device)
            t1 = torch.ones(bsize, device=device)
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.detach_value_features):
                features = self.velocity(context, x0, t1)[1].float().mean(dim=1)
        context.value_cache = features
        return features

    def batch_size(self, context: VLAContext) -> int:
        return int(context.prefix_pad_masks.shape[0])

    def flow_matching_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        loss, info = self.policy.forward(batch)
        return loss, {k: float(v) for k, v in info.items() if isinstance(v, (int, float))}

    def rl_trainable_parameters(self) -> list[nn.Parameter]:
        """The action expert and its projections (plus the VLM when `freeze_vlm=False`)."""
        return [p for p in self.parameters() if p.requires_grad]

    @property
    def token_dim(self) -> int:  # type: ignore[override]
        return int(self._action_out_proj().in_features)

    @property
    def value_feature_dim(self) -> int:  # type: ignore[override]
        if self.value_source == "prefix_state":
            return self.vlm_width + int(self.policy.config.max_state_dim)
        return self.vlm_width if self.value_source == "prefix" else self.token_dim

    @property
    @abc.abstractmethod
    def vlm_width(self) -> int: ...
