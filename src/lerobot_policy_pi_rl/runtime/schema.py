"""Actor -> learner chunk transitions: one field table from which everything else is derived.

One LeRobot `Transition` per executed action chunk of one env. LeRobot's transport moves `list[Transition]` as
`torch.save` bytes decoded with `torch.load(weights_only=True)`, so a transition holds only tensors, numbers and
dicts of tensors:

    state              preprocessed observation the chain was sampled for, each tensor `[1, ...]`
    action             executed env actions `[C', A_env]` (C' <= C when the episode ended mid-chunk; the human's
                       actions for an intervened chunk)
    reward             float, undiscounted sum of the C' env rewards
    next_state         preprocessed observation after the chunk, each `[1, ...]` (the *final* observation when the
                       episode ended: it bootstraps truncations)
    done               terminated or truncated
    truncated          time limit (and not terminated)
    complementary_info one tensor per row of `FIELDS` below, under the row's key

From `FIELDS` come (a) the `complementary_info` the actor writes (`chunk_transition`), (b) the learner's one
arrival check (`admit`: field presence, dtype and rank, finiteness) and (c) the `Rollout` tensors
(`transitions_to_rollout`). To add a field: add a row to `FIELDS`, the attribute of the same name on its source
(`ChainRecord`, `ChainSample`, `ChunkOutcome` or `ChunkOrigin`) and, when the algorithm reads it, on `Rollout`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lerobot.teleoperators.utils import TeleopEvents
from lerobot.utils.transition import Transition

from ..rl.rollout import Rollout
from .metrics import DropCounts

# Where a field's value comes from when the actor builds a transition. RECORD and SAMPLE are batched (the
# policy samples all envs at once): the actor's row is taken from them.
RECORD = "record"  # `ChainSample.record` (`ChainRecord`): what `evaluate_chain` needs to score the chain again
SAMPLE = "sample"  # `ChainSample`: behaviour log-prob and value
OUTCOME = "outcome"  # `ChunkOutcome`: what executing the chunk in the env produced
ORIGIN = "origin"  # `ChunkOrigin`: the actor's bookkeeping (weights version, stream, position)
_BATCHED = (RECORD, SAMPLE)


@dataclass(frozen=True)
class Field:
    """One `complementary_info` entry of a chunk transition."""

    #: Key in `complementary_info`. Stable: actors and learners of different commits must understand each other.
    key: str
    #: Attribute on its source and, when `to_rollout`, on `Rollout`.
    name: str
    #: One of RECORD, SAMPLE, OUTCOME, ORIGIN.
    source: str
    dtype: torch.dtype
    #: Allowed ranks of the per-row tensor (documented shape in `shape`).
    ranks: tuple[int, ...]
    shape: str
    doc: str
    #: A float field that must hold no NaN/inf (rows that do are dropped on arrival).
    finite: bool = False
    #: Stacked into the `Rollout` attribute `name`.
    to_rollout: bool = True

    def encode(self, value: Any) -> Tensor:
        """The value as this field's transport-safe per-row tensor (cpu, its dtype, contiguous)."""
        return torch.as_tensor(value).detach().to("cpu", self.dtype).contiguous()

    def problem(self, value: Any) -> str | None:
        """Why `value` is not a valid entry of this field (None when it is)."""
        if not isinstance(value, Tensor):
            return f"{self.key} must be a tensor, got {type(value).__name__}"
        if value.dtype != self.dtype or value.dim() not in self.ranks:
            return (
                f"{self.key} must be a {self.dtype} tensor of rank {'/'.join(map(str, self.ranks))} "
                f"({self.shape}), got {value.dtype} of shape {tuple(value.shape)}"
            )
        return None


CHAIN = Field("pi_rl.chain", "chain", RECORD, torch.float32, (3,), "[K+1, H, A_model]",
              "denoising chain, x_{t_0} = noise first", finite=True)
STOCHASTIC = Field("pi_rl.stochastic", "stochastic", RECORD, torch.bool, (1,), "[K]",
                   "which denoise transitions were sampled stochastically")
NOISE_LEVEL = Field("pi_rl.noise_level", "noise_level", RECORD, torch.float32, (0,), "[]",
                    "Flow-SDE noise level the chain was sampled with", finite=True)
LOG_PROB = Field("pi_rl.log_prob", "log_prob", SAMPLE, torch.float32, (0, 1, 2), "[] | [C] | [C, A_env]",
                 "behaviour log-prob at the policy's log_prob_level", finite=True)
VALUE = Field("pi_rl.value", "value", SAMPLE, torch.float32, (0,), "[]", "behaviour V(o)", finite=True)
POLICY_VERSION = Field("pi_rl.policy_version", "policy_version", ORIGIN, torch.long, (0,), "[]",
                       "version of the weights that sampled the chain")
