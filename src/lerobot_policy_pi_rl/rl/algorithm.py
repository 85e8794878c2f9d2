"""PI-RL as a LeRobot `RLAlgorithm`: chunk-level PPO on the denoising chain's log-likelihood.

One `update_rollout` is one PPO update, read as the algorithm:
    drop stale rows (`fresh`, the one staleness rule)  ->  bootstrap values  ->
    advantages (GAE per stream, or GRPO)  ->  mask rows with a non-finite reward, value, log-prob or advantage  ->
    [ratio guard on the first minibatch]  ->  update_epochs x shuffled minibatches of
    (evaluate chain -> clipped surrogate + clipped Huber value loss - entropy bonus [+ offline flow-matching loss]
    -> finite? -> clip -> step)
    ->  policy_version += 1 (when an actor step was taken), anneal the Flow-SDE noise level.
With `config.offline.ratio > 0` and an `offline` source attached, each minibatch also draws offline rows
(`mixing.offline_rows`) and adds the backbone's SFT loss on them, weighted, to the same step (`mixing.py`).
It returns an `UpdateResult`: what the update did (steps taken and skipped, whether the version moved), typed, for
the runtime's control flow, beside the `TrainingStats` for logging.
`update_rollout` is `prepare_update` (everything up to the epochs, computed once over the whole rollout) then
`apply_update` (the epochs). A data-parallel learner prepares on rank 0 and every rank applies its share of each
global minibatch (`data_parallel.py`); in a single process the shares are whole minibatches.

Sharded frozen weights. When a data-parallel learner shards the frozen VLM over its ranks, each frozen forward
(`backbone.encode`) gathers the layers from every rank, so every rank must run it as often as the others: rank 0
then shares the raw rollout and every rank prepares it (the same rows through the same weights: bootstrap values,
proximal log-probs), and a rank that holds no row of a minibatch encodes one row of it and discards the result.
Formulas: docs/concepts.md. Log-probs, ratios and advantages are float32 throughout.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from lerobot.rl.algorithms.base import RLAlgorithm
from lerobot.rl.algorithms.configs import TrainingStats

from .config import GRPOConfig, PiRLAlgorithmConfig
from .data_parallel import SINGLE_PROCESS, DataParallel, share_weight
from .gae import stream_gae
from .grpo import grpo_advantages, normalize_advantages
from .mixing import OfflineBatches, offline_rows
from .ppo_loss import explained_variance, ppo_policy_loss, value_loss
from .rollout import Rollout

logger = logging.getLogger(__name__)


#: Key of the frozen-weights fingerprint in published weights (`frozen_fingerprint`).
FROZEN_FINGERPRINT_KEY = "frozen_fingerprint"
#: Elements of each frozen tensor the fingerprint reads, evenly spaced over the flattened tensor.
FINGERPRINT_SAMPLES = 64


def frozen_fingerprint(named: dict[str, Tensor], samples: int = FINGERPRINT_SAMPLES) -> str:
    """A short hex digest of the weights an actor does not receive: each tensor's name, shape and `samples` evenly
    spaced elements (as float32), in name order. Independent of device and of the process; two random
    initialisations or two different checkpoints differ in it with near certainty, while reading a few hundred
    numbers per tensor costs nothing even for a π0-size VLM."""
    digest = hashlib.blake2b(digest_size=8)
    for name in sorted(named):
        flat = named[name].detach().reshape(-1)
        index = torch.linspace(0, max(flat.numel() - 1, 0), min(samples, flat.numel())).round().long()
        digest.update(f"{name}{tuple(named[name].shape)}".encode())
        digest.update(flat[index.to(flat.device)].float().cpu().numpy().tobytes())
    return digest.hexdigest()


class FrozenWeightsMismatchError(ValueError):
    """An actor's frozen weights (not published; each process loads or initialises them) differ from the
    learner's: its chains would be scored by another policy."""


class RatioMismatchError(RuntimeError):
    """The learner scores recorded chains differently from how the actor sampled them."""


def _finite(*tensors: Tensor) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


@dataclass
class UpdateResult:
    """What one `PiRLAlgorithm.update_rollout` did."""

    #: Losses, gradient norms and diagnostics, for logging only (LeRobot's `update()` returns these).
    stats: TrainingStats
    #: Optimizer steps applied.
    steps_taken: int
    #: Minibatches whose step was skipped for a non-finite log-prob, value, loss or gradient.
    steps_skipped: int
    #: The policy version advanced (an actor step was taken: not during critic warm-up).
    version_moved: bool

    @property
    def weights_changed(self) -> bool:
        """Some parameters moved (actors need the new weights); False when every step was skipped."""
        return self.steps_taken > 0


