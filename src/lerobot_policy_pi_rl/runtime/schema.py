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
arrival check (`decode_message`: size before decoding, decodable; `admit`: exactly these fields, dtype and rank,
the shapes the learner's policy implies (`RowShapes`), finiteness, the learner session) and (c) the `Rollout` tensors
(`transitions_to_rollout`). To add a field: add a row to `FIELDS`, the attribute of the same name on its source
(`ChainRecord`, `ChainSample`, `ChunkOutcome` or `ChunkOrigin`) and, when the algorithm reads it, on `Rollout`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from lerobot.teleoperators.utils import TeleopEvents
from lerobot.transport.utils import bytes_to_transitions
from lerobot.utils.transition import Transition

from ..rl.rollout import Rollout
from .metrics import REJECTION_KINDS, DropCounts

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

    def problem(self, value: Any, shape: tuple[int, ...] | None = None) -> Problem | None:
        """Why `value` is not a valid entry of this field (None when it is); `shape`: the exact per-row shape this
        learner's policy implies, when known."""
        if not isinstance(value, Tensor) or value.dtype != self.dtype:
            got = f"{value.dtype} of shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
            return Problem("wrong_dtype", f"{self.key} must be a {self.dtype} tensor ({self.shape}), got {got}")
        if value.dim() not in self.ranks:
            return Problem(
                "wrong_shape",
                f"{self.key} must be a {self.dtype} tensor of rank {'/'.join(map(str, self.ranks))} "
                f"({self.shape}), got {value.dtype} of shape {tuple(value.shape)}",
            )
        if shape is not None and tuple(value.shape) != tuple(shape):
            return Problem("wrong_shape", f"{self.key} must have shape {tuple(shape)} ({self.shape}) for this "
                           f"learner's policy, got {tuple(value.shape)}")
        return None


class Problem(NamedTuple):
    """One reason a message is rejected: its kind (one of `REJECTION_KINDS`) and a sentence naming the value."""

    kind: str
    text: str

    def __str__(self) -> str:
        return self.text


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


#: The entries of a chunk transition (LeRobot's `Transition` keys); an actor message holds exactly these.
TRANSITION_KEYS = ("state", "action", "reward", "next_state", "done", "truncated", "complementary_info")


class RejectedMessage(ValueError):
    """A whole actor message the learner does not train on; `kind` is one of `REJECTION_KINDS`."""

    def __init__(self, kind: str, text: str):
        assert kind in REJECTION_KINDS, kind
        self.kind = kind
        super().__init__(text)

    @property
    def signature(self) -> tuple[str, ...]:
        """What makes two rejections the same for the log (one line each)."""
        return (self.kind,)


class NotAPiRLTransition(RejectedMessage):
    """A transition lacks the PI-RL fields or holds malformed ones (e.g. it was sent by a stock SAC actor)."""

    def __init__(self, missing: list[str], present: list[str], malformed: list[Problem] | None = None):
        self.missing = missing
        self.present = present
        self.malformed = malformed or []
        problems = []
        if missing:
            problems.append(f"missing {missing}")
        problems += [p.text for p in self.malformed]
        kind = "missing_field" if missing else self.malformed[0].kind
        super().__init__(
            kind,
            f"transition is not a PI-RL chunk transition: {'; '.join(problems)}; complementary_info has {present}. "
            "Is this actor running `--algorithm.type=sac` (or LeRobot's stock actor) against a pi_rl learner, or "
            "another version of this package, policy or env?",
        )

    @property
    def signature(self) -> tuple[str, ...]:
        return (self.kind, *self.present, *self.missing, *(p.text for p in self.malformed))


@dataclass(frozen=True)
class RowShapes:
    """The exact per-row shapes a learner's policy implies, checked on arrival beyond each field's dtype and rank
    (a row of another shape would otherwise fail only when the rollout is stacked, stopping the learner)."""

    #: complementary_info key -> per-row shape.
    fields: dict[str, tuple[int, ...]]
    #: Non-visual input feature -> its preprocessed per-row shape `[1, *feature shape]` (images are resized by
    #: the processors: only their presence is checked).
    observations: dict[str, tuple[int, ...]]
    visual: tuple[str, ...]
    #: A_env: the trailing dim of `action`.
    action_dim: int
    #: C: the most actions one chunk executes.
    max_executed: int

    @classmethod
    def of(cls, policy) -> RowShapes:
        from lerobot.configs.types import FeatureType

        config = policy.config
        k, h, a_model = policy.num_steps, policy.backbone.chunk_size, policy.backbone.model_action_dim
        c, a_env = config.n_action_steps, config.action_dim
        log_prob = {"chunk": (), "action": (c,), "element": (c, a_env)}[config.log_prob_level]
        features = config.input_features or {}
        return cls(
            fields={CHAIN.key: (k + 1, h, a_model), STOCHASTIC.key: (k,), LOG_PROB.key: log_prob},
            observations={key: (1, *f.shape) for key, f in features.items() if f.type is not FeatureType.VISUAL},
            visual=tuple(key for key, f in features.items() if f.type is FeatureType.VISUAL),
            action_dim=a_env,
            max_executed=c,
        )


def decode_message(message: bytes, *, max_bytes: int = 0) -> list[Transition]:
    """One actor message's bytes as transitions, or `RejectedMessage` (`oversized` is decided before decoding;
    `max_bytes=0`: no limit). `torch.load(weights_only=True)` unpickles only tensors and plain containers."""
    if max_bytes > 0 and len(message) > max_bytes:
        raise RejectedMessage("oversized", f"a message of {len(message)} bytes exceeds max_message_bytes={max_bytes}")
    try:
        transitions = bytes_to_transitions(message)
    except Exception as err:  # any bytes may arrive: nothing they hold may stop the learner
        raise RejectedMessage("undecodable", f"a message of {len(message)} bytes is not a torch.save payload of "
                              f"tensors and plain containers ({type(err).__name__})") from None
    if not isinstance(transitions, list) or not all(isinstance(tr, dict) for tr in transitions):
        raise RejectedMessage("not_transitions", "a message decodes to a "
                              f"{type(transitions).__name__}, not a list of transitions (dicts)")
    return transitions


def _core_problems(transition: dict, shapes: RowShapes | None) -> list[Problem]:
    """What is wrong with a transition's entries other than complementary_info (present keys only)."""
    problems = []
    for part in ("state", "next_state"):
        obs = transition[part]
        if not isinstance(obs, dict) or not all(isinstance(v, Tensor) for v in obs.values()):
            problems.append(Problem("wrong_dtype", f"{part} must be a dict of tensors"))
            continue
        for key, shape in (shapes.observations.items() if shapes else ()):
            if key not in obs:
                problems.append(Problem("missing_field", f"{part}.{key} is missing"))
            elif tuple(obs[key].shape) != shape:
                problems.append(Problem("wrong_shape", f"{part}.{key} must have shape {shape} for this learner's "
                                        f"policy, got {tuple(obs[key].shape)}"))
        problems += [Problem("missing_field", f"{part}.{key} is missing") for key in (shapes.visual if shapes else ())
                     if key not in obs]
    action = transition["action"]
    if not isinstance(action, Tensor) or not action.is_floating_point():
        problems.append(Problem("wrong_dtype", f"action must be a float tensor, got {type(action).__name__}"
                                f"{'' if not isinstance(action, Tensor) else ' of ' + str(action.dtype)}"))
    elif action.dim() != 2 or (shapes and not (1 <= action.shape[0] <= shapes.max_executed
                                               and action.shape[1] == shapes.action_dim)):
        expected = f"[C' <= {shapes.max_executed}, {shapes.action_dim}]" if shapes else "[C', A_env]"
        problems.append(Problem("wrong_shape", f"action must have shape {expected}, got {tuple(action.shape)}"))
    reward = transition["reward"]
    if isinstance(reward, bool) or not isinstance(reward, (int, float)):
        problems.append(Problem("wrong_dtype", f"reward must be a float, got {type(reward).__name__}"))
    for flag in ("done", "truncated"):
        if not isinstance(transition[flag], bool):
            problems.append(Problem("wrong_dtype", f"{flag} must be a bool, got {type(transition[flag]).__name__}"))
    return problems


def check_fields(transition: Transition, shapes: RowShapes | None = None) -> None:
    """Raise `NotAPiRLTransition` unless the transition holds exactly LeRobot's transition keys and every field of
    `FIELDS` (no other) with its dtype and rank, and, given `shapes`, the shapes this learner's policy implies."""
    info = transition.get("complementary_info")
    if not isinstance(info, dict):
        info = {}
    present = sorted(map(str, info))
    missing = [k for k in TRANSITION_KEYS if k not in transition] + [f.key for f in FIELDS if f.key not in info]
    malformed = [Problem("extra_field", f"unexpected entries {sorted(map(str, extra))}")
                 for extra in ({k for k in transition if k not in TRANSITION_KEYS},
                               {k for k in info if k not in REQUIRED_KEYS}) if extra]
    malformed += [p for f in FIELDS if f.key in info
                  and (p := f.problem(info[f.key], shapes.fields.get(f.key) if shapes else None)) is not None]
    if all(k in transition for k in TRANSITION_KEYS):
        malformed += _core_problems(transition, shapes)
    if missing or malformed:
        raise NotAPiRLTransition(missing, present, malformed)


def nonfinite_part(transition: Transition) -> str | None:
    """The first part of a (schema-checked) transition that holds NaN/inf, None when all are finite.

    Checked: the reward, the executed actions (supervised targets of intervention chunks), the fields marked
    `finite`, and every floating-point observation tensor (`state.<key>`, `next_state.<key>`): a non-finite
    observation poisons every value and log-prob computed from it.
    """
    if not math.isfinite(float(transition["reward"])):
        return "reward"
    if not bool(torch.isfinite(transition["action"]).all()):
        return "action"
    info = transition["complementary_info"]
    for f in FIELDS:
        if f.finite and not bool(torch.isfinite(info[f.key]).all()):
            return f.key
    for part in ("state", "next_state"):
        for name, tensor in transition[part].items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                return f"{part}.{name}"
    return None


def admit(
    transitions: list[Transition],
    *,
    session: int,
    drops: DropCounts,
    shapes: RowShapes | None = None,
    log: RejectionLog | None = None,
) -> list[Transition]:
    """The arrival check of one decoded actor message, run once: the rows PPO may train on.

    Raises `NotAPiRLTransition` when any row is not a well-formed PI-RL transition (the whole message comes from
    a foreign or misconfigured sender). Rows published by another learner session and rows holding NaN/inf are
    dropped and counted in `drops` (non-finite ones also by the offending part in `drops.by_field`); `log` gets
    one line per kind of drop.
    """
    for tr in transitions:
        check_fields(tr, shapes)
    kept = []
    for tr in transitions:
        if (theirs := int(tr["complementary_info"][LEARNER_SESSION.key])) != session:
            drops.foreign_session += 1
            if log:
                log.row_dropped("foreign_session", f"rows of learner session {theirs}, not this one ({session}): "
                                "sampled before a learner restart, or sent to the wrong learner")
        elif (bad := nonfinite_part(tr)) is not None:
            drops.nonfinite += 1
            drops.by_field[bad] += 1
            if log:
                log.row_dropped(f"nonfinite:{bad}", f"rows with NaN/inf in {bad}")
        else:
            kept.append(tr)
    return kept


class RejectionLog:
    """One log line per kind of rejection (a rejected message: per distinct problem; a dropped row: per reason),
    so that a flood of bad input cannot flood the log; the counters in `DropCounts` count every one."""

    def __init__(self, logger: logging.Logger | None = None):
        self._seen: set[tuple[str, ...]] = set()
        self._log = logger or logging.getLogger(__name__)

    def report(self, error: RejectedMessage) -> None:
        if error.signature not in self._seen:
            self._seen.add(error.signature)
            self._log.error("[LEARNER] rejecting a message from an actor (%s; counted under "
                            "rollout/rejected_messages/%s, further ones not logged): %s", error.kind, error.kind, error)

    def row_dropped(self, reason: str, what: str) -> None:
        if (reason,) not in self._seen:
            self._seen.add((reason,))
            counter = "nonfinite" if reason.startswith("nonfinite") else reason
            self._log.warning("[LEARNER] dropping %s (counted under rollout/dropped_%s, further ones not logged)",
                              what, counter)


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
