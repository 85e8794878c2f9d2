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

import torch
from safetensors.torch import load_model as load_model_as_safetensor
from torch import Tensor

from lerobot.policies.pretrained import PreTrainedPolicy
from lerobot.utils.device_utils import resolve_safetensors_device
from lerobot.utils.constants import ACTION

from .backbones import FlowBackbone, make_backbone
from .configuration_pi_rl import FlowNoiseConfig, FlowSDEConfig, PiRLConfig
from .exploration import ChainRecord
from .flow import (
    chain_log_prob,
    chain_step_log_probs,
    flow_sde_coefficient_table,
    flow_sde_coefficients,
    gaussian_entropy,
    gaussian_scale_terms,
    linear_chain_log_probs,
    one_step_chain_log_prob,
    reduce_log_prob,
    sample_chain,
    sample_linear_chain,
    score_transition,
    time_grid,
)
from .heads import NoiseHead, ValueHead

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


@dataclass(frozen=True)
class _FlowSDEPlan:
    """What a Flow-SDE `sample_chain` call needs that depends only on (K, mode, a, device, B), computed once.

    Never a view of `sde_noise_level`: it is built from the level's value, which is also its cache key.
    """

    #: t_k `[B]` per step (views of one grid).
    step_times: tuple[Tensor, ...]
    #: `[R, 3K + 2S, 1, 1]`, one row per chain pattern (hybrid: R = K, row j has its SDE step at j, S = 1;
    #: full SDE: R = 1, S = K): x_coef_k, v_coef_k, std_k of every step (sampling), then safe_std and
    #: log_normalizer (`gaussian_scale_terms`) of its S stochastic steps (scoring).
    table: Tensor


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
        variant = config.variant
        self.noise_head: NoiseHead | None = None
        if isinstance(variant, FlowNoiseConfig):
            self.noise_head = NoiseHead(
                self.backbone.token_dim,
                self.backbone.model_action_dim,
                variant.noise_head_hidden_dims,
                min_std=variant.min_std,
                max_std=variant.max_std,
            )
        self.value_head = ValueHead(self.backbone.value_feature_dim, config.value_head.hidden_dims)
        # Current Flow-SDE noise level (annealed by the algorithm); a buffer so it travels with the weights.
        level = variant.noise_level if isinstance(variant, FlowSDEConfig) else 0.0
        self.register_buffer("sde_noise_level", torch.tensor(float(level)), persistent=True)
        self._sde_plans: dict[tuple, _FlowSDEPlan] = {}
        self.reset()

    # ----------------------------------------------------------------------------------------------------------
    # LeRobot policy contract
    # ----------------------------------------------------------------------------------------------------------

    @classmethod
    def _load_as_safetensor(cls, model, model_file: str, map_location: str, strict: bool):
        # A pi_rl checkpoint must load completely, whatever `strict` says: a silently missing head would train from
        # random weights. The one exception is the noise head of another exploration variant's checkpoint (an RL
        # run of Flow-Noise started from a Flow-SDE SFT checkpoint, or the reverse), settled explicitly below.
        missing, unexpected = load_model_as_safetensor(
            model, model_file, strict=False, device=resolve_safetensors_device(map_location)
        )
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
        if own and sorted(absent) == sorted(own):
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
        times = self._times(x.device)
        dt = 1.0 / self.config.num_denoise_steps
        for k in range(self.config.num_denoise_steps):
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

    def _times(self, device: torch.device) -> Tensor:
        return time_grid(self.num_steps, device=device)

    def _initial_noise(self, batch: int, generator: torch.Generator | None) -> Tensor:
        device = next(self.parameters()).device
        shape = (batch, self.backbone.chunk_size, self.backbone.model_action_dim)
        return torch.randn(shape, generator=generator, device=device, dtype=torch.float32)

    def _step_fn(self, context, noise_level: Tensor):
        """The Gaussian transition x_t -> x_{t-dt} of this policy's variant (see `flow.chain`).

        Chains are float32; the per-sample (t, a) coefficients of Flow-SDE are tiny `[B, 1, 1]` tensors.
        """
        dt = 1.0 / self.num_steps
        variant = self.config.variant
        level = noise_level.view(-1, 1, 1)

        def step(x: Tensor, t: Tensor, stochastic: Tensor) -> tuple[Tensor, Tensor]:
            v, hidden = self.backbone.velocity(context, x, t)
            ode_mean = x - dt * v
            if not bool(stochastic.any()):  # an ODE step for every sample: no noise, std exactly 0
                return ode_mean, torch.zeros_like(ode_mean)
            if isinstance(variant, FlowSDEConfig):
                x_coef, v_coef, std = flow_sde_coefficients(t.view(-1, 1, 1), dt=dt, noise_level=level)
                mean_s, std_s = x_coef * x + v_coef * v, std.expand_as(ode_mean)
            else:
                assert self.noise_head is not None
                mean_s, std_s = ode_mean, self.noise_head(hidden)
            if bool(stochastic.all()):
                return mean_s, std_s
            on = stochastic.view(-1, 1, 1)
            return torch.where(on, mean_s, ode_mean), torch.where(on, std_s, torch.zeros_like(std_s))

        return step

    def _reduce(self, element_log_prob: Tensor) -> Tensor:
        return reduce_log_prob(
            element_log_prob,
            n_action_steps=self.config.n_action_steps,
            action_dim=self.config.action_dim,
            level=self.config.log_prob_level,
        )

    def _executed_mean(self, values: Tensor, stochastic_elems: Tensor) -> Tensor:
        """Mean of `values [B, ..., H, A]` over executed, stochastic elements -> `[B]` (0 where none)."""
        c, a = self.config.n_action_steps, self.config.action_dim
        values = values[..., :c, :a].float()
        mask = stochastic_elems[..., :c, :a].float()
        dims = tuple(range(1, values.dim()))
        return (values * mask).sum(dim=dims) / mask.sum(dim=dims).clamp_min(1.0)

    def _value(self, context) -> Tensor:
        features = self.backbone.value_features(context)
        if self.config.value_head.detach_features:
            features = features.detach()
        return self.value_head(features)

    @torch.no_grad()
    def sample_chain(self, batch: dict[str, Tensor], *, generator: torch.Generator | None = None) -> ChainSample:
        """Sample one stochastic chain per observation and record what PPO needs (no gradients)."""
        if isinstance(self.config.variant, FlowSDEConfig):
            return self._sample_flow_sde(batch, generator)
        # Flow-Noise: every step is stochastic, with the noise head's std.
        context = self.backbone.encode(batch)
        bsize = self.backbone.batch_size(context)
        noise = self._initial_noise(bsize, generator)
        device = noise.device
        stochastic = torch.ones(bsize, self.num_steps, dtype=torch.bool, device=device)
        noise_level = torch.zeros(bsize, device=device)
        chain, step_log_probs, _ = sample_chain(
            self._step_fn(context, noise_level),
            noise,
            times=self._times(device),
            stochastic=stochastic,
            generator=generator,
        )
        element_lp = self._element_log_prob(step_log_probs, chain)
        return ChainSample(
            action_chunk=chain[:, -1, :, : self.config.action_dim],
            record=ChainRecord(chain, stochastic, noise_level),
            log_prob=self._reduce(element_lp),
            value=self._value(context),
        )

    def _sample_flow_sde(self, batch: dict[str, Tensor], generator: torch.Generator | None) -> ChainSample:
        """Flow-SDE `sample_chain`: a linear recursion over cached per-sample coefficient tables.

        The actor's hot path, built from few small tensor ops (on CPU each costs about as much as its
        arithmetic): per step one velocity pass and four ops, no branching or coefficient arithmetic; the
        log-prob without gathers or masking (ODE steps contribute exactly 0). The arithmetic is the learner's
        (`evaluate_chain`), so re-scoring a fresh chain reproduces its log-prob bit for bit.
        """
        # Read the level once, first (before any device work is queued): its value keys the cached tables and
        # is what the sample records, so annealing the buffer later changes neither.
        level = float(self.sde_noise_level)
        context = self.backbone.encode(batch)
        bsize = self.backbone.batch_size(context)
        noise = self._initial_noise(bsize, generator)
        device = noise.device
        plan = self._flow_sde_plan(level, bsize, device)
        k = self.num_steps
        hybrid = self.config.variant.stochastic_steps == "hybrid"
        if hybrid:
            high = k - 1 if self.config.variant.exclude_last_step else k
            step_index = torch.randint(0, high, (bsize,), generator=generator, device="cpu")
            if device.type != "cpu":
                step_index = step_index.to(device)
            rows = plan.table[step_index]  # [B, 3K + 2, 1, 1]
            # One draw serves every step: each sample has a non-zero std at its step j only.
            eps = (torch.randn(noise.shape, generator=generator, device=device, dtype=torch.float32),) * k
        else:
            rows = plan.table  # [1, 5K, 1, 1], the same for every sample
            eps = torch.randn((bsize, k, *noise.shape[1:]), generator=generator, device=device).unbind(1)
        cols = rows.unbind(1)  # each [B or 1, 1, 1]
        chain, means = sample_linear_chain(
            lambda x, t: self.backbone.velocity(context, x, t)[0],
            noise,
            step_times=plan.step_times,
            x_coef=cols[:k],
            v_coef=cols[k : 2 * k],
            std=cols[2 * k : 3 * k],
            eps=eps,
        )
        if hybrid:
            element_lp = one_step_chain_log_prob(chain, means, safe_std=cols[3 * k], log_normalizer=cols[3 * k + 1])
            stochastic = torch.nn.functional.one_hot(step_index, k).bool()
        else:
            stochastic = torch.ones(bsize, k, dtype=torch.bool, device=device)
            scale_terms = {"safe_std": rows[:, 3 * k : 4 * k], "log_normalizer": rows[:, 4 * k :]}  # [1, K, 1, 1]
            element_lp = chain_log_prob(linear_chain_log_probs(chain, means, **scale_terms), reduction="sum")
        noise_level = torch.full((bsize,), level, dtype=torch.float32, device=device)
        return ChainSample(
            action_chunk=chain[:, -1, :, : self.config.action_dim],
            record=ChainRecord(chain, stochastic, noise_level),
            log_prob=self._reduce(element_lp),
            value=self._value(context),
        )

    def _flow_sde_plan(self, level: float, bsize: int, device: torch.device) -> _FlowSDEPlan:
        """The cached `_FlowSDEPlan` for the current config, noise level `level`, batch and device."""
        k, hybrid = self.num_steps, self.config.variant.stochastic_steps == "hybrid"
        key = (k, hybrid, level, bsize, device)
        plan = self._sde_plans.get(key)
        if plan is None:
            times = self._times(device)
            # Chain patterns: hybrid row j has its SDE step at j; a full-SDE chain has one row, all SDE steps.
            patterns = torch.eye(k, dtype=torch.bool) if hybrid else torch.ones(1, k, dtype=torch.bool)
            x_coef, v_coef, std = flow_sde_coefficient_table(times, patterns, noise_level=level)  # [R, K]
            safe_std, log_normalizer = gaussian_scale_terms(std)
            if hybrid:  # row j is scored at its step j only
                safe_std, log_normalizer = safe_std.diagonal()[:, None], log_normalizer.diagonal()[:, None]
            table = torch.cat([x_coef, v_coef, std, safe_std, log_normalizer], dim=1)[..., None, None]
            plan = _FlowSDEPlan(step_times=tuple(t.expand(bsize) for t in times[:-1].unbind(0)), table=table)
            if len(self._sde_plans) >= 8:  # levels anneal: keep only a few
                self._sde_plans.clear()
            self._sde_plans[key] = plan
        return plan

    def _element_log_prob(self, step_log_probs: Tensor, chain: Tensor) -> Tensor:
        """Per-element chain log-prob `[B, H, A]` from per-step terms `[B, K, H, A]` (variant's reduction)."""
        variant = self.config.variant
        if isinstance(variant, FlowNoiseConfig):
            return chain_log_prob(step_log_probs, initial_noise=chain[:, 0], reduction=variant.log_prob_reduction)
        return chain_log_prob(step_log_probs, reduction="sum")

    def evaluate_chain(self, batch: dict[str, Tensor], record: ChainRecord) -> ChainEvaluation:
        """Score recorded chains under the current weights, with gradients.

        Args:
            batch: preprocessed observations the chains were sampled for.
            record: the `ChainRecord` of `sample_chain` (its noise level is the one each chain was sampled with).
        """
        chain = record.chain
        expected = (self.num_steps + 1, self.backbone.chunk_size, self.backbone.model_action_dim)
        if tuple(chain.shape[1:]) != expected:
            raise ValueError(f"chain has shape {tuple(chain.shape)}, expected [B, {', '.join(map(str, expected))}]")
        context = self.backbone.encode(batch)
        bsize = chain.shape[0]
        chain = chain.float()
        device = chain.device
        stochastic = record.stochastic.to(device)
        variant = self.config.variant
        if isinstance(variant, FlowSDEConfig):
            noise_level = record.noise_level.float().to(device)
        else:
            noise_level = torch.zeros(bsize, device=device)
        step_fn = self._step_fn(context, noise_level)
        times = self._times(device)
        if isinstance(variant, FlowSDEConfig) and variant.stochastic_steps == "hybrid":
            counts = stochastic.sum(dim=1)
            if bool((counts != 1).any()):
                raise ValueError(f"hybrid Flow-SDE chains have one stochastic step each; got counts {counts.tolist()}")
            step_index = stochastic.float().argmax(dim=1)
            rows = torch.arange(bsize, device=device)
            on = torch.ones(bsize, dtype=torch.bool, device=device)
            tr = score_transition(step_fn, chain[rows, step_index], chain[rows, step_index + 1], times[step_index], on)
            element_lp, stds = tr.log_prob, tr.std.unsqueeze(1)
        else:
            tr = chain_step_log_probs(step_fn, chain, times=times, stochastic=stochastic)
            element_lp, stds = self._element_log_prob(tr.log_prob, chain), tr.std
        stochastic_elems = stds > 0
        return ChainEvaluation(
            log_prob=self._reduce(element_lp),
            entropy=self._executed_mean(gaussian_entropy(stds), stochastic_elems),
            value=self._value(context),
            std_mean=self._executed_mean(stds, stochastic_elems).detach(),
        )

    def value(self, batch: dict[str, Tensor]) -> Tensor:
        """V(o) `[B]` for preprocessed observations (bootstrap values on the learner)."""
        return self._value(self.backbone.encode(batch))

    def set_noise_level(self, level: float) -> None:
        """Set the Flow-SDE noise level used for new samples (annealing)."""
        self.sde_noise_level.fill_(float(level))

    def rl_parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        """Trainable parameters by role: `actor` (backbone action path), `noise_head`, `critic`."""
        groups = {
            "actor": [p for p in self.backbone.rl_trainable_parameters() if p.requires_grad],
            "critic": [p for p in self.value_head.parameters() if p.requires_grad],
        }
        if self.noise_head is not None:
            groups["noise_head"] = [p for p in self.noise_head.parameters() if p.requires_grad]
        return groups
