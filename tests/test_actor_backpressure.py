"""Actor back-pressure: the real `PiRLActor` loop sends at most `algorithm.rollout_chunks` rows per policy version,
then waits for the learner's next weights (at most `actor_wait_for_weights_s`). The test plays the learner."""

from __future__ import annotations

import queue
import threading
import time
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import ACTION_DIM, ENV_DIM, STATE_DIM, make_flow_mlp_config
from lerobot.utils.constants import OBS_ENV_STATE, OBS_STATE

ROLLOUT = 4  # rows per rollout; 2 envs -> 2 chunk steps per rollout
N_ENVS = 2


class ToyEnv(gym.Env):
    """LeRobot-keyed observations, never-ending episodes: the actor is never slowed down by the env."""

    def __init__(self):
        self.observation_space = gym.spaces.Dict({
            OBS_STATE: gym.spaces.Box(-1, 1, (STATE_DIM,), np.float32),
            OBS_ENV_STATE: gym.spaces.Box(-1, 1, (ENV_DIM,), np.float32),
        })
        self.action_space = gym.spaces.Box(-1, 1, (ACTION_DIM,), np.float32)

    def _obs(self):
        return {OBS_STATE: np.zeros(STATE_DIM, np.float32), OBS_ENV_STATE: np.zeros(ENV_DIM, np.float32)}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self._obs(), {}

    def step(self, action):
        return self._obs(), 0.0, False, False, {}


def start_actor(max_chunks: int, wait_s: float, group_size: int = 1):
    """The real actor in a thread, with its weights, transitions and interactions queues (the test is the learner)."""
    from lerobot.policies import make_pre_post_processors
    from lerobot.transport.utils import state_to_bytes

    from lerobot_policy_pi_rl.modeling_pi_rl import PiRLPolicy
    from lerobot_policy_pi_rl.rl.algorithm import PiRLAlgorithm
    from lerobot_policy_pi_rl.rl.config import GRPOConfig, PiRLAlgorithmConfig
    from lerobot_policy_pi_rl.runtime.actor import PiRLActor, Workers
    from lerobot_policy_pi_rl.runtime.env_streams import GymStream
    from lerobot_policy_pi_rl.runtime.transport import LEARNER_SESSION_KEY, TRAINING_DONE_KEY

    torch.manual_seed(0)
    policy_cfg = make_flow_mlp_config("flow_noise")
    stats = {OBS_STATE: {"mean": torch.zeros(STATE_DIM), "std": torch.ones(STATE_DIM)},
             OBS_ENV_STATE: {"mean": torch.zeros(ENV_DIM), "std": torch.ones(ENV_DIM)},
             "action": {"min": -torch.ones(ACTION_DIM), "max": torch.ones(ACTION_DIM)}}
    advantage = {"advantage": GRPOConfig(group_size=group_size)} if group_size > 1 else {}
    algorithm_cfg = PiRLAlgorithmConfig(policy_config=policy_cfg, rollout_chunks=ROLLOUT, **advantage)
    policy = PiRLPolicy(policy_cfg).eval()
    algorithm = PiRLAlgorithm(policy, algorithm_cfg)
    pre, post = make_pre_post_processors(policy_cfg, dataset_stats=stats)
    workers = Workers(queue.Queue(), queue.Queue(), queue.Queue())
    weights = algorithm.get_weights()
    weights[LEARNER_SESSION_KEY], weights[TRAINING_DONE_KEY] = 3, False

    def publish(version: int) -> None:
        workers.parameters.put(state_to_bytes({**weights, "policy_version": version}))

    publish(1)
    cfg = SimpleNamespace(policy=policy_cfg, algorithm=algorithm_cfg, actor_index=0, actor_max_chunks=max_chunks,
                          actor_wait_for_weights_s=wait_s)
    streams = [GymStream(ToyEnv(), "toy", seed=i) for i in range(N_ENVS)]
    actor = PiRLActor(cfg, policy, algorithm, pre, post, streams, workers, threading.Event())
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("code", actor.run()), daemon=True)
    thread.start()
    return actor, workers, publish, thread, result