LEARNER_SESSION = Field("pi_rl.learner_session", "learner_session", ORIGIN, torch.long, (0,), "[]",
                        "id of the learner run that published those weights (rows of another learner incarnation, "
                        "e.g. from before a crash, are dropped)", to_rollout=False)
TERMINATED = Field("pi_rl.terminated", "terminated", OUTCOME, torch.bool, (0,), "[]",
                   "episode ended by the task (no bootstrap)")
STREAM_ID = Field("pi_rl.stream_id", "stream_id", ORIGIN, torch.long, (0,), "[]",
                  "actor_index * STREAM_STRIDE + env_index (the Rollout holds GAE segment ids instead)")
CHUNK_INDEX = Field("pi_rl.chunk_index", "chunk_index", ORIGIN, torch.long, (0,), "[]",
                    "position of the chunk in its stream (gaps split GAE segments)", to_rollout=False)
SUCCESS = Field("pi_rl.success", "success", OUTCOME, torch.bool, (0,), "[]",
                "task success reached by the end of this chunk")
GROUP_ID = Field("pi_rl.group_id", "group_id", ORIGIN, torch.long, (0,), "[]",
                 "GRPO group (same initial state): (first stream id of the env group << GROUP_EPISODE_BITS) | "
                 "episode index; -1 when not grouped")
NUM_EXECUTED = Field("pi_rl.num_executed", "num_executed", OUTCOME, torch.long, (0,), "[]",
                     "C', actions executed from the chunk", to_rollout=False)
# LeRobot's own TeleopEvents key, so that its tools read interventions from PI-RL transitions too.
IS_INTERVENTION = Field(TeleopEvents.IS_INTERVENTION.value, "intervention", OUTCOME, torch.bool, (0,), "[]",
                        "a human took over during the chunk")

FIELDS: tuple[Field, ...] = (
    CHAIN, STOCHASTIC, NOISE_LEVEL, LOG_PROB, VALUE, POLICY_VERSION, LEARNER_SESSION, TERMINATED, STREAM_ID,
    CHUNK_INDEX, SUCCESS, GROUP_ID, NUM_EXECUTED, IS_INTERVENTION,
)
REQUIRED_KEYS = tuple(f.key for f in FIELDS)

#: stream_id = actor_index * STREAM_STRIDE + env_index (unique per actor x env).
STREAM_STRIDE = 1 << 16
#: Low bits of a GRPO group id that hold the episode index (see GROUP_ID).
GROUP_EPISODE_BITS = 24


@dataclass
class ChunkOutcome:
    """What executing (part of) one chunk in one env produced."""

    #: Raw env observation after the chunk (the final one when the episode ended).
    next_observation: dict[str, Any]
    #: Executed env actions `[C', A_env]`.
    executed: Tensor
    reward: float
    terminated: bool
    truncated: bool
    success: bool
    intervention: bool

    @property
    def num_executed(self) -> int:
        return int(self.executed.shape[0])


@dataclass(frozen=True)
class ChunkOrigin:
    """Which weights sampled a chunk and where it sits in its stream (the actor's bookkeeping)."""

    policy_version: int
    learner_session: int
    stream_id: int
    chunk_index: int
    group_id: int = -1


# ----------------------------------------------------------------------------------------------------------------
# Actor side
# ----------------------------------------------------------------------------------------------------------------


def chunk_transition(
    *,
    observation: dict[str, Tensor],
    next_observation: dict[str, Tensor],
    sample: Any,
    row: int,
    outcome: ChunkOutcome,
    origin: ChunkOrigin,
) -> Transition:
    """Row `row` of a batched `ChainSample` and its env's chunk outcome as one transport-safe `Transition`.

    `observation` / `next_observation` are the preprocessed observations of that env (leading batch dim 1);
    non-tensor entries (e.g. a task string) are left out.
    """
    sources = {RECORD: sample.record, SAMPLE: sample, OUTCOME: outcome, ORIGIN: origin}
    info = {}
    for f in FIELDS:
        value = getattr(sources[f.source], f.name)
        info[f.key] = f.encode(value[row] if f.source in _BATCHED else value)
    executed = torch.as_tensor(outcome.executed, dtype=torch.float32).detach().cpu()
    return Transition(
        state=_cpu_tensors(observation),
        action=executed.unsqueeze(0) if executed.dim() == 1 else executed,
        reward=float(outcome.reward),
        next_state=_cpu_tensors(next_observation),
        done=bool(outcome.terminated or outcome.truncated),
        truncated=bool(outcome.truncated and not outcome.terminated),
        complementary_info=info,
    )


