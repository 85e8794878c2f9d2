"""`PiRLPolicy`: a flow-matching policy whose denoising chain can be sampled stochastically and scored.

Two verbs serve RL:
  * `sample_chain(batch)`          actor side, no grad: the action chunk, the `ChainRecord` (chain x_{t_0..t_K},
                                   which steps were stochastic, noise level), behaviour log-prob, value.
  * `evaluate_chain(batch, record)` learner side, with grad: log-prob of a recorded chain, entropy, value.
Deployment (`select_action`, `predict_action_chunk`) integrates the plain ODE; the noise head is not used.

Time convention: t = 1 noise, t = 0 action. Chains and log-probs live in the backbone's normalized (and, for
VLAs, padded) action space; log-probs count only executed elements (first C steps, real action dims).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from functools import partial

import torch
from safetensors.torch import load_model as load_model_as_safetensor
from torch import Tensor

from lerobot.policies.pretrained import PreTrainedPolicy
from lerobot.utils.device_utils import resolve_safetensors_device

from .backbones import FlowBackbone, make_backbone
from .configuration_pi_rl import PiRLConfig
from .exploration import ChainRecord, Exploration, make_exploration
from .flow import reduce_log_prob, time_grid
from .heads import ValueHead

logger = logging.getLogger(__name__)


@dataclass
class ChainSample:
    """What the actor records for one decision."""

    #: Full predicted chunk `[B, H, A_env]` in normalized action space (the chain's last element, unpadded).
    action_chunk: Tensor
    #: What the learner needs to score the chain again (chain, stochastic steps, noise level).
    record: ChainRecord
    #: Behaviour log-prob at `config.log_prob_level`: `[B]`, `[B, C]` or `[B, C, A_env]`.
    log_prob: Tensor
    #: V(o) `[B]`.
    value: Tensor


@dataclass
class ChainEvaluation:
    """Learner-side scores of recorded chains (with gradients)."""

    #: Log-prob at `config.log_prob_level`, float32.
    log_prob: Tensor
    #: Mean Gaussian entropy per sample over stochastic executed elements `[B]` (0 where none).
    entropy: Tensor
    #: V(o) `[B]`.
    value: Tensor
    #: Mean transition std per sample over stochastic executed elements `[B]` (diagnostics).
    std_mean: Tensor
    #: Gaussian log-density terms summed into each `log_prob` entry (same shape, float32): stochastic transitions
    #: (plus Flow-Noise's prior) times executed elements. The ratio guard compares |log ratio| per term.
    terms: Tensor


class PiRLPolicy(PreTrainedPolicy):
    config_class = PiRLConfig
    name = "pi_rl"

    def __init__(self, config: PiRLConfig, **kwargs):
        # `make_policy` passes dataset_stats / dataset_meta; normalization lives in the processors.
        super().__init__(config)
        config.validate_features()
        self.config = config
        self.backbone: FlowBackbone = make_backbone(config)
        if self.backbone.chunk_size != config.chunk_size:
            raise ValueError(
                f"chunk_size={config.chunk_size} but the {config.backbone.type} backbone predicts "
                f"{self.backbone.chunk_size} steps; set --policy.chunk_size={self.backbone.chunk_size}"
            )
        self.exploration: Exploration = make_exploration(
            config.variant,
            num_steps=config.num_denoise_steps,
            token_dim=self.backbone.token_dim,
            action_dim=self.backbone.model_action_dim,
        )
        # The variant's learned head (Flow-Noise's std head) is a submodule of the policy: state-dict prefix
        # `noise_head.`, moved, trained and saved with the other weights. None for variants without one.
        self.noise_head = self.exploration.noise_head
        self.value_head = ValueHead(self.backbone.value_feature_dim, config.value_head.hidden_dims)
        # Noise level of new samples (Flow-SDE's `a`, annealed by the algorithm; 0 for Flow-Noise); a buffer so
        # that it travels with the weights to the actors and into checkpoints.
        self.register_buffer(
            "sde_noise_level", torch.tensor(float(self.exploration.noise_level_at(0))), persistent=True
        )
        self.reset()

    # ----------------------------------------------------------------------------------------------------------
    # LeRobot policy contract
    # ----------------------------------------------------------------------------------------------------------

    @classmethod
    def _load_as_safetensor(cls, model, model_file: str, map_location: str, strict: bool):
        # A pi_rl checkpoint must load completely, whatever `strict` says: a silently missing head would train from
        # random weights. The one exception is the noise head of another exploration variant's checkpoint (an RL
        # run of Flow-Noise started from a Flow-SDE SFT checkpoint, or the reverse), settled explicitly below.
        try:
            missing, unexpected = load_model_as_safetensor(
                model, model_file, strict=False, device=resolve_safetensors_device(map_location)
            )
        except RuntimeError as err:
            if "size mismatch for value_head." in str(err):
                # The critic's input width follows `value_head.feature_source` and its layers `hidden_dims`: a run
                # that changes them on top of a checkpoint (e.g. an RL run over an SFT checkpoint) gets this.
                raise RuntimeError(
                    f"{model_file}: its value head has other shapes than this config's value_head "
                    f"(feature_source={model.config.value_head.feature_source!r}, "
                    f"hidden_dims={model.config.value_head.hidden_dims}); use the checkpoint's value_head settings, "
                    "or set them already for the run that wrote the checkpoint (e.g. the SFT run)"
                ) from err
            raise
        missing, unexpected = model._settle_noise_head(missing, unexpected, model_file)
        problems = []
        if missing:
            problems.append(f"Missing key(s): {missing}")
        if unexpected:
            problems.append(f"Unexpected key(s): {unexpected}")
        if problems:
            raise RuntimeError(f"Error(s) in loading {model_file} into {cls.__name__}: {'; '.join(problems)}")
        return model

    def _settle_noise_head(self, missing: list[str], unexpected: list[str], source: str) -> tuple[list, list]:
        """Initialize a noise head the checkpoint has none of, drop one this variant does not use; both with a
        warning. A head the checkpoint has in part stays an error (returned as missing)."""
        prefix = "noise_head."
        own = [k for k in self.state_dict() if k.startswith(prefix)]
        absent = [k for k in missing if k.startswith(prefix)]
        if own and set(absent) == set(own):
            self.noise_head.reset_parameters()
            logger.warning(
                "%s has no noise_head (a checkpoint of another exploration variant): the %s noise_head is "
                "initialized fresh (%d tensors: %s)", source, self.config.variant.type, len(own), ", ".join(own),
            )
            missing = [k for k in missing if not k.startswith(prefix)]
        unused = [k for k in unexpected if k.startswith(prefix)]
        if unused and not own:
            logger.warning(
                "%s carries a noise_head the %s variant does not use: ignored (%d tensors)",
                source, self.config.variant.type, len(unused),
            )
            unexpected = [k for k in unexpected if not k.startswith(prefix)]
        return missing, unexpected

    def get_optim_params(self) -> dict:
        return self.parameters()

    def reset(self) -> None:
        """Drop queued actions; call at every episode start and after loading new weights."""
        self._action_queue: deque[Tensor] = deque(maxlen=self.config.n_action_steps)

    def forward(self, batch: dict[str, Tensor], reduction: str = "mean") -> tuple[Tensor, dict]:
        """Supervised flow-matching loss (SFT), the backbone's own loss."""
        if reduction != "mean":
            raise ValueError(f"pi_rl forward supports reduction='mean' only, got {reduction!r}")
        loss, info = self.backbone.flow_matching_loss(batch)
        return loss, info

    @torch.no_grad()
    def predict_action_chunk(self, batch: dict[str, Tensor], **kwargs) -> Tensor:
        """`[B, H, A_env]` normalized action chunk: the deterministic ODE unless `stochastic_inference`.

        Runs in the module's current mode: deployment callers put the policy in eval mode themselves (LeRobot's
        `from_pretrained`, the actor, the evaluation script do), and a learner that samples between updates must
        find its policy still in train mode afterwards.
        """
        if self.config.stochastic_inference:
            return self.sample_chain(batch).action_chunk
        context = self.backbone.encode(batch)
        x = self._initial_noise(self.backbone.batch_size(context), None)
        times = time_grid(self.num_steps, device=x.device)
        dt = 1.0 / self.num_steps
        for k in range(self.num_steps):
            v, _ = self.backbone.velocity(context, x, times[k].expand(x.shape[0]))
            x = x - dt * v
        return x[:, :, : self.config.action_dim]

    @torch.no_grad()
    def select_action(self, batch: dict[str, Tensor], **kwargs) -> Tensor:
        """One action `[B, A_env]`, refilling the queue with the first C actions of a new chunk when empty."""
        if len(self._action_queue) == 0:
            chunk = self.predict_action_chunk(batch)[:, : self.config.n_action_steps]
            self._action_queue.extend(chunk.transpose(0, 1))
        return self._action_queue.popleft()

    # ----------------------------------------------------------------------------------------------------------
    # RL verbs
    # ----------------------------------------------------------------------------------------------------------

    @property
    def num_steps(self) -> int:
        return self.config.num_denoise_steps

    def _initial_noise(self, batch: int, generator: torch.Generator | None) -> Tensor:
        device = self.sde_noise_level.device  # where the policy lives (a buffer: cheaper than walking parameters)
        shape = (batch, self.backbone.chunk_size, self.backbone.model_action_dim)
        return torch.randn(shape, generator=generator, device=device, dtype=torch.float32)

    def _reduce(self, element_log_prob: Tensor) -> Tensor:
        return reduce_log_prob(
            element_log_prob,
            n_action_steps=self.config.n_action_steps,
            action_dim=self.config.action_dim,
            level=self.config.log_prob_level,
        )

    def _value(self, context) -> Tensor:
        features = self.backbone.value_features(context)
        if self.config.value_head.detach_features:
            features = features.detach()
        return self.value_head(features)

    @torch.no_grad()
    def sample_chain(self, batch: dict[str, Tensor], *, generator: torch.Generator | None = None) -> ChainSample:
        """Sample one stochastic chain per observation and record what PPO needs (no gradients)."""
        # Read the level once, first (before any device work is queued): it is what the samples record, so
        # annealing the buffer later changes nothing about them.
        noise_level = float(self.sde_noise_level)
        context = self.backbone.encode(batch)
        noise = self._initial_noise(self.backbone.batch_size(context), generator)
        sampled = self.exploration.sample(
            partial(self.backbone.velocity, context), noise, noise_level=noise_level, generator=generator
        )
        return ChainSample(
            action_chunk=sampled.record.chain[:, -1, :, : self.config.action_dim],
            record=sampled.record,
            log_prob=self._reduce(sampled.element_log_prob),
            value=self._value(context),
        )

    def evaluate_chain(self, batch: dict[str, Tensor], record: ChainRecord) -> ChainEvaluation:
        """Score recorded chains under the current weights, with gradients.

        Args:
            batch: preprocessed observations the chains were sampled for.
            record: the `ChainRecord` of `sample_chain` (its noise level is the one each chain was sampled with).
        """
        expected = (self.num_steps + 1, self.backbone.chunk_size, self.backbone.model_action_dim)
        if tuple(record.chain.shape[1:]) != expected:
            raise ValueError(
                f"chain has shape {tuple(record.chain.shape)}, expected [B, {', '.join(map(str, expected))}]"
            )
        context = self.backbone.encode(batch)
        scored = self.exploration.score(partial(self.backbone.velocity, context), record)
        stats = self.exploration.std_statistics(
            scored.std, n_action_steps=self.config.n_action_steps, action_dim=self.config.action_dim
        )
        # Gaussian terms summed into each log-prob entry: the same reduction applied to the per-element counts.
        per_element = self.exploration.terms_per_element(record).to(scored.element_log_prob.device)
        terms = self._reduce(per_element.view(-1, 1, 1).expand_as(scored.element_log_prob))
        return ChainEvaluation(
            log_prob=self._reduce(scored.element_log_prob),
            entropy=stats.entropy,
            value=self._value(context),
            std_mean=stats.std_mean,
            terms=terms,
        )

    def value(self, batch: dict[str, Tensor]) -> Tensor:
        """V(o) `[B]` for preprocessed observations (bootstrap values on the learner)."""
        return self._value(self.backbone.encode(batch))

    def set_noise_level(self, level: float) -> None:
        """Set the noise level of new samples (Flow-SDE's `a`)."""
        self.sde_noise_level.fill_(float(level))

    def apply_exploration_schedule(self, num_updates: int) -> None:
        """Set the noise level of new samples to the variant's schedule after `num_updates` policy updates."""
        self.set_noise_level(self.exploration.noise_level_at(num_updates))

    def rl_parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        """Trainable parameters by role: `actor` (backbone action path), `noise_head`, `critic`."""
        groups = {
            "actor": [p for p in self.backbone.rl_trainable_parameters() if p.requires_grad],
            "critic": [p for p in self.value_head.parameters() if p.requires_grad],
        }
        if self.noise_head is not None:
            groups["noise_head"] = [p for p in self.noise_head.parameters() if p.requires_grad]
        return groups