@dataclass
class _MinibatchPart:
    """One rank's part of a minibatch loss (`PiRLAlgorithm._minibatch_loss`)."""

    #: The share-weighted loss to backpropagate; None for a rank with no rows of this minibatch.
    loss: Tensor | None
    #: Share-weighted, detached: policy, value, entropy losses, approx KL, clip fraction, ratio mean, std mean.
    sums: list[Tensor]
    #: Tensors that must be finite for the step to be taken (besides the loss).
    checked: tuple[Tensor, ...]
    ratio_max: float = 0.0
    #: The ratio guard's worst |log ratio| per term on this rank (0 when not checked), and whether it is off.
    ratio_worst: float = 0.0
    ratio_unchecked: bool = False


@dataclass
class PreparedUpdate:
    """One update's fresh rows with what is computed once over all of them: the input of the PPO epochs, shared as
    is with every rank of a data-parallel learner (`DataParallel.share`)."""

    rollout: Rollout
    #: Normalized (when configured) advantages `[N]` float32.
    advantages: Tensor
    #: Value targets `[N]` float32.
    returns: Tensor
    #: Log-prob the PPO ratio divides by (the proximal policy's for stale rows), shaped like `rollout.log_prob`.
    old_log_prob: Tensor
    #: Decoupled-PPO weight pi_prox / pi_behaviour per row `[N]` (1 for rows of the current version).
    behaviour_weight: Tensor
    #: Rows in the policy loss `[N]` bool (usable, finite, not an intervention when those are masked).
    ratio_mask: Tensor
    #: Rows with a usable advantage and finite numbers `[N]` bool (the value loss's rows).
    keep: Tensor
    #: Rows whose recorded numbers and targets are finite `[N]` bool.
    finite: Tensor
    #: Critic warm-up: only the critic steps.
    warmup: bool
    #: Rows dropped by the staleness rule before anything else.
    dropped_stale: int

    def __len__(self) -> int:
        return len(self.rollout)

    def to(self, device: torch.device | str) -> PreparedUpdate:
        tensors = {f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)
                   if isinstance(getattr(self, f.name), (Tensor, Rollout))}
        return dataclasses.replace(self, **tensors)


