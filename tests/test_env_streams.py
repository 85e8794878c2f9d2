"""The PI-RL actor's environment streams: LeRobot `make_env` sims, gym_manipulator interventions, chunk execution."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lerobot.configs.types import FeatureType
from lerobot_policy_pi_rl.configuration_pi_rl import PiRLConfig
from lerobot_policy_pi_rl.envs.pickcube import PickCubeStateEnvConfig
from lerobot_policy_pi_rl.runtime import env_streams
from lerobot_policy_pi_rl.runtime.actor import EpisodeStats, PiRLActor
from lerobot_policy_pi_rl.runtime.env_streams import StepResult


def test_make_env_streams_give_policy_keys_and_the_task():
    """Any LeRobot EnvConfig goes through `lerobot.envs.make_env` + LeRobot's env processors (here: our
    registered PickCube config used as a generic LeRobot sim)."""
    env_cfg = PickCubeStateEnvConfig(episode_length=5)
    features = {k: ft for k, ft in env_cfg.features.items()}
    policy_cfg = PiRLConfig(
        device="cpu",
        input_features={env_cfg.features_map[k]: ft for k, ft in features.items() if ft.type is not FeatureType.ACTION},
        output_features={"action": features["action"]},
    )
    streams = env_streams.make_lerobot_sim_streams(SimpleNamespace(env=env_cfg, policy=policy_cfg), 2, seed=0)
    try:
        assert len(streams) == 2
        for stream in streams:
            obs = stream.reset()
            assert obs["observation.state"].shape[-1] == 18
            assert obs["observation.environment_state"].shape[-1] == 3
            assert stream.task == env_cfg.task_description
            step = stream.step(torch.zeros(4))
            assert step.observation["observation.state"].shape[-1] == 18
            assert not step.intervention and step.executed_action.shape == (4,)
        # Streams are independent environments, each seeded by its index.
        a, b = (s.reset()["observation.environment_state"] for s in streams)
        assert not torch.equal(torch.as_tensor(a), torch.as_tensor(b))
    finally:
        for stream in streams:
            stream.close()


def test_manipulator_stream_reports_interventions_and_the_human_action(monkeypatch):
    from lerobot.processor import TransitionKey
    from lerobot.rl import gym_manipulator
    from lerobot.teleoperators.utils import TeleopEvents

    human = torch.tensor([0.1, -0.2, 0.3, 1.0])

    def fake_transition(intervene: bool) -> dict:
        return {
            TransitionKey.OBSERVATION: {"observation.state": torch.ones(1, 18), "observation.images.front": 0},
            TransitionKey.REWARD: 0.5,
            TransitionKey.DONE: False,
            TransitionKey.TRUNCATED: False,
            TransitionKey.INFO: {TeleopEvents.IS_INTERVENTION: intervene},
            TransitionKey.COMPLEMENTARY_DATA: {"teleop_action": human} if intervene else {},
        }

    calls = iter([False, True])
    monkeypatch.setattr(gym_manipulator, "make_robot_env", lambda cfg: (SimpleNamespace(close=lambda: None), None))
    monkeypatch.setattr(gym_manipulator, "make_processors", lambda env, teleop, cfg, device: (None, None))
    monkeypatch.setattr(gym_manipulator, "reset_and_build_transition", lambda *a, **k: fake_transition(False))
    monkeypatch.setattr(gym_manipulator, "step_env_and_process_transition",
                        lambda **kwargs: fake_transition(next(calls)))
    stream = env_streams.ManipulatorStream(SimpleNamespace(task="pick"), ["observation.state"], "cpu")
    assert set(stream.reset()) == {"observation.state"}  # only what the policy consumes
    policy_action = torch.zeros(4)
    first = stream.step(policy_action)
    assert not first.intervention and torch.equal(first.executed_action, policy_action)
    second = stream.step(policy_action)
    assert second.intervention and torch.equal(second.executed_action, human)  # the human's action is sent


class _ScriptedStream:
    """Steps that intervene at step 2 and terminate at step 3."""

    def __init__(self):
        self.t = 0

    def step(self, action):
        self.t += 1
        return StepResult(
            observation={"observation.state": torch.full((18,), float(self.t))},
            reward=1.0,
            terminated=self.t == 3,
            truncated=False,
            success=self.t == 3,
            intervention=self.t == 2,
            executed_action=action + 10.0 * (self.t == 2),
        )


def test_execute_chunk_stops_at_done_and_flags_the_chunk_intervened():
    actor = SimpleNamespace(streams=[_ScriptedStream()], episode=[EpisodeStats()], env_steps=0, recorder=None)
    actions = torch.arange(20, dtype=torch.float32).reshape(5, 4)
    out = PiRLActor.execute_chunk(actor, 0, actions)
    assert out.executed.shape == (3, 4)  # the chunk ends the episode at the done step, not after C=5
    assert torch.equal(out.executed[1], actions[1] + 10.0)  # executed (human) action, not the sampled one
    assert out.intervention and out.terminated and out.success and out.reward == 3.0
    assert float(out.next_observation["observation.state"][0]) == 3.0
    assert actor.env_steps == 3 and actor.episode[0].intervention_steps == 1


# ----------------------------------------------------------------------------------------------------------------
# LeRobot's multi-task sims (MetaWorld through `lerobot[metaworld]`): every task trained, time limits enforced
# ----------------------------------------------------------------------------------------------------------------


def _metaworld_cfg(task: str):
    from lerobot.envs.configs import MetaworldEnv

    env_cfg = MetaworldEnv(task=task)
    policy_cfg = PiRLConfig(
        device="cpu",
        input_features={"observation.state": env_cfg.features["agent_pos"],
                        "observation.image": env_cfg.features["pixels/top"]},
        output_features={"action": env_cfg.features["action"]},
    )
    return SimpleNamespace(env=env_cfg, policy=policy_cfg)


def test_multi_task_suite_spreads_envs_over_every_task_with_its_instruction():
    pytest.importorskip("metaworld")
    cfg = _metaworld_cfg("push-v3,drawer-open-v3")
    streams = env_streams.make_lerobot_sim_streams(cfg, 4, seed=0)
    try:
        assert [s.task_name for s in streams] == ["push-v3/0", "push-v3/0", "drawer-open-v3/0", "drawer-open-v3/0"]
        tasks = [s.task for s in streams]
        assert tasks[0] == tasks[1] != tasks[2] == tasks[3]
        assert all(t and "push-v3" not in t for t in tasks)  # the language instruction, not the task id
        assert len({s.seed for s in streams}) == 4
        assert all(s.max_episode_steps == 500 for s in streams)  # MetaWorld's own limit, read from the env
    finally:
        for s in streams:
            s.close()


def test_envs_that_cannot_be_spread_evenly_are_refused_with_the_numbers():
    pytest.importorskip("metaworld")
    with pytest.raises(ValueError, match=r"n_envs=3 cannot be spread evenly over the 2 tasks .*multiple of 2"):
        env_streams.make_lerobot_sim_streams(_metaworld_cfg("push-v3,drawer-open-v3"), 3, seed=0)


def test_lerobot_sim_stream_truncates_at_its_time_limit():
    """LeRobot's MetaWorld env never truncates by itself: the stream cuts the episode at its limit, as a
    truncation (bootstrapped), and the count restarts with the next episode."""
    pytest.importorskip("metaworld")
    (stream,) = env_streams.make_lerobot_sim_streams(_metaworld_cfg("push-v3"), 1, seed=0)
    try:
        stream.max_episode_steps = 3  # the mechanism, at a length a test can afford (real limit: 500)
        for _episode in range(2):
            stream.reset()
            results = [stream.step(torch.zeros(4)) for _ in range(3)]
            assert [r.truncated for r in results] == [False, False, True]
            assert not any(r.terminated for r in results)
    finally:
        stream.close()


def test_episode_limit_falls_back_to_the_env_config():
    env = SimpleNamespace()
    assert env_streams.episode_limit(env, SimpleNamespace(episode_length=7)) == 7
    assert env_streams.episode_limit(SimpleNamespace(_max_episode_steps=11), SimpleNamespace(episode_length=7)) == 11
    assert env_streams.episode_limit(env, SimpleNamespace()) is None


# ----------------------------------------------------------------------------------------------------------------
# GRPO groups: envs that start their e-th episodes from the same state
# ----------------------------------------------------------------------------------------------------------------


def _pickcube_streams(n: int):
    env_cfg = PickCubeStateEnvConfig(episode_length=5)
    features = dict(env_cfg.features)
    policy_cfg = PiRLConfig(
        device="cpu",
        input_features={env_cfg.features_map[k]: ft for k, ft in features.items() if ft.type is not FeatureType.ACTION},
        output_features={"action": features["action"]},
    )
    return env_streams.make_env_streams(SimpleNamespace(env=env_cfg, policy=policy_cfg), n, seed=0)


def test_grpo_groups_start_each_episode_from_the_same_state():
    streams = _pickcube_streams(4)
    try:
        env_streams.assign_groups(streams, 2)
        for _episode in range(2):
            cubes = [s.reset()["observation.environment_state"] for s in streams]
            assert torch.equal(torch.as_tensor(cubes[0]), torch.as_tensor(cubes[1]))
            assert torch.equal(torch.as_tensor(cubes[2]), torch.as_tensor(cubes[3]))
            assert not torch.equal(torch.as_tensor(cubes[0]), torch.as_tensor(cubes[2]))
        assert [s.episode_index for s in streams] == [1, 1, 1, 1]
    finally:
        for s in streams:
            s.close()


def test_grpo_groups_refuse_uneven_env_counts_and_mixed_tasks():
    streams = [env_streams.GymStream(SimpleNamespace(action_space=None), f"task {i // 2}", i) for i in range(4)]
    with pytest.raises(ValueError, match="n_envs=4 is not a multiple of algorithm.advantage.group_size=3"):
        env_streams.assign_groups(streams, 3)
    with pytest.raises(ValueError, match=r"would mix tasks \['task 0', 'task 1'\]"):
        env_streams.assign_groups([streams[1], streams[2]], 2)
    with pytest.raises(ValueError, match="reset to a chosen initial state"):
        env_streams.assign_groups([SimpleNamespace(task_name="x")] * 2, 2)
