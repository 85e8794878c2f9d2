"""The PI-RL actor's environment streams: LeRobot `make_env` sims, gym_manipulator interventions, chunk execution."""

from __future__ import annotations

from types import SimpleNamespace

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
    actor = SimpleNamespace(streams=[_ScriptedStream()], episode=[EpisodeStats()], env_steps=0)
    actions = torch.arange(20, dtype=torch.float32).reshape(5, 4)
    out = PiRLActor.execute_chunk(actor, 0, actions)
    assert out.executed.shape == (3, 4)  # the chunk ends the episode at the done step, not after C=5
    assert torch.equal(out.executed[1], actions[1] + 10.0)  # executed (human) action, not the sampled one
    assert out.intervention and out.terminated and out.success and out.reward == 3.0
    assert float(out.next_observation["observation.state"][0]) == 3.0
    assert actor.env_steps == 3 and actor.episode[0].intervention_steps == 1