def received(workers, rows: list, until: int, timeout: float = 30.0) -> list:
    """Rows from the transitions queue until `until` have arrived (or `timeout`)."""
    from lerobot.transport.utils import bytes_to_transitions

    deadline = time.monotonic() + timeout
    while len(rows) < until and time.monotonic() < deadline:
        try:
            rows += bytes_to_transitions(workers.transitions.get(timeout=0.05))
        except queue.Empty:
            pass
    return rows


def versions(rows: list) -> list[int]:
    from lerobot_policy_pi_rl.runtime.schema import POLICY_VERSION

    return [int(tr["complementary_info"][POLICY_VERSION.key]) for tr in rows]


@pytest.mark.slow
def test_actor_sends_one_rollout_per_version_then_waits_for_new_weights():
    actor, workers, publish, thread, result = start_actor(max_chunks=6, wait_s=30.0)
    rows = received(workers, [], ROLLOUT)
    time.sleep(0.5)  # a free-running actor would have sent every chunk step by now
    rows = received(workers, rows, ROLLOUT + 1, timeout=0.2)
    assert versions(rows) == [1] * ROLLOUT
    publish(2)
    rows = received(workers, rows, 2 * ROLLOUT)
    time.sleep(0.5)
    rows = received(workers, rows, 2 * ROLLOUT + 1, timeout=0.2)
    assert versions(rows) == [1] * ROLLOUT + [2] * ROLLOUT
    publish(3)
    thread.join(timeout=30)
    rows = received(workers, rows, 3 * ROLLOUT, timeout=1.0)
    assert result == {"code": 0}
    assert versions(rows) == [1] * ROLLOUT + [2] * ROLLOUT + [3] * ROLLOUT
    assert actor.waits_for_weights == 2


@pytest.mark.slow
def test_actor_sends_another_rollout_when_no_weights_come_and_never_waits_with_grpo_or_zero():
    # No new weights: after `actor_wait_for_weights_s` the actor sends another rollout's worth (a learner short of
    # rows, e.g. after dropping some, is never starved).
    actor, workers, _, thread, result = start_actor(max_chunks=6, wait_s=0.3)
    t0 = time.monotonic()
    thread.join(timeout=30)
    elapsed = time.monotonic() - t0
    assert result == {"code": 0} and len(received(workers, [], 3 * ROLLOUT, timeout=1.0)) == 3 * ROLLOUT
    assert actor.waits_for_weights == 2 and elapsed >= 2 * 0.3
    # 0 never waits; GRPO (complete groups only) never waits either.
    for wait_s, group_size in ((0.0, 1), (30.0, 2)):
        actor, workers, _, thread, result = start_actor(max_chunks=6, wait_s=wait_s, group_size=group_size)
        thread.join(timeout=20)
        assert result == {"code": 0}, (wait_s, group_size)
        assert actor.waits_for_weights == 0
        assert versions(received(workers, [], 3 * ROLLOUT, timeout=1.0)) == [1] * 3 * ROLLOUT


@pytest.mark.slow
def test_weights_with_the_same_version_end_the_wait():
    # A learner restarted from a checkpoint publishes that checkpoint's version again: the actor must carry on.
    actor, workers, publish, thread, result = start_actor(max_chunks=4, wait_s=30.0)
    rows = received(workers, [], ROLLOUT)
    # Publish once the actor waits: the rows can arrive before it enters the wait, and weights that came earlier
    # would end no wait at all.
    deadline = time.monotonic() + 10
    while actor.waits_for_weights == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert actor.waits_for_weights == 1, "the actor did not wait after a rollout's rows"
    publish(1)
    thread.join(timeout=10)
    assert result == {"code": 0}, "the actor still waited for weights it had been sent"
    assert versions(received(workers, rows, 2 * ROLLOUT, timeout=1.0)) == [1] * 2 * ROLLOUT
    assert actor.waits_for_weights == 1
