"""Human interventions against the real thing: LeRobot's `gym_manipulator` env on gym_hil's simulated Panda.

The human is `gym_hil/PandaPickCubeScriptedTeleop-v0` (this package's scripted stand-in for a person at the
keyboard): gym_hil's own `InputsControlWrapper` around a controller that takes over on a schedule. Everything
between it and PPO is the production path: LeRobot's `make_robot_env` + `make_processors` through
`ManipulatorStream`, the real `PiRLActor` loop with learner-published weights, chunk transitions as they leave for
the learner, `transitions_to_rollout` and a `PiRLAlgorithm` update.

Rendering the two 128x128 cameras costs ~0.4 s per env step on a CPU: episodes are cut short by LeRobot's own
time limit (`env.processor.reset.control_time_s * fps`), and the actor's run is shared by the tests that read it.
"""

from __future__ import annotations

import copy
import queue
import subprocess
import sys
import threading
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch

from conftest import make_flow_mlp_config, subprocess_env
from lerobot.configs.types import FeatureType, PolicyFeature
from lerobot.utils.constants import ACTION, OBS_STATE

from lerobot_policy_pi_rl.envs.pickcube import GRIPPER, GRIPPER_MAX, TCP_POS
from lerobot_policy_pi_rl.envs.teleop import (
    SCRIPTED_TELEOP_ENV_ID,
    SCRIPTED_TELEOP_TASK,
    InterventionWindow,
    ScriptedTeleopController,
    scripted_teleop_controller,
)

FPS = 10
FRONT, WRIST = "observation.images.front", "observation.images.wrist"


# ----------------------------------------------------------------------------------------------------------------
# Builders
# ----------------------------------------------------------------------------------------------------------------


def manipulator_env_cfg(episode_steps: int):
    """LeRobot's gym_manipulator env type on the scripted-teleop gym_hil task, episodes of `episode_steps`."""
    from lerobot.envs.configs import GripperConfig, HILSerlProcessorConfig, HILSerlRobotEnvConfig, ResetConfig

    return HILSerlRobotEnvConfig(
        name="gym_hil",
        task=SCRIPTED_TELEOP_TASK,
        fps=FPS,
        processor=HILSerlProcessorConfig(
            gripper=GripperConfig(use_gripper=True, gripper_penalty=0.0),
            # LeRobot's TimeLimitProcessorStep: int(control_time_s * fps) steps.
            reset=ResetConfig(control_time_s=episode_steps / FPS, reset_time_s=0.0),
        ),
    )


def make_stream(episode_steps: int, window: InterventionWindow, input_keys=(OBS_STATE,)):
    from lerobot_policy_pi_rl.runtime.env_streams import ManipulatorStream

    stream = ManipulatorStream(manipulator_env_cfg(episode_steps), list(input_keys), "cpu")
    controller = scripted_teleop_controller(stream.env)
    controller.window = window
    return stream, controller


def manipulator_policy_config():
    """A small flow_mlp `pi_rl` policy reading what gym_manipulator observes: state + both cameras."""
    image = PolicyFeature(type=FeatureType.VISUAL, shape=(3, 128, 128))
    return make_flow_mlp_config(
        chunk_size=4,
        n_action_steps=3,
        num_denoise_steps=2,
        backbone_kwargs={"hidden_dim": 32, "token_dim": 8, "time_embed_dim": 8, "image_channels": [8, 8, 8]},
        input_features={OBS_STATE: PolicyFeature(type=FeatureType.STATE, shape=(18,)), FRONT: image, WRIST: image},
        output_features={ACTION: PolicyFeature(type=FeatureType.ACTION, shape=(4,))},
    )


def manipulator_stats() -> dict[str, dict[str, torch.Tensor]]:
    return {
        OBS_STATE: {"mean": torch.zeros(18), "std": torch.ones(18)},
        ACTION: {"min": torch.tensor([-1.0, -1.0, -1.0, 0.0]), "max": torch.tensor([1.0, 1.0, 1.0, 2.0])},
    }


# The two helpers below are this file's only use of the runtime and algorithm APIs.


