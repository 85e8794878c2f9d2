"""Chunk-transition schema: one field table behind the actor's transitions, the arrival check and the Rollout."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from lerobot.transport.utils import bytes_to_transitions, transitions_to_bytes
from lerobot.utils.transition import Transition

from lerobot_policy_pi_rl.exploration import ChainRecord
from lerobot_policy_pi_rl.modeling_pi_rl import ChainSample
from lerobot_policy_pi_rl.rl.rollout import Rollout
from lerobot_policy_pi_rl.runtime import schema as S
from lerobot_policy_pi_rl.runtime.metrics import Counters, DropCounts
from lerobot_policy_pi_rl.runtime.schema import (
    ChunkOrigin,
    ChunkOutcome,
    NotAPiRLTransition,
    admit,
    chunk_transition,
    transitions_to_rollout,
)

K, H, A, C = 2, 4, 4, 4


def make_sample(batch: int = 1, *, log_prob: float = -1.0) -> ChainSample:
    """A batched `ChainSample` as `PiRLPolicy.sample_chain` returns it (hybrid Flow-SDE: step 1 stochastic)."""
    record = ChainRecord(
        chain=torch.randn(batch, K + 1, H, A),
        stochastic=torch.nn.functional.one_hot(torch.ones(batch, dtype=torch.long), K).bool(),
        noise_level=torch.full((batch,), 0.5),
    )
    return ChainSample(action_chunk=record.chain[:, -1], record=record, log_prob=torch.full((batch,), log_prob),
                       value=torch.full((batch,), 0.25))


def make_chunk(stream: int = 0, index: int = 0, *, reward: float = 1.0, log_prob: float = -1.0, version: int = 0,
               session: int = 7, terminated: bool = False, truncated: bool = False, executed: int = C) -> Transition:
    obs = {"observation.state": torch.randn(1, 18), "observation.environment_state": torch.randn(1, 3)}
    nxt = {k: torch.randn_like(v) for k, v in obs.items()}
    outcome = ChunkOutcome(next_observation={}, executed=torch.randn(executed, A), reward=reward,
                           terminated=terminated, truncated=truncated, success=terminated, intervention=False)
    return chunk_transition(observation=obs, next_observation=nxt, sample=make_sample(log_prob=log_prob), row=0,
                            outcome=outcome, origin=ChunkOrigin(version, session, stream, index))


def learner_stub(session: int = 7, logger: logging.Logger | None = None):
    """A `PiRLLearner` with only the arrival stage's state (no model, no server)."""
    from lerobot_policy_pi_rl.runtime.learner import PiRLLearner

    learner = PiRLLearner.__new__(PiRLLearner)
    learner.foreign, learner.drops, learner.counters, learner.session = (
        S.RejectionLog(logger), DropCounts(), Counters(), session)
    return learner


# ----------------------------------------------------------------------------------------------------------------
# The field table
# ----------------------------------------------------------------------------------------------------------------


def test_every_field_comes_from_its_source_and_every_rollout_tensor_from_a_field():
    sources = {
        S.RECORD: {f.name for f in dataclasses.fields(ChainRecord)},
        S.SAMPLE: {f.name for f in dataclasses.fields(ChainSample)},
        S.ORIGIN: {f.name for f in dataclasses.fields(ChunkOrigin)},
        S.OUTCOME: {f.name for f in dataclasses.fields(ChunkOutcome)} | {"num_executed"},
    }
    for f in S.FIELDS:
        assert f.name in sources[f.source], f"{f.key}: no attribute {f.name!r} on its source {f.source}"
    assert len({f.key for f in S.FIELDS}) == len(S.FIELDS) == len(S.REQUIRED_KEYS)
    # The transition's core (observations, reward, truncated) plus the fields marked to_rollout: all of Rollout.
    derived = {"observations", "next_observations", "reward", "truncated"} | {f.name for f in S.FIELDS if f.to_rollout}
    assert derived == {f.name for f in dataclasses.fields(Rollout)}


def test_chunk_transitions_round_trip_through_transport_into_rollout():
    sent = [make_chunk(0, 0), make_chunk(1, 0), make_chunk(0, 1, terminated=True, executed=2), make_chunk(1, 1)]
    received = bytes_to_transitions(transitions_to_bytes(sent))  # torch.load(weights_only=True)
    assert len(received) == 4
    for tr in received:
        assert set(S.REQUIRED_KEYS) <= set(tr["complementary_info"])
    rollout = transitions_to_rollout(received)
    assert len(rollout) == 4
    assert rollout.chain.shape == (4, K + 1, H, A) and rollout.chain.dtype == torch.float32
    assert rollout.observations["observation.state"].shape == (4, 18)
    assert rollout.next_observations["observation.environment_state"].shape == (4, 3)
    assert rollout.stochastic.dtype == torch.bool and rollout.stochastic.shape == (4, K)
    assert rollout.stochastic.float().argmax(dim=1).tolist() == [1, 1, 1, 1]
    assert rollout.log_prob.shape == (4,) and rollout.value.shape == (4,)
    assert rollout.terminated.tolist() == [False, False, True, False]
    assert rollout.stream_id.tolist() == [0, 1, 0, 1]
    assert torch.equal(rollout.chain[0], sent[0]["complementary_info"][S.CHAIN.key])
    assert received[2]["action"].shape == (2, A)  # executed actions, cut at the done


