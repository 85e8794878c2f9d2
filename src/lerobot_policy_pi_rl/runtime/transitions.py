"""Actor -> learner schema: one LeRobot `Transition` per executed action chunk.

LeRobot's transport moves `list[Transition]` as `torch.save` bytes decoded with `torch.load(weights_only=True)`,
so everything here is a tensor (or a plain number). A PI-RL chunk transition is:

    state              preprocessed observation the chain was sampled for, each tensor `[1, ...]`
    action             executed env actions `[C', A_env]` (C' <= C when the episode ended mid-chunk; the human's
                       actions for an intervened chunk)
    reward             float, undiscounted sum of the C' env rewards
    next_state         preprocessed observation after the chunk, each `[1, ...]` (the *final* observation when the
                       episode ended: it bootstraps truncations)
    done               terminated or truncated
    truncated          time limit
    complementary_info (keys below, all tensors):
        pi_rl.chain            [K+1, H, A_model] float32  denoising chain, x_{t_0} = noise first
        pi_rl.stochastic       [K] bool     which denoise transitions were sampled stochastically
        pi_rl.noise_level      []  float32  Flow-SDE noise level the chain was sampled with
        pi_rl.log_prob         [] | [C] | [C, A_env] float32  behaviour log-prob at the policy's log_prob_level
        pi_rl.value            []  float32  behaviour V(o)
        pi_rl.policy_version   []  long     version of the weights that sampled the chain
        pi_rl.learner_session  []  long     id of the learner run that published those weights (rows of another
                                            learner incarnation, e.g. from before a crash, are dropped)
        pi_rl.terminated       []  bool     episode ended by the task (no bootstrap)
        pi_rl.stream_id        []  long     actor_index * STREAM_STRIDE + env_index
        pi_rl.chunk_index      []  long     position of the chunk in its stream (gaps split GAE segments)
        pi_rl.success          []  bool     task success reached by the end of this chunk
        pi_rl.group_id         []  long     GRPO group (same initial state), -1 when not grouped
        pi_rl.num_executed     []  long     C', actions executed from the chunk
        is_intervention        []  bool     a human took over during the chunk (LeRobot's TeleopEvents key)
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lerobot.teleoperators.utils import TeleopEvents
from lerobot.utils.transition import Transition

from ..rl.rollout import Rollout

PREFIX = "pi_rl."
CHAIN = PREFIX + "chain"
STOCHASTIC = PREFIX + "stochastic"
NOISE_LEVEL = PREFIX + "noise_level"
LOG_PROB = PREFIX + "log_prob"
VALUE = PREFIX + "value"
POLICY_VERSION = PREFIX + "policy_version"
LEARNER_SESSION = PREFIX + "learner_session"
TERMINATED = PREFIX + "terminated"
STREAM_ID = PREFIX + "stream_id"
CHUNK_INDEX = PREFIX + "chunk_index"
SUCCESS = PREFIX + "success"
GROUP_ID = PREFIX + "group_id"
NUM_EXECUTED = PREFIX + "num_executed"
IS_INTERVENTION = TeleopEvents.IS_INTERVENTION.value  # "is_intervention"

REQUIRED_KEYS = (
    CHAIN,
    STOCHASTIC,
    NOISE_LEVEL,
    LOG_PROB,
    VALUE,
    POLICY_VERSION,
    LEARNER_SESSION,
    TERMINATED,
    STREAM_ID,
    CHUNK_INDEX,
    SUCCESS,
    GROUP_ID,
    NUM_EXECUTED,
    IS_INTERVENTION,
)

#: stream_id = actor_index * STREAM_STRIDE + env_index (unique per actor x env).
STREAM_STRIDE = 1 << 16


class NotAPiRLTransition(ValueError):
    """A transition lacks the PI-RL fields (e.g. it was sent by a stock SAC actor)."""

    def __init__(self, missing: list[str], present: list[str]):
        self.missing = missing
        self.present = present
        super().__init__(
            f"transition is not a PI-RL chunk transition: missing {missing}; complementary_info has {present}. "
            "Is this actor running `--algorithm.type=sac` (or LeRobot's stock actor) against a pi_rl learner?"
        )


@dataclass
class DropCounts:
    """Rows the learner did not train on, by reason (logged under rollout/dropped_*)."""

    nonfinite: int = 0
    stale: int = 0
    foreign_session: int = 0
    rejected: int = 0
    by_field: Counter = field(default_factory=Counter)

    def as_log_dict(self) -> dict[str, float]:
        return {
            "rollout/dropped_nonfinite": float(self.nonfinite),
            "rollout/dropped_stale": float(self.stale),
            "rollout/dropped_foreign_session": float(self.foreign_session),
            "rollout/rejected_not_pi_rl": float(self.rejected),
        }


def _scalar(value, dtype: torch.dtype) -> Tensor:
    return torch.as_tensor(value, dtype=dtype).reshape(())


def chunk_to_transition(
    *,
    observation: dict[str, Tensor],
    next_observation: dict[str, Tensor],
    executed_actions: Tensor,
    reward: float,
    terminated: bool,
    truncated: bool,
    chain: Tensor,
    stochastic: Tensor,
    noise_level: Tensor | float,
    log_prob: Tensor,
    value: Tensor | float,
    policy_version: int,
    learner_session: int,
    stream_id: int,
    chunk_index: int,
    success: bool = False,
    group_id: int = -1,
    is_intervention: bool = False,
) -> Transition:
    """One executed chunk of ONE env as a transport-safe `Transition` (cpu tensors, no batch dim on the chain).

    `observation`/`next_observation` are preprocessed observation dicts with a leading batch dim of 1; non-tensor
    entries (e.g. a task string) are dropped. `chain`, `log_prob` may carry a leading batch dim of 1.
    """
    if chain.dim() == 4:
        chain = chain.squeeze(0)
    if chain.dim() != 3:
        raise ValueError(f"chain must be [K+1, H, A] (or [1, K+1, H, A]), got {tuple(chain.shape)}")
    log_prob = torch.as_tensor(log_prob, dtype=torch.float32).detach().cpu()
    if log_prob.dim() >= 1 and log_prob.shape[0] == 1:
        log_prob = log_prob.squeeze(0)
    executed_actions = torch.as_tensor(executed_actions, dtype=torch.float32).detach().cpu()
    if executed_actions.dim() == 1:
        executed_actions = executed_actions.unsqueeze(0)
    info = {
        CHAIN: chain.detach().to("cpu", torch.float32).contiguous(),
        STOCHASTIC: torch.as_tensor(stochastic, dtype=torch.bool).detach().cpu().reshape(-1).contiguous(),
        NOISE_LEVEL: _scalar(torch.as_tensor(noise_level, dtype=torch.float32).reshape(-1)[0], torch.float32),
        LOG_PROB: log_prob.contiguous(),
        VALUE: _scalar(torch.as_tensor(value, dtype=torch.float32).reshape(-1)[0], torch.float32),
        POLICY_VERSION: _scalar(policy_version, torch.long),
        LEARNER_SESSION: _scalar(learner_session, torch.long),
        TERMINATED: _scalar(bool(terminated), torch.bool),
        STREAM_ID: _scalar(stream_id, torch.long),
        CHUNK_INDEX: _scalar(chunk_index, torch.long),
        SUCCESS: _scalar(bool(success), torch.bool),
        GROUP_ID: _scalar(group_id, torch.long),
        NUM_EXECUTED: _scalar(executed_actions.shape[0], torch.long),
        IS_INTERVENTION: _scalar(bool(is_intervention), torch.bool),
    }
    return Transition(
        state=_cpu_tensors(observation),
        action=executed_actions,
        reward=float(reward),
        next_state=_cpu_tensors(next_observation),
        done=bool(terminated or truncated),
        truncated=bool(truncated),
        complementary_info=info,
    )


def _cpu_tensors(obs: dict) -> dict[str, Tensor]:
    return {k: v.detach().cpu() for k, v in obs.items() if isinstance(v, Tensor)}


def check_pi_rl_transition(transition: Transition) -> None:
    """Raise `NotAPiRLTransition` when the PI-RL fields are missing."""
    info = transition.get("complementary_info") or {}
    missing = [k for k in REQUIRED_KEYS if k not in info]
    if missing:
        raise NotAPiRLTransition(missing, sorted(info))


def is_finite_transition(transition: Transition) -> bool:
    """False when reward, log-prob, value or chain holds NaN/inf (such rows must never reach PPO)."""
    info = transition["complementary_info"]
    if not math.isfinite(float(transition["reward"])):
        return False
    return all(bool(torch.isfinite(torch.as_tensor(info[k])).all()) for k in (LOG_PROB, VALUE, CHAIN))


def split_valid(
    transitions: list[Transition], counts: DropCounts | None = None
) -> list[Transition]:
    """Keep the finite PI-RL transitions; raises `NotAPiRLTransition` on the first foreign one."""
    kept = []
    for tr in transitions:
        check_pi_rl_transition(tr)
        if is_finite_transition(tr):
            kept.append(tr)
        elif counts is not None:
            counts.nonfinite += 1
    return kept


def _segment_ids(stream_id: Tensor, chunk_index: Tensor) -> Tensor:
    """GAE segment per row: the stream id, renumbered after any gap in a stream's chunk indices.

    Rows of a stream are contiguous in time unless some were dropped (non-finite, lost in a reconnect); a gap
    must end the GAE trace (the row before it is bootstrapped from its own next observation).
    """
    out = torch.empty_like(stream_id)
    last: dict[int, tuple[int, int]] = {}  # stream -> (last chunk index, segment id)
    next_free = int(stream_id.max().item()) + 1 if len(stream_id) else 0
    for i, (s, c) in enumerate(zip(stream_id.tolist(), chunk_index.tolist(), strict=True)):
        if s in last and last[s][0] + 1 == c:
            seg = last[s][1]
        elif s not in last:
            seg = s
        else:
            seg, next_free = next_free, next_free + 1
        last[s] = (c, seg)
        out[i] = seg
    return out


def transitions_to_rollout(transitions: list[Transition], counts: DropCounts | None = None) -> Rollout:
    """Stack PI-RL chunk transitions (in arrival order) into a `Rollout`.

    Non-finite rows are dropped (and counted in `counts`); a foreign transition raises `NotAPiRLTransition`.
    `Rollout.stream_id` holds GAE segment ids: the actor's stream id unless a gap split the stream.
    """
    rows = split_valid(transitions, counts)
    if not rows:
        raise ValueError("no valid PI-RL transitions to build a rollout from")
    infos = [tr["complementary_info"] for tr in rows]

    def stack(key: str, dtype: torch.dtype | None = None) -> Tensor:
        out = torch.stack([torch.as_tensor(i[key]) for i in infos])
        return out if dtype is None else out.to(dtype)

    def stack_obs(key: str) -> dict[str, Tensor]:
        # Observations travel with their batch dim of 1: `[1, ...]` each -> `[N, ...]`.
        return {n: torch.cat([tr[key][n] for tr in rows]) for n in rows[0][key]}

    stream_id = stack(STREAM_ID, torch.long)
    terminated = stack(TERMINATED, torch.bool)
    truncated = torch.tensor([bool(tr["truncated"]) for tr in rows]) & ~terminated
    return Rollout(
        observations=stack_obs("state"),
        next_observations=stack_obs("next_state"),
        chain=stack(CHAIN, torch.float32),
        stochastic=stack(STOCHASTIC, torch.bool),
        noise_level=stack(NOISE_LEVEL, torch.float32),
        log_prob=stack(LOG_PROB, torch.float32),
        value=stack(VALUE, torch.float32),
        reward=torch.tensor([float(tr["reward"]) for tr in rows], dtype=torch.float32),
        terminated=terminated,
        truncated=truncated,
        policy_version=stack(POLICY_VERSION, torch.long),
        stream_id=_segment_ids(stream_id, stack(CHUNK_INDEX, torch.long)),
        intervention=stack(IS_INTERVENTION, torch.bool),
        success=stack(SUCCESS, torch.bool),
        group_id=stack(GROUP_ID, torch.long),
    )


class ForeignTransitionLog:
    """Logs ONE line per distinct foreign sender signature (the transport does not name the actor)."""

    def __init__(self, logger: logging.Logger | None = None):
        self._seen: set[tuple[str, ...]] = set()
        self._log = logger or logging.getLogger(__name__)

    def report(self, error: NotAPiRLTransition) -> None:
        signature = tuple(error.present)
        if signature not in self._seen:
            self._seen.add(signature)
            self._log.error("[LEARNER] rejecting transitions from an actor: %s", error)