def run_actor(stream, learner_policy, chunks: int) -> tuple[list, list[dict]]:
    """The real `PiRLActor` loop on `stream` for `chunks` chunk steps, acting with `learner_policy`'s published
    weights; returns the chunk transitions and episode reports as they leave for the learner."""
    from lerobot.policies import make_pre_post_processors
    from lerobot.transport.utils import bytes_to_python_object, bytes_to_transitions, state_to_bytes

    from lerobot_policy_pi_rl.modeling_pi_rl import PiRLPolicy
    from lerobot_policy_pi_rl.rl.algorithm import PiRLAlgorithm
    from lerobot_policy_pi_rl.rl.config import PiRLAlgorithmConfig
    from lerobot_policy_pi_rl.runtime.actor import PiRLActor, Workers
    from lerobot_policy_pi_rl.runtime.transport import LEARNER_SESSION_KEY, TRAINING_DONE_KEY

    policy_cfg = learner_policy.config
    policy = PiRLPolicy(copy.deepcopy(policy_cfg)).eval()
    algorithm_cfg = PiRLAlgorithmConfig(policy_config=policy_cfg)
    algorithm = PiRLAlgorithm(policy, algorithm_cfg)
    pre, post = make_pre_post_processors(policy_cfg, dataset_stats=manipulator_stats())
    workers = Workers(queue.Queue(), queue.Queue(), queue.Queue())
    weights = PiRLAlgorithm(learner_policy, PiRLAlgorithmConfig(policy_config=policy_cfg)).get_weights()
    weights[LEARNER_SESSION_KEY], weights[TRAINING_DONE_KEY] = 7, False
    workers.parameters.put(state_to_bytes(weights))
    cfg = SimpleNamespace(policy=policy_cfg, algorithm=algorithm_cfg, actor_index=0, actor_max_chunks=chunks,
                          actor_wait_for_weights_s=30.0)
    actor = PiRLActor(cfg, policy, algorithm, pre, post, [stream], workers, threading.Event())
    assert actor.run() == 0
    transitions = []
    while not workers.transitions.empty():
        transitions += bytes_to_transitions(workers.transitions.get())
    reports = []
    while not workers.interactions.empty():
        reports.append(bytes_to_python_object(workers.interactions.get()))
    return transitions, reports


def ppo_update(policy, transitions, *, mask_interventions: bool) -> tuple[dict, list[dict]]:
    """One real `PiRLAlgorithm.update_rollout` on the actor's transitions (one epoch, one minibatch of every row,
    in arrival order); returns its stats and every call of the PPO policy loss (inputs and result)."""
    from lerobot_policy_pi_rl.rl import algorithm as algorithm_module
    from lerobot_policy_pi_rl.rl.config import PiRLAlgorithmConfig
    from lerobot_policy_pi_rl.runtime.schema import transitions_to_rollout

    rollout = transitions_to_rollout(transitions)
    calls = []
    real_loss = algorithm_module.ppo_policy_loss

    def spy(**kwargs):
        loss, stats = real_loss(**kwargs)
        calls.append({**{k: v.detach().clone() if torch.is_tensor(v) else v for k, v in kwargs.items()},
                      "loss": loss.detach().clone()})
        return loss, stats

    config = PiRLAlgorithmConfig(policy_config=policy.config, update_epochs=1, minibatch_size=len(rollout),
                                 mask_interventions=mask_interventions)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(algorithm_module, "ppo_policy_loss", spy)
        patch.setattr(torch, "randperm", lambda n, **kw: torch.arange(n, device=kw.get("device")))
        stats = algorithm_module.PiRLAlgorithm(policy, config).update_rollout(rollout).stats
    return {**stats.losses, **stats.extra}, calls


def is_intervention(transition) -> bool:
    from lerobot_policy_pi_rl.runtime.schema import IS_INTERVENTION

    return bool(transition["complementary_info"][IS_INTERVENTION.key])


# ----------------------------------------------------------------------------------------------------------------
# The scripted human (no env steps)
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_importing_the_package_registers_the_gym_id_without_loading_mujoco():
    code = (
        "import sys, gymnasium, lerobot_policy_pi_rl\n"
        f"assert {SCRIPTED_TELEOP_ENV_ID!r} in gymnasium.registry\n"
        "assert 'mujoco' not in sys.modules and 'gym_hil' not in sys.modules, 'registration imported MuJoCo'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_controller_implements_gym_hil_input_controller_interface():
    from gym_hil.wrappers.intervention_utils import InputController

    interface = {n for n in vars(InputController) if callable(getattr(InputController, n)) and not n.startswith("_")}
    assert interface >= {"update", "get_deltas", "should_intervene", "gripper_command", "get_episode_end_status",
                         "reset", "start", "stop"}
    missing = {n for n in interface if n not in vars(ScriptedTeleopController)}
    assert not missing, f"ScriptedTeleopController does not implement {sorted(missing)}"


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [("start", {"start": -1}), ("stop", {"start": 5, "stop": 4}), ("every", {"every": 0})],
)
def test_bad_intervention_window_is_refused_naming_the_value(field, kwargs):
    with pytest.raises(ValueError, match=rf"InterventionWindow\.{field}="):
        InterventionWindow(**kwargs)