def test_actor_row_is_taken_from_the_batched_sample_and_the_outcome():
    sample = make_sample(batch=3)
    sample.log_prob[2] = -4.0
    outcome = ChunkOutcome(next_observation={}, executed=torch.zeros(3, A), reward=2.5, terminated=True,
                           truncated=True, success=True, intervention=True)
    tr = chunk_transition(observation={"observation.state": torch.zeros(1, 18), "task": "lift"},
                          next_observation={"observation.state": torch.ones(1, 18)}, sample=sample, row=2,
                          outcome=outcome, origin=ChunkOrigin(5, 7, 65537, 9, group_id=3))
    info = tr["complementary_info"]
    assert torch.equal(info[S.CHAIN.key], sample.record.chain[2])
    assert info[S.LOG_PROB.key].item() == -4.0 and info[S.LOG_PROB.key].shape == ()
    assert info[S.NUM_EXECUTED.key].item() == 3 and info[S.IS_INTERVENTION.key].item() is True
    assert [info[f.key].item() for f in (S.POLICY_VERSION, S.LEARNER_SESSION, S.STREAM_ID, S.CHUNK_INDEX,
                                         S.GROUP_ID)] == [5, 7, 65537, 9, 3]
    assert tr["done"] and not tr["truncated"]  # terminated wins over a time limit hit on the same step
    assert "task" not in tr["state"] and tr["reward"] == 2.5
    for f in S.FIELDS:
        assert f.problem(info[f.key]) is None, f.key


# ----------------------------------------------------------------------------------------------------------------
# The arrival check
# ----------------------------------------------------------------------------------------------------------------


def test_sac_style_transition_is_rejected_and_logged_once(caplog):
    sac = Transition(state={"observation.state": torch.zeros(1, 18)}, action=torch.zeros(1, 4), reward=0.0,
                     next_state={"observation.state": torch.zeros(1, 18)}, done=False, truncated=False,
                     complementary_info={"discrete_penalty": torch.tensor([0.0]), "is_intervention": False})
    sac = bytes_to_transitions(transitions_to_bytes([sac]))[0]
    with pytest.raises(NotAPiRLTransition, match="missing"):
        admit([sac], session=7, drops=DropCounts())

    learner = learner_stub(logger=logging.getLogger("test"))
    with caplog.at_level(logging.ERROR):
        for _ in range(3):
            assert learner.accept([sac, sac]) == []
    assert learner.drops.rejected == 6
    assert sum("not a PI-RL chunk transition" in r.message for r in caplog.records) == 1
    assert len(learner.accept([make_chunk()])) == 1  # PI-RL rows from another actor still flow


def test_malformed_field_is_rejected_with_the_field_named():
    tr = make_chunk()
    tr["complementary_info"][S.CHAIN.key] = tr["complementary_info"][S.CHAIN.key][0]  # lost a dim
    with pytest.raises(NotAPiRLTransition, match=r"pi_rl\.chain must be a torch.float32 tensor of rank 3"):
        admit([tr], session=7, drops=DropCounts())
    tr = make_chunk()
    tr["complementary_info"][S.POLICY_VERSION.key] = torch.tensor(1.0)
    with pytest.raises(NotAPiRLTransition, match=r"pi_rl\.policy_version must be a torch.int64"):
        admit([tr], session=7, drops=DropCounts())


def test_nonfinite_rows_are_dropped_and_counted():
    rows = [make_chunk(0, 0), make_chunk(0, 1, reward=float("nan")), make_chunk(0, 2, log_prob=float("inf")),
            make_chunk(0, 3)]
    rows[3]["complementary_info"][S.CHAIN.key][0, 0, 0] = float("nan")
    rows.append(make_chunk(0, 4))
    counts = DropCounts()
    rollout = transitions_to_rollout(admit(rows, session=7, drops=counts))
    assert len(rollout) == 2 and counts.nonfinite == 3
    assert counts.by_field == {"reward": 1, S.LOG_PROB.key: 1, S.CHAIN.key: 1}
    # The dropped rows leave a gap in stream 0: the GAE trace must not run across it.
    assert rollout.stream_id[0] != rollout.stream_id[1]


@pytest.mark.parametrize("part", ["state", "next_state"])
def test_nonfinite_observation_is_dropped_on_arrival_and_counted(part):
    bad = make_chunk(0, 1)
    bad[part]["observation.environment_state"][0, 1] = float("nan")
    learner = learner_stub()
    kept = learner.accept([make_chunk(0, 0), bad, make_chunk(0, 2)])
    assert len(kept) == 2 and all(tr is not bad for tr in kept)
    assert learner.drops.nonfinite == 1
    assert learner.drops.by_field == {f"{part}.observation.environment_state": 1}
    assert learner.counters.chunks_received == 3  # received, counted, not trained on


@pytest.mark.parametrize("field", ["reward", "value", "noise_level"])
def test_nonfinite_reward_value_or_noise_level_never_reaches_the_rollout(field):
    bad = make_chunk(0, 1)
    if field == "reward":
        bad["reward"] = float("inf")
    else:
        bad["complementary_info"][f"pi_rl.{field}"] = torch.tensor(float("nan"))
    learner = learner_stub()
    rollout = transitions_to_rollout(learner.accept([make_chunk(0, 0), bad, make_chunk(0, 2)]))
    assert len(rollout) == 2 and learner.drops.nonfinite == 1
    assert bool(torch.isfinite(rollout.reward).all() and torch.isfinite(rollout.value).all())


def test_rows_of_another_learner_run_are_dropped():
    learner = learner_stub()
    kept = learner.accept([make_chunk(session=7), make_chunk(session=99), make_chunk(session=7, version=0)])
    assert len(kept) == 2 and learner.drops.foreign_session == 1
    assert learner.counters.interaction_steps == 3 * C