class PiRLAlgorithm(RLAlgorithm):
    config_class = PiRLAlgorithmConfig
    name = "pi_rl"

    def __init__(self, policy: torch.nn.Module, config: PiRLAlgorithmConfig):
        from ..modeling_pi_rl import PiRLPolicy

        if not isinstance(policy, PiRLPolicy):
            raise TypeError(f"PiRLAlgorithm trains a PiRLPolicy, got {type(policy).__name__}")
        self.policy = policy
        self.config = config
        self.optimizers: dict[str, Optimizer] = {}
        self._policy_version = 0
        self._num_updates = 0
        self._optimization_step = 0
        # Offline rows for the mixed flow-matching term (`config.offline`); the runtime attaches its source.
        self.offline: OfflineBatches | None = None
        # The ranks an update is shared out over; a data-parallel learner attaches its own (`data_parallel.py`).
        self.data_parallel: DataParallel = SINGLE_PROCESS
        self._frozen_fingerprint: str | None = None

    # ----------------------------------------------------------------------------------------------------------
    # Counters and optimizers
    # ----------------------------------------------------------------------------------------------------------

    @property
    def policy_version(self) -> int:
        """Version of the current weights: 0 at start, +1 after every update that stepped the optimizers."""
        return self._policy_version

    @property
    def num_updates(self) -> int:
        return self._num_updates

    def make_optimizers_and_scheduler(self) -> dict[str, Optimizer]:
        cfg = self.config
        lrs = {"actor": cfg.actor_lr, "critic": cfg.critic_lr, "noise_head": cfg.noise_head_lr or cfg.actor_lr}
        self.optimizers = {
            role: torch.optim.AdamW(params, lr=lrs[role], betas=tuple(cfg.adam_betas), weight_decay=cfg.weight_decay)
            for role, params in self.policy.rl_parameter_groups().items()
            if params
        }
        if "actor" not in self.optimizers:
            raise ValueError("the policy exposes no trainable actor parameters (is everything frozen?)")
        return self.optimizers

    def get_optimizers(self) -> dict[str, Optimizer]:
        return self.optimizers

    # ----------------------------------------------------------------------------------------------------------
    # Weights for actors, algorithm state for checkpoints
    # ----------------------------------------------------------------------------------------------------------

    def _actor_state_keys(self) -> list[str]:
        trainable = {name for name, p in self.policy.named_parameters() if p.requires_grad}
        buffers = {name for name, _ in self.policy.named_buffers()}
        return [k for k in self.policy.state_dict() if k in trainable or k in buffers]

    def frozen_fingerprint(self) -> str:
        """`frozen_fingerprint` of the policy's state outside `_actor_state_keys` (the frozen VLM), computed once:
        frozen weights never change during a run. A sharded learner computes it before sharding (`setup_ranks`)."""
        if self._frozen_fingerprint is None:
            keep = set(self._actor_state_keys())
            self._frozen_fingerprint = frozen_fingerprint(
                {k: v for k, v in self.policy.state_dict().items() if k not in keep})
        return self._frozen_fingerprint

    def get_weights(self) -> dict[str, Any]:
        """What an actor needs: trainable tensors and buffers of the policy (not frozen VLM weights), versioned,
        with the fingerprint of the frozen weights the actor must already hold."""
        state = self.policy.state_dict()
        return {
            "policy_version": self._policy_version,
            "state_dict": {k: state[k].detach().cpu().clone() for k in self._actor_state_keys()},
            FROZEN_FINGERPRINT_KEY: self.frozen_fingerprint(),
        }

    def load_weights(self, weights: dict[str, Any], device: str | torch.device = "cpu") -> None:
        """Actor side: load published weights into the policy and record their version."""
        if "state_dict" not in weights or "policy_version" not in weights:
            raise ValueError(f"weights must carry 'state_dict' and 'policy_version', got keys {sorted(weights)}")
        theirs = weights.get(FROZEN_FINGERPRINT_KEY)
        if theirs is not None and theirs != self.frozen_fingerprint():
            raise FrozenWeightsMismatchError(
                f"the learner's frozen weights (fingerprint {theirs}) differ from this actor's "
                f"({self.frozen_fingerprint()}); only trainable weights are published, so both must load the frozen "
                "VLM from the same policy.pretrained_path / backbone.pretrained_path (or build it from the same seed)")
        own = self.policy.state_dict()
        unknown = sorted(set(weights["state_dict"]) - set(own))
        if unknown:
            raise ValueError(f"weights contain keys this policy does not have: {unknown[:5]}")
        with torch.no_grad():
            for k, v in weights["state_dict"].items():
                if own[k].shape != v.shape:
                    raise ValueError(f"weight {k} has shape {tuple(v.shape)}, policy expects {tuple(own[k].shape)}")
                own[k].copy_(v.to(own[k].device))
        self._policy_version = int(weights["policy_version"])
        self.policy.reset()

    def state_dict(self) -> dict[str, Tensor]:
        return {
            "policy_version": torch.tensor(self._policy_version, dtype=torch.int64),
            "num_updates": torch.tensor(self._num_updates, dtype=torch.int64),
            "optimization_step": torch.tensor(self._optimization_step, dtype=torch.int64),
        }

    def load_state_dict(self, state_dict: dict[str, Tensor], device: str | torch.device = "cpu") -> None:
        missing = {"policy_version", "num_updates", "optimization_step"} - set(state_dict)
        if missing:
            raise ValueError(f"pi_rl algorithm state is missing {sorted(missing)}")
        self._policy_version = int(state_dict["policy_version"])
        self._num_updates = int(state_dict["num_updates"])
        self._optimization_step = int(state_dict["optimization_step"])
        self._apply_noise_schedule()

    # ----------------------------------------------------------------------------------------------------------
    # The update
    # ----------------------------------------------------------------------------------------------------------

    def update(self, batch_iterator: Iterator[Any]) -> TrainingStats:
        rollout = next(batch_iterator)
        if not isinstance(rollout, Rollout):
            raise TypeError(f"PiRLAlgorithm.update consumes whole Rollouts, got {type(rollout).__name__}")
        return self.update_rollout(rollout).stats

    def fresh(self, policy_version: Tensor) -> Tensor:
        """The staleness rule (its only home): rows sampled by weights at most `config.staleness` versions older
        than the current ones are fresh; older rows are dropped (`policy_version [N]` long -> `[N]` bool)."""
        return policy_version >= self._policy_version - self.config.staleness

    def update_rollout(self, rollout: Rollout) -> UpdateResult:
        """One PPO (or GRPO) update on a whole on-policy rollout of chunk steps: prepared once (on rank 0 of a
        data-parallel learner, then shared with the other ranks), applied by every rank. With the frozen weights
        sharded, the rollout is shared and every rank prepares it (module docstring)."""
        ranks = self.data_parallel
        if ranks.shards_frozen:
            return self.apply_shared(ranks.share(rollout))
        return self.apply_update(ranks.share(self.prepare_update(rollout)))

    def apply_shared(self, message: Rollout | PreparedUpdate) -> UpdateResult:
        """What every rank does with rank 0's update message: a prepared update is applied, a rollout (frozen
        weights sharded) is prepared first."""
        if isinstance(message, Rollout):
            message = self.prepare_update(message)
        return self.apply_update(message)

    def prepare_update(self, rollout: Rollout) -> PreparedUpdate:
        """Everything computed once over the whole rollout: staleness, advantages and returns, the non-finite mask,
        proximal log-probs and behaviour weights, advantage normalization."""
        if not self.optimizers:
            self.make_optimizers_and_scheduler()
        device = next(self.policy.parameters()).device
        rollout = rollout.to(device)
        self.policy.train()

        rollout, dropped_stale = self._drop_stale(rollout)
        warmup = self._in_critic_warmup()
        if len(rollout) == 0:
            none = torch.zeros(0, dtype=torch.float32, device=device)
            no_rows = torch.zeros(0, dtype=torch.bool, device=device)
            return PreparedUpdate(rollout, none, none, rollout.log_prob.float(), none, no_rows, no_rows, no_rows,
                                  warmup, dropped_stale)
        advantages, returns, keep = self._advantages(rollout)
        finite = self._finite_rows(rollout, advantages, returns)
        if not bool(finite.all()):
            rollout, advantages, returns = self._mask_nonfinite_rows(rollout, advantages, returns, finite)
        keep = keep & finite
        ratio_mask = keep.clone()
        if self.config.mask_interventions:
            ratio_mask &= ~rollout.intervention
        old_log_prob, behaviour_weight = self._proximal_log_prob(rollout)
        if self.config.normalize_advantages and bool(keep.any()):
            advantages = normalize_advantages(advantages, mask=keep)
        return PreparedUpdate(rollout, advantages, returns, old_log_prob, behaviour_weight, ratio_mask, keep, finite,
                              warmup, dropped_stale)

    def apply_update(self, prepared: PreparedUpdate) -> UpdateResult:
        """The PPO epochs on a prepared update, then the counters and the exploration schedule."""
        if not self.optimizers:
            self.make_optimizers_and_scheduler()
        prepared = prepared.to(next(self.policy.parameters()).device)
        self.policy.train()
        if len(prepared) == 0:
            stats = TrainingStats(extra={"samples/used": 0.0, "samples/dropped_stale": float(prepared.dropped_stale)})
            return UpdateResult(stats, steps_taken=0, steps_skipped=0, version_moved=False)
        rollout, advantages, returns = prepared.rollout, prepared.advantages, prepared.returns
        finite, keep = prepared.finite, prepared.keep
        result = self._ppo_epochs(prepared)
        stats = result.stats
        stats.extra.update(
            {
                "samples/used": float(prepared.ratio_mask.sum()),
                "samples/dropped_stale": float(prepared.dropped_stale),
                "samples/interventions": float(rollout.intervention.sum()),
                "numerics/rows_nonfinite": float((~finite).sum()),
                "ppo/explained_variance": float(explained_variance(rollout.value[finite].float(), returns[finite])),
                "ppo/advantage_abs_mean": float(advantages[keep].abs().mean()) if bool(keep.any()) else 0.0,
                "rollout/reward_mean": float(rollout.reward[finite].float().mean()) if bool(finite.any()) else 0.0,
            }
        )
        if result.version_moved:
            self._policy_version += 1
        self._num_updates += 1
        self._apply_noise_schedule()
        stats.extra["policy/version"] = float(self._policy_version)
        stats.extra["flow/sde_noise_level"] = float(self.policy.sde_noise_level)
        return result

    def _apply_noise_schedule(self) -> None:
        self.policy.apply_exploration_schedule(self._num_updates)

    def _in_critic_warmup(self) -> bool:
        """The first `critic_warmup_updates` updates step only the critic (the version does not move)."""
        cfg = self.config
        use_critic = cfg.advantage.uses_critic and cfg.value_coef > 0
        return use_critic and self._num_updates < cfg.critic_warmup_updates

    @staticmethod
    def _finite_rows(rollout: Rollout, advantages: Tensor, returns: Tensor) -> Tensor:
        """`[N]` bool: rows whose behaviour numbers (reward, value, log-prob) and targets (advantage, return) are
        all finite. A non-finite reward or value also makes the advantages of its stream's earlier rows
        non-finite (GAE runs backwards through it): those rows are out too."""
        n = len(rollout)
        return (
            torch.isfinite(rollout.reward)
            & torch.isfinite(rollout.value)
            & torch.isfinite(rollout.log_prob.reshape(n, -1)).all(dim=1)
            & torch.isfinite(advantages.reshape(n, -1)).all(dim=1)
            & torch.isfinite(returns)
        )

    @staticmethod
    def _mask_nonfinite_rows(
        rollout: Rollout, advantages: Tensor, returns: Tensor, finite: Tensor
    ) -> tuple[Rollout, Tensor, Tensor]:
        """Zero the non-finite rows' numbers. They are masked out of normalization and every loss, but still go
        through the minibatch arithmetic, where a NaN would reach the gradients as 0 * NaN = NaN."""
        logger.warning("%d rollout row(s) with a non-finite reward, value or log-prob masked out of this update",
                       int((~finite).sum()))

        def zero(x: Tensor) -> Tensor:
            rows = finite.reshape(finite.shape + (1,) * (x.dim() - 1))
            return torch.where(rows, x, torch.zeros_like(x))

        rollout = dataclasses.replace(
            rollout, reward=zero(rollout.reward), value=zero(rollout.value), log_prob=zero(rollout.log_prob)
        )
        return rollout, zero(advantages), zero(returns)

    def _drop_stale(self, rollout: Rollout) -> tuple[Rollout, int]:
        fresh = self.fresh(rollout.policy_version)
        dropped = int((~fresh).sum())
        if dropped:
            rollout = rollout.select(fresh)
        return rollout, dropped

    @torch.no_grad()
    def _bootstrap_next_values(self, rollout: Rollout) -> Tensor:
        """V(o_{t+1}) per row: the next row's behaviour value inside a stream, else V(next obs) from the critic."""
        n = len(rollout)
        next_values = torch.zeros(n, dtype=torch.float32, device=rollout.value.device)
        need_critic = torch.zeros(n, dtype=torch.bool, device=rollout.value.device)
        done = rollout.done
        for sid in torch.unique(rollout.stream_id).tolist():
            rows = torch.nonzero(rollout.stream_id == sid).flatten()
            for pos, row in enumerate(rows.tolist()):
                if bool(rollout.terminated[row]):
                    continue
                if bool(done[row]) or pos == len(rows) - 1:
                    need_critic[row] = True
                else:
                    next_values[row] = rollout.value[rows[pos + 1]].float()
        if bool(need_critic.any()):
            idx = torch.nonzero(need_critic).flatten()
            for start in range(0, len(idx), self.config.minibatch_size):
                part = idx[start : start + self.config.minibatch_size]
                obs = {k: v[part] for k, v in rollout.next_observations.items()}
                next_values[part] = self.policy.value(obs).float()
        return next_values

    def _advantages(self, rollout: Rollout) -> tuple[Tensor, Tensor, Tensor]:
        """Advantages, returns and the mask of rows that carry a usable advantage."""
        estimator = self.config.advantage
        if isinstance(estimator, GRPOConfig):
            return self._grpo_advantages(rollout, estimator)
        advantages, returns = stream_gae(
            rewards=rollout.reward.float(),
            values=rollout.value.float(),
            next_values=self._bootstrap_next_values(rollout),
            terminated=rollout.terminated,
            truncated=rollout.truncated,
            stream_id=rollout.stream_id,
            gamma=estimator.gamma,
            lam=estimator.gae_lambda,
        )
        keep = torch.ones(len(rollout), dtype=torch.bool, device=advantages.device)
        return advantages.float(), returns.float(), keep

    def _grpo_advantages(self, rollout: Rollout, estimator: GRPOConfig) -> tuple[Tensor, Tensor, Tensor]:
        """Episode success normalized within groups of episodes that started from the same state."""
        n = len(rollout)
        device = rollout.reward.device
        episode = torch.full((n,), -1, dtype=torch.long, device=device)
        scores, groups = [], []
        done = rollout.done
        for sid in torch.unique(rollout.stream_id).tolist():
            rows = torch.nonzero(rollout.stream_id == sid).flatten().tolist()
            current: list[int] = []
            for row in rows:
                current.append(row)
                if bool(done[row]):  # only complete episodes get a score
                    episode[current] = len(scores)
                    scores.append(float(rollout.success[current].any()))
                    groups.append(int(rollout.group_id[row]))
                    current = []
        advantages = torch.zeros(n, dtype=torch.float32, device=device)
        keep = torch.zeros(n, dtype=torch.bool, device=device)
        if scores:
            ep_adv, ep_keep = grpo_advantages(
                scores=torch.tensor(scores, device=device),
                group_ids=torch.tensor(groups, device=device),
                drop_uniform_groups=estimator.drop_uniform_groups,
            )
            has_ep = episode >= 0
            advantages[has_ep] = ep_adv[episode[has_ep]].float()
            keep[has_ep] = ep_keep[episode[has_ep]]
        # No critic: returns are unused, kept equal to the behaviour value so the value loss is zero.
        return advantages, rollout.value.float(), keep

    @torch.no_grad()
    def _proximal_log_prob(self, rollout: Rollout) -> tuple[Tensor, Tensor]:
        """Old log-prob for the PPO ratio, and per-row behaviour weights (decoupled PPO for stale rows).

        Rows from the current version use their behaviour log-prob (weight 1). Rows from an older version are
        re-scored under the current weights (the proximal policy); their weight pi_prox / pi_behaviour is capped.
        """
        old = rollout.log_prob.float().clone()
        weight = torch.ones(len(rollout), dtype=torch.float32, device=old.device)
        stale = torch.nonzero(rollout.policy_version < self._policy_version).flatten()
        for start in range(0, len(stale), self.config.minibatch_size):
            part = stale[start : start + self.config.minibatch_size]
            ev = self._evaluate(rollout, part)
            log_w = (ev.log_prob.float() - old[part]).reshape(len(part), -1).sum(dim=1)
            weight[part] = torch.exp(log_w.clamp(max=math.log(self.config.behaviour_weight_cap)))
            old[part] = ev.log_prob.float()
        return old, weight

    def _evaluate(self, rollout: Rollout, rows: Tensor):
        obs = {k: v[rows] for k, v in rollout.observations.items()}
        return self.policy.evaluate_chain(obs, rollout.chain_record(rows))

    def _ppo_epochs(self, prepared: PreparedUpdate) -> UpdateResult:
        """`update_epochs` passes of shuffled minibatches. With several ranks each rank scores its share of every
        global minibatch, scaled by its share of each term's rows (`data_parallel.py`); the numbers every rank
        decides on (finite?, ratio guard, early stop) and the logged ones are reduced over ranks first."""
        cfg = self.config
        ranks = self.data_parallel
        rollout, warmup = prepared.rollout, prepared.warmup
        n = len(rollout)
        use_entropy = self.policy.exploration.learns_std and cfg.entropy_coef > 0
        use_critic = cfg.advantage.uses_critic and cfg.value_coef > 0
        stepped = {"critic"} if warmup else set(self.optimizers)
        params = [p for opt in self.optimizers.values() for group in opt.param_groups for p in group["params"]]
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}

        def log(name: str, value: float) -> None:
            sums[name] = sums.get(name, 0.0) + value
            counts[name] = counts.get(name, 0) + 1

        steps_taken, steps_skipped, max_ratio = 0, 0, 0.0
        mixing = cfg.offline.enabled and self.offline is not None and not warmup
        online_used, offline_used = 0, 0
        first = True
        stopped_early = 0.0
        for _epoch in range(cfg.update_epochs):
            epoch_kl: list[float] = []
            for rows in ranks.permutation(n, device=prepared.advantages.device).split(cfg.minibatch_size):
                part = self._minibatch_loss(prepared, rows, ranks.shard(rows), use_critic=use_critic,
                                            use_entropy=use_entropy, check_ratio=first)
                first = False
                # The offline SFT term of the whole minibatch, on the rank that holds the offline source (rank 0).
                fm_loss, fm_rows = self._offline_loss(len(rows)) if mixing else (None, 0)
                loss = part.loss
                if fm_loss is not None:
                    fm_term = cfg.offline.loss_weight * fm_loss
                    loss = fm_term if loss is None else loss + fm_term
                # One reduction of what every rank decides on and logs: sums of the share-weighted terms, maxima.
                local_finite = loss is None or _finite(loss, *part.checked)
                summed = ranks.sum(torch.stack([
                    *part.sums, torch.zeros(()) if fm_loss is None else fm_loss.detach().float().cpu(),
                    torch.zeros(()) if loss is None else loss.detach().float().cpu()]).to(prepared.advantages.device))
                maxed = ranks.max(torch.tensor(
                    [float(not local_finite), part.ratio_max, part.ratio_worst, float(part.ratio_unchecked)],
                    device=prepared.advantages.device))
                if not bool(maxed[3]) and float(maxed[2]) > cfg.ratio_check_tolerance:
                    self._ratio_mismatch(float(maxed[2]))
                if bool(maxed[0]):
                    steps_skipped += 1
                    self._zero_grad()
                    logger.error("non-finite log-prob/value/loss in a PPO minibatch: optimizer step skipped")
                    continue
                self._zero_grad()
                if loss is not None:
                    loss.backward()
                ranks.sum_gradients(params)
                grad_norms = self._clip_gradients()
                if not all(math.isfinite(g) for g in grad_norms.values()):
                    steps_skipped += 1
                    self._zero_grad()
                    logger.error("non-finite gradient norm %s: optimizer step skipped", grad_norms)
                    continue
                for role, opt in self.optimizers.items():
                    if role in stepped:
                        opt.step()
                steps_taken += 1
                self._optimization_step += 1
                online_used += len(rows)
                offline_used += fm_rows

                pg_loss, v_loss, entropy, approx_kl, clip_fraction, ratio_mean, std_mean, fm, total = summed.tolist()
                log("loss/policy", pg_loss)
                log("loss/value", v_loss)
                log("loss/entropy", entropy)
                log("loss/total", total)
                log("ppo/approx_kl", approx_kl)
                log("ppo/clip_fraction", clip_fraction)
                log("ppo/ratio_mean", ratio_mean)
                log("flow/std_mean", std_mean)
                if fm_loss is not None:
                    log("loss/offline_fm", fm)
                for role, g in grad_norms.items():
                    log(f"grad/{role}", g)
                max_ratio = max(max_ratio, float(maxed[1]))
                epoch_kl.append(approx_kl)
            if cfg.target_kl is not None and epoch_kl and sum(epoch_kl) / len(epoch_kl) > cfg.target_kl:
                stopped_early = 1.0
                break

        means = {k: sums[k] / counts[k] for k in sums}
        losses = {k.split("/", 1)[1]: v for k, v in means.items() if k.startswith("loss/")}
        grads = {k.split("/", 1)[1]: v for k, v in means.items() if k.startswith("grad/")}
        extra = {k: v for k, v in means.items() if not k.startswith(("loss/", "grad/"))}
        extra.update(
            {
                "ppo/ratio_max": max_ratio,
                "ppo/early_stopped": stopped_early,
                "ppo/critic_warmup": float(warmup),
                "numerics/steps_taken": float(steps_taken),
                "numerics/steps_skipped": float(steps_skipped),
            }
        )
        if mixing:
            extra["rollout/offline_share"] = offline_used / max(online_used + offline_used, 1)
        stats = TrainingStats(losses=losses, grad_norms=grads, extra=extra)
        return UpdateResult(
            stats, steps_taken=steps_taken, steps_skipped=steps_skipped, version_moved=steps_taken > 0 and not warmup
        )

    def _minibatch_loss(self, prepared: PreparedUpdate, rows: Tensor, local: Tensor, *, use_critic: bool,
                        use_entropy: bool, check_ratio: bool) -> _MinibatchPart:
        """This rank's part of the loss of global minibatch `rows`: its `local` rows' terms, each scaled by the
        share of that term's rows these are (all 1 in a single process). No rows: no loss, zero terms."""
        cfg = self.config
        rollout, warmup = prepared.rollout, prepared.warmup
        if len(local) == 0:
            if self.data_parallel.shards_frozen:
                self._join_frozen_forward(rollout, rows[:1])
            return _MinibatchPart(loss=None, sums=[torch.zeros(())] * 7, checked=())
        w_policy = share_weight(int(prepared.ratio_mask[local].sum()), int(prepared.ratio_mask[rows].sum()))
        w_value = share_weight(int(prepared.keep[local].sum()), int(prepared.keep[rows].sum()))
        w_rows = share_weight(len(local), len(rows))
        ev = self._evaluate(rollout, local)
        worst, unchecked = (self._ratio_error(ev, prepared.old_log_prob[local], rollout.policy_version[local],
                                              prepared.finite[local]) if check_ratio else (0.0, False))
        pg_loss, pg = ppo_policy_loss(
            log_prob=ev.log_prob,
            old_log_prob=prepared.old_log_prob[local],
            advantages=prepared.advantages[local] * prepared.behaviour_weight[local],
            clip_low=cfg.clip_low,
            clip_high=cfg.clip_high,
            dual_clip=cfg.dual_clip,
            mask=prepared.ratio_mask[local],
        )
        pg_loss = pg_loss * w_policy
        any_kept = bool(prepared.ratio_mask[rows].any())
        loss = pg_loss if any_kept and not warmup else ev.log_prob.sum() * 0.0
        v_loss = torch.zeros((), device=loss.device)
        if use_critic:
            v_loss = w_value * value_loss(
                values=ev.value,
                old_values=rollout.value[local].float(),
                returns=prepared.returns[local],
                clip=cfg.value_clip,
                huber_delta=cfg.huber_delta,
                mask=prepared.keep[local],
            )
            loss = loss + cfg.value_coef * v_loss
        entropy = ev.entropy.mean() * w_rows
        if use_entropy and not warmup:
            loss = loss - cfg.entropy_coef * entropy
        sums = [pg_loss, v_loss, entropy, pg.approx_kl * w_policy, pg.clip_fraction * w_policy,
                pg.ratio_mean * w_policy, ev.std_mean.mean() * w_rows]
        return _MinibatchPart(loss=loss, sums=[t.detach().float().cpu() for t in sums],
                              checked=(ev.log_prob, ev.value), ratio_max=float(pg.ratio_max), ratio_worst=worst,
                              ratio_unchecked=unchecked)

    @torch.no_grad()
    def _join_frozen_forward(self, rollout: Rollout, rows: Tensor) -> None:
        """Encode `rows` and discard the result: a rank without rows of a minibatch still enters the layer gathers
        of the sharded frozen forward that the other ranks run."""
        self.policy.backbone.encode({k: v[rows] for k, v in rollout.observations.items()})

    def _offline_loss(self, online: int) -> tuple[Tensor | None, int]:
        """The SFT flow-matching loss (the policy's own `forward`, as `lerobot-train` optimizes it) on the offline
        rows that go with `online` online rows: the row-weighted mean over the parts, and the rows drawn. `(None,
        0)` when the ratio asks for none or the source holds nothing yet."""
        wanted = offline_rows(online, ratio=self.config.offline.ratio)
        parts = self.offline.sample(wanted) if wanted > 0 else []
        total = sum(p.rows for p in parts)
        if total == 0:
            return None, 0
        loss = sum(self.policy.forward(p.batch)[0] * (p.rows / total) for p in parts if p.rows > 0)
        return loss, total

    def _ratio_error(self, ev, old_log_prob: Tensor, versions: Tensor, finite: Tensor) -> tuple[float, bool]:
        """The ratio guard's number on the first minibatch: the worst |log ratio| per Gaussian term
        (`ChainEvaluation.terms`) over rows sampled by the current weights (rows masked for non-finite numbers
        carry no recorded log-prob any more), and whether the guard is off because some of them are non-finite
        (the numerics guard handles those: skipped and reported). Per term, the tolerance does not depend on how
        many elements and denoise steps one ratio covers (C x A for a hybrid Flow-SDE chunk, (K+1) x C x A for
        Flow-Noise)."""
        current = (versions == self._policy_version) & finite
        if not bool(current.any()):
            return 0.0, False
        diff = ((ev.log_prob.detach().float() - old_log_prob.float()).abs() / ev.terms.clamp_min(1.0))[current]
        if not bool(torch.isfinite(diff).all()):
            return 0.0, True
        return float(diff.max()), False

    def _ratio_mismatch(self, worst: float) -> None:
        raise RatioMismatchError(
            f"first-minibatch |log ratio| per Gaussian term = {worst:.3g} > algorithm.ratio_check_tolerance="
            f"{self.config.ratio_check_tolerance} on rows sampled by the current weights (version "
            f"{self._policy_version}): the learner scores the chain differently from how the actor sampled it "
            "(different weights, noise level, variant, K, dtype or preprocessing?)"
        )

    def _zero_grad(self) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)

    def _clip_gradients(self) -> dict[str, float]:
        """Clip to `max_grad_norm` per optimizer group or over all of them (`grad_clip_scope`); returns each
        group's norm before clipping (and, for `global`, the total norm under "global")."""
        grouped = {
            role: [p for group in opt.param_groups for p in group["params"] if p.grad is not None]
            for role, opt in self.optimizers.items()
        }
        grouped = {role: params for role, params in grouped.items() if params}
        if self.config.grad_clip_scope == "global":
            return self._clip_global_norm(grouped)
        return {
            role: float(torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm))
            for role, params in grouped.items()
        }

    def _clip_global_norm(self, grouped: dict[str, list[Tensor]]) -> dict[str, float]:
        """One norm over every group's gradients, clipped together (the total is computed once from the groups')."""
        group_norms = {
            role: torch.nn.utils.get_total_norm([p.grad for p in params]) for role, params in grouped.items()
        }
        if not group_norms:
            return {}
        total = torch.linalg.vector_norm(torch.stack(list(group_norms.values())))
        torch.nn.utils.clip_grads_with_norm_([p for params in grouped.values() for p in params],
                                             self.config.max_grad_norm, total)
        return {**{role: float(n) for role, n in group_norms.items()}, "global": float(total)}