def _cpu_tensors(obs: dict) -> dict[str, Tensor]:
    return {k: v.detach().cpu() for k, v in obs.items() if isinstance(v, Tensor)}


# ----------------------------------------------------------------------------------------------------------------
# Learner side: the arrival check (the only validation of a transition)
# ----------------------------------------------------------------------------------------------------------------


class NotAPiRLTransition(ValueError):
    """A transition lacks the PI-RL fields or holds malformed ones (e.g. it was sent by a stock SAC actor)."""

    def __init__(self, missing: list[str], present: list[str], malformed: list[str] | None = None):
        self.missing = missing
        self.present = present
        self.malformed = malformed or []
        problems = []
        if missing:
            problems.append(f"missing {missing}")
        problems += self.malformed
        super().__init__(
            f"transition is not a PI-RL chunk transition: {'; '.join(problems)}; complementary_info has {present}. "
            "Is this actor running `--algorithm.type=sac` (or LeRobot's stock actor) against a pi_rl learner?"
        )


def check_fields(transition: Transition) -> None:
    """Raise `NotAPiRLTransition` unless every field of `FIELDS` is present with its dtype and rank."""
    info = transition.get("complementary_info") or {}
    missing = [f.key for f in FIELDS if f.key not in info]
    malformed = [p for f in FIELDS if f.key in info and (p := f.problem(info[f.key])) is not None]
    if missing or malformed:
        raise NotAPiRLTransition(missing, sorted(info), malformed)


def nonfinite_part(transition: Transition) -> str | None:
    """The first part of a (schema-checked) transition that holds NaN/inf, None when all are finite.

    Checked: the reward, the fields marked `finite`, and every floating-point observation tensor (`state.<key>`,
    `next_state.<key>`): a non-finite observation poisons every value and log-prob computed from it.
    """
    if not math.isfinite(float(transition["reward"])):
        return "reward"
    info = transition["complementary_info"]
    for f in FIELDS:
        if f.finite and not bool(torch.isfinite(info[f.key]).all()):
            return f.key
    for part in ("state", "next_state"):
        for name, tensor in transition[part].items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                return f"{part}.{name}"
    return None


def admit(transitions: list[Transition], *, session: int, drops: DropCounts) -> list[Transition]:
    """The arrival check of one actor message, run once: the rows PPO may train on.

    Raises `NotAPiRLTransition` when any row is not a well-formed PI-RL transition (the whole message comes from
    a foreign sender). Rows published by another learner session and rows holding NaN/inf are dropped and
    counted in `drops` (non-finite ones also by the offending part in `drops.by_field`).
    """
    for tr in transitions:
        check_fields(tr)
    kept = []
    for tr in transitions:
        if int(tr["complementary_info"][LEARNER_SESSION.key]) != session:
            drops.foreign_session += 1
        elif (bad := nonfinite_part(tr)) is not None:
            drops.nonfinite += 1
            drops.by_field[bad] += 1
        else:
            kept.append(tr)
    return kept


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


# ----------------------------------------------------------------------------------------------------------------
# Learner side: admitted rows -> Rollout
# ----------------------------------------------------------------------------------------------------------------


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


def transitions_to_rollout(rows: list[Transition]) -> Rollout:
    """Stack admitted chunk transitions (in arrival order) into a `Rollout`.

    The rows must have passed `admit`; nothing is checked again here. `Rollout.stream_id` holds GAE segment ids:
    the actor's stream id unless a gap split the stream.
    """
    if not rows:
        raise ValueError("no PI-RL transitions to build a rollout from")
    infos = [tr["complementary_info"] for tr in rows]

    def stack(f: Field) -> Tensor:
        return torch.stack([info[f.key] for info in infos]).to(f.dtype)

    def stack_obs(part: str) -> dict[str, Tensor]:
        # Observations travel with their batch dim of 1: `[1, ...]` each -> `[N, ...]`.
        return {n: torch.cat([tr[part][n] for tr in rows]) for n in rows[0][part]}

    tensors = {f.name: stack(f) for f in FIELDS if f.to_rollout}
    tensors[STREAM_ID.name] = _segment_ids(tensors[STREAM_ID.name], stack(CHUNK_INDEX))
    truncated = torch.tensor([bool(tr["truncated"]) for tr in rows]) & ~tensors[TERMINATED.name]
    return Rollout(
        observations=stack_obs("state"),
        next_observations=stack_obs("next_state"),
        reward=torch.tensor([float(tr["reward"]) for tr in rows], dtype=torch.float32),
        truncated=truncated,
        **tensors,
    )