def test_intervention_window_schedule():
    window = InterventionWindow(start=2, stop=4, every=3)
    taken = {(e, s) for e in range(7) for s in range(6) if window(e, s)}
    assert taken == {(e, s) for e in (0, 3, 6) for s in (2, 3)}
    assert not any(InterventionWindow(start=3, stop=3)(0, s) for s in range(10))


class _FakeSim:
    """The two things the controller reads from gym_hil's Panda: robot state and the cube sensor."""

    def __init__(self, tcp, cube, gripper=0.0):
        self.state = np.zeros(18)
        self.state[TCP_POS] = tcp
        self.state[GRIPPER] = gripper
        self.data = SimpleNamespace(sensor=lambda name: SimpleNamespace(data=np.asarray(cube, dtype=np.float64)))

    def get_robot_state(self):
        return self.state


class _NullEnv(gym.Env):
    """The smallest env gym_hil's wrapper can sit on (its `get_gamepad_action` never steps it)."""

    action_space = gym.spaces.Box(-1.0, 2.0, (4,))
    observation_space = gym.spaces.Box(-1.0, 1.0, (1,))


@pytest.mark.parametrize(
    ("tcp", "cube", "gripper", "expected"),
    [
        ([0.5, 0.0, 0.2], [0.5, 0.0, 0.02], 0.0, [0.0, 0.0, -1.0, 0.0]),  # descend, fingers open: 0
        ([0.5, 0.0, 0.02], [0.5, 0.0, 0.02], 0.0, [0.0, 0.0, 0.0, 2.0]),  # at the cube: close, 2
        ([0.5, 0.0, 0.02], [0.5, 0.0, 0.02], GRIPPER_MAX, [0.0, 0.0, 0.0, 1.0]),  # closing: hold, 1
    ],
)
def test_gym_hil_wrapper_turns_the_controller_into_the_scripted_action(tcp, cube, gripper, expected):
    """The action gym_hil's own `InputsControlWrapper` builds from the controller (its words for the gripper
    included) is `ScriptedPickController`'s action for the simulator state."""
    from lerobot_policy_pi_rl.envs.teleop import ScriptedInputsControlWrapper

    controller = ScriptedTeleopController(_FakeSim(tcp, cube, gripper), InterventionWindow(start=0, stop=1, every=1))
    wrapper = ScriptedInputsControlWrapper(_NullEnv(), controller, use_gripper=True)
    controller.reset()
    intervene, action, terminate, success, rerecord = wrapper.get_gamepad_action()
    assert intervene and not terminate and not success and not rerecord
    np.testing.assert_allclose(action, expected, atol=1e-6)
    np.testing.assert_allclose(action, controller.action, atol=1e-6)
    assert controller.history[-1].episode == 0 and controller.history[-1].step == 0
    controller.update()  # step 1: outside the window
    assert not controller.should_intervene() and controller.action is None


# ----------------------------------------------------------------------------------------------------------------
# ManipulatorStream on the real gym_manipulator env
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_manipulator_stream_flags_exactly_the_steps_the_human_took_over():
    """Two 8-step episodes, the human takes over steps 2-4 of episode 0 only. Intervened steps carry the
    controller's action; every other step executes the policy's own action (clipped to the env's action space),
    including the first step after the human lets go."""
    episode_steps, window = 8, InterventionWindow(start=2, stop=5, every=2)
    stream, controller = make_stream(episode_steps, window)
    policy_action = torch.tensor([1.7, -0.4, 0.3, 1.0])  # x beyond the declared [-1, 1]
    clipped = torch.tensor([1.0, -0.4, 0.3, 1.0])
    try:
        for episode in range(2):
            obs = stream.reset()
            assert set(obs) == {OBS_STATE} and obs[OBS_STATE].shape[-1] == 18
            for step in range(episode_steps):
                result = stream.step(policy_action)
                took_over = window(episode, step)
                assert result.intervention == took_over, (episode, step)
                if took_over:
                    assert controller.history[-1][:2] == (episode, step)
                    torch.testing.assert_close(result.executed_action, torch.as_tensor(controller.history[-1].action))
                else:
                    torch.testing.assert_close(result.executed_action, clipped, msg=f"episode {episode} step {step}")
                assert result.truncated == (step == episode_steps - 1) and not result.terminated
        assert len(controller.history) == 3
    finally:
        stream.close()


# ----------------------------------------------------------------------------------------------------------------
# The real actor and a real PPO update
# ----------------------------------------------------------------------------------------------------------------

# Two 12-step episodes of 3-step chunks (4 chunks each). The human takes over steps 4-8 of episode 0: from the
# middle of its chunk 1 (steps 3-5) to the end of chunk 2 (steps 6-8), so chunk 3 starts with the policy back in
# control.
ACTOR_EPISODE_STEPS, ACTOR_CHUNKS = 12, 8
ACTOR_WINDOW = InterventionWindow(start=4, stop=9, every=2)


@pytest.fixture(scope="module")
def actor_run():
    torch.manual_seed(0)
    from lerobot_policy_pi_rl.modeling_pi_rl import PiRLPolicy

    learner_policy = PiRLPolicy(manipulator_policy_config())
    stream, controller = make_stream(ACTOR_EPISODE_STEPS, ACTOR_WINDOW, input_keys=(OBS_STATE, FRONT, WRIST))
    try:
        transitions, reports = run_actor(stream, learner_policy, ACTOR_CHUNKS)
    finally:
        stream.close()
    return SimpleNamespace(policy=learner_policy, transitions=transitions, reports=reports,
                           takeovers=list(controller.history))


@pytest.mark.slow
def test_actor_flags_the_chunks_with_a_takeover_and_reports_the_intervention_rate(actor_run):
    rows = actor_run.transitions
    assert len(rows) == ACTOR_CHUNKS
    assert [is_intervention(tr) for tr in rows] == [False, True, True, False] + [False] * 4
    # Intervened chunks carry the human's actions, as executed: steps 4-5 end chunk 1, steps 6-8 are chunk 2.
    human = torch.stack([torch.as_tensor(t.action, dtype=torch.float32) for t in actor_run.takeovers])
    assert [(t.episode, t.step) for t in actor_run.takeovers] == [(0, step) for step in range(4, 9)]
    torch.testing.assert_close(torch.cat([rows[1]["action"][1:], rows[2]["action"]]), human)
    # No unflagged chunk executed a human action (LeRobot's gym_hil pipeline would replay the last one).
    for tr in rows:
        if not is_intervention(tr):
            assert not any(torch.allclose(a, h) for a in tr["action"] for h in human)
    assert [r["Episode length"] for r in actor_run.reports] == [ACTOR_EPISODE_STEPS] * 2
    assert [r["Episode intervention"] for r in actor_run.reports] == [1, 0]
    assert [r["Intervention rate"] for r in actor_run.reports] == pytest.approx([5 / ACTOR_EPISODE_STEPS, 0.0])
    # ... which the learner logs as the mean over recent episodes.
    from lerobot_policy_pi_rl.runtime.metrics import EpisodeWindow

    window = EpisodeWindow()
    for report in actor_run.reports:
        window.add(report)
    assert window.as_log_dict()["rollout/intervention_rate"] == pytest.approx(5 / ACTOR_EPISODE_STEPS / 2)


@pytest.mark.slow
@pytest.mark.parametrize("mask_interventions", [True, False])
def test_ppo_masks_the_flagged_chunks_out_of_the_ratio(actor_run, mask_interventions):
    """`mask_interventions`: the policy loss is the mean over unflagged rows only. The unmasked update is the
    contrast that shows the check can tell the two apart."""
    from lerobot_policy_pi_rl.rl import algorithm as algorithm_module

    flagged = torch.tensor([is_intervention(tr) for tr in actor_run.transitions])
    policy = copy.deepcopy(actor_run.policy)
    stats, calls = ppo_update(policy, actor_run.transitions, mask_interventions=mask_interventions)
    assert stats["samples/interventions"] == float(flagged.sum()) == 2.0
    assert stats["samples/used"] == float(len(flagged) - flagged.sum() * mask_interventions)
    (call,) = calls  # one epoch, one minibatch, rows in rollout order
    expected_mask = ~flagged if mask_interventions else torch.ones_like(flagged)
    assert torch.equal(call["mask"], expected_mask)

    def loss_over(rows):
        return algorithm_module.ppo_policy_loss(
            log_prob=call["log_prob"][rows], old_log_prob=call["old_log_prob"][rows],
            advantages=call["advantages"][rows], clip_low=call["clip_low"], clip_high=call["clip_high"],
            dual_clip=call["dual_clip"],
        )[0]

    unflagged, every_row = loss_over(~flagged), loss_over(torch.ones_like(flagged))
    assert not torch.allclose(unflagged, every_row, atol=1e-4)  # the flagged rows matter to the loss
    torch.testing.assert_close(call["loss"], unflagged if mask_interventions else every_row)
    torch.testing.assert_close(torch.tensor(stats["policy"]), call["loss"])
