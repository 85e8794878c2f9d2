"""`lerobot-pi-rl-actor --algorithm.type=sac`: LeRobot's SAC acting in any env this package's entry points build.

    lerobot-pi-rl-actor --policy.type=gaussian_actor --algorithm.type=sac --env.type=pi_rl_pickcube ...

With `env.type=gym_manipulator` this is LeRobot's own actor (`lerobot.rl.actor`), unchanged. LeRobot's actor can
only build its env with `make_robot_env` (gym_manipulator: a real robot or gym_hil with two rendered cameras), so
for every other env (e.g. the state-only `pi_rl_pickcube`) `SACEnvActor` runs the same loop over this package's
env streams (`runtime.env_streams.make_env_streams`), with everything SAC-specific taken from LeRobot unchanged:
`make_policy` (gaussian_actor), `make_algorithm` (SAC), the policy's processors, the weight loading
(`update_policy_parameters`, at episode ends as upstream), the transition format (`Transition` with
`complementary_info = {discrete_penalty, is_intervention}`) and the transport workers. The learner is LeRobot's
stock SAC learner (`baselines.sac.learner`).

The loop, as upstream: wait for the learner's first weights -> for `policy.online_steps` env steps: preprocess
the observation -> `select_action` -> unnormalize -> step -> buffer the transition; at an episode end: load the
newest weights, send the episode's transitions and an episode summary, reset.
Differences from upstream, all outside the learning rule: it waits for the first weights instead of acting with
a local random init; it stops its transport workers and exits once the step budget is spent; it writes
`<output_dir>/metrics.jsonl` (one line per episode: `wall_time_s`, `rollout/interaction_steps`,
`rollout/success_rate` over the last 100 episodes, ...), the learning curve the stock learner does not write.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from lerobot.policies import make_policy, make_pre_post_processors
from lerobot.rl.actor import push_transitions_to_transport_queue, update_policy_parameters
from lerobot.rl.algorithms.factory import make_algorithm
from lerobot.rl.queue import get_last_item_from_queue
from lerobot.teleoperators.utils import TeleopEvents
from lerobot.transport.utils import bytes_to_state_dict, python_object_to_bytes
from lerobot.utils.process import ProcessSignalHandler
from lerobot.utils.random_utils import set_seed
from lerobot.utils.transition import Transition

from ...runtime.actor import Workers, start_workers
from ...runtime.console import setup_logging
from ...runtime.env_streams import make_env_streams
from ...runtime.metrics import EpisodeWindow
from ...runtime.transport import wait_for_learner

logger = logging.getLogger("lerobot_policy_pi_rl.baselines.sac.actor")

# A SAC run on PickCube ends thousands of episodes: one console line per this many (every one is in metrics.jsonl
# and, at DEBUG, in the log).
CONSOLE_EVERY_EPISODES = 10


class SACEnvActor:
    def __init__(self, cfg, policy, algorithm, preprocessor, postprocessor, stream, workers: Workers,
                 shutdown_event):
        self.cfg = cfg
        self.policy = policy
        self.algorithm = algorithm
        self.preprocessor = preprocessor
        self.postprocessor = postprocessor
        self.stream = stream
        self.workers = workers
        self.shutdown_event = shutdown_event
        self.device = torch.device(cfg.policy.device)
        self.input_keys = list(cfg.policy.input_features)
        self.env_steps = 0
        self.episodes = 0
        self.window = EpisodeWindow()
        self.started = time.perf_counter()
        name = "metrics.jsonl" if cfg.actor_index == 0 else f"metrics_actor{cfg.actor_index}.jsonl"
        self.metrics_path = Path(cfg.output_dir) / name

    def run(self) -> int:
        if not self.wait_for_first_weights():
            return 0 if self.shutdown_event.is_set() else 1
        observation = self.observation(self.stream.reset())
        pending: list[Transition] = []
        episode = {"reward": 0.0, "length": 0, "success": False, "interventions": 0}
        for _ in range(self.cfg.policy.online_steps):
            if self.shutdown_event.is_set() or self.workers.learner_lost.is_set():
                break
            step = self.stream.step(self.act(observation)[0])
            next_observation = self.observation(step.observation)
            pending.append(
                Transition(
                    state=observation,
                    action=step.executed_action[None],  # env units, as upstream's `teleop_action`
                    reward=step.reward,
                    next_state=next_observation,
                    done=step.terminated,
                    truncated=step.truncated,
                    complementary_info={
                        "discrete_penalty": torch.tensor([0.0]),
                        TeleopEvents.IS_INTERVENTION.value: step.intervention,
                    },
                )
            )
            self.env_steps += 1
            episode["reward"] += step.reward
            episode["length"] += 1
            episode["success"] |= step.success
            episode["interventions"] += int(step.intervention)
            if step.terminated or step.truncated:
                update_policy_parameters(self.algorithm, self.workers.parameters, self.device)
                push_transitions_to_transport_queue(pending, self.workers.transitions)
                self.report_episode(episode)
                pending = []
                episode = {"reward": 0.0, "length": 0, "success": False, "interventions": 0}
                observation = self.observation(self.stream.reset())
            else:
                observation = next_observation
        if pending:  # the budget ended mid-episode: send the partial episode too (upstream drops it)
            push_transitions_to_transport_queue(pending, self.workers.transitions)
        return 1 if self.workers.learner_lost.is_set() else 0

    def wait_for_first_weights(self) -> bool:
        while not (self.shutdown_event.is_set() or self.workers.learner_lost.is_set()):
            message = get_last_item_from_queue(self.workers.parameters, block=True, timeout=0.2)
            if message is not None:
                self.algorithm.load_weights(bytes_to_state_dict(message), device=self.device)
                return True
        return False

    def observation(self, raw: dict) -> dict[str, torch.Tensor]:
        """Policy input features, float32 `[1, D]`, unnormalized (what the replay buffer stores)."""
        return {k: torch.as_tensor(raw[k], dtype=torch.float32).reshape(1, -1) for k in self.input_keys}

    @torch.no_grad()
    def act(self, observation: dict[str, torch.Tensor]) -> torch.Tensor:
        """`[1, A]` env-unit action (continuous actions only: `num_discrete_actions` is not supported here)."""
        action = self.policy.select_action(batch=self.preprocessor.process_observation(dict(observation)))
        action = self.postprocessor.process_action(action).float().cpu()
        if not torch.isfinite(action).all():
            # What torch.distributions' argument validation (off in this process, see `run_env_actor`) would
            # have caught one step earlier: never send a NaN action to a robot or store it in the buffer.
            raise ValueError(f"SAC policy produced a non-finite action {action.tolist()} at env step {self.env_steps}")
        return action

    def report_episode(self, episode: dict) -> None:
        self.episodes += 1
        message = {
            "Episodic reward": episode["reward"],
            "Interaction step": self.env_steps,
            "Episode length": episode["length"],
            "Success": float(episode["success"]),
            "Episode intervention": int(episode["interventions"] > 0),
            "Intervention rate": episode["interventions"] / max(episode["length"], 1),
        }
        self.workers.interactions.put(python_object_to_bytes(message))
        self.window.add(message)
        record = {
            "episode": self.episodes,
            "wall_time_s": time.perf_counter() - self.started,
            "rollout/interaction_steps": float(self.env_steps),
            "rollout/episode_success": float(episode["success"]),
            **self.window.as_log_dict(),
        }
        self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        level = logging.INFO if self.episodes % CONSOLE_EVERY_EPISODES == 0 else logging.DEBUG
        logger.log(level, "[ACTOR] episode %d | env steps %d | return %.2f | success %d | success rate (last %d) %.2f",
                   self.episodes, self.env_steps, episode["reward"], int(episode["success"]),
                   len(self.window.successes), record["rollout/success_rate"])

    def close(self) -> None:
        # Let the last transitions leave before the workers stop.
        deadline = time.monotonic() + 5.0
        while not self.workers.transitions.empty() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        self.shutdown_event.set()
        for t in self.workers.threads:
            t.join(timeout=5.0)
        # Unread weight messages would keep the queues' feeder threads (and so the process) alive at exit.
        for queue in (self.workers.parameters, self.workers.transitions, self.workers.interactions):
            queue.cancel_join_thread()
        self.stream.close()


def build_sac_actor(cfg, shutdown_event=None) -> SACEnvActor:
    if cfg.n_envs != 1:
        raise ValueError(f"n_envs={cfg.n_envs}: the SAC actor steps one env (as LeRobot's), use 1")
    if cfg.policy.num_discrete_actions is not None:
        raise ValueError("policy.num_discrete_actions is only supported by LeRobot's gym_manipulator SAC actor")
    seed = (cfg.seed or 0) + 1_000 * (cfg.actor_index + 1)
    set_seed(seed)
    if shutdown_event is None:
        shutdown_event = ProcessSignalHandler(use_threads=True).shutdown_event
    policy = make_policy(cfg=cfg.policy, env_cfg=cfg.env).eval()
    algorithm = make_algorithm(cfg=cfg.algorithm, policy=policy)
    preprocessor, postprocessor = make_pre_post_processors(policy_cfg=cfg.policy,
                                                           dataset_stats=cfg.policy.dataset_stats)
    (stream,) = make_env_streams(cfg, 1, seed)
    alc = cfg.policy.actor_learner_config
    if not wait_for_learner(alc.learner_host, alc.learner_port, shutdown_event, cfg.reconnect_timeout_s):
        raise ConnectionError(f"no learner at {alc.learner_host}:{alc.learner_port} after {cfg.reconnect_timeout_s}s")
    workers = start_workers(cfg, shutdown_event)
    return SACEnvActor(cfg, policy, algorithm, preprocessor, postprocessor, stream, workers, shutdown_event)


def run(cfg) -> int:
    """The SAC actor of `lerobot-pi-rl-actor`: LeRobot's own for `gym_manipulator`, else `SACEnvActor`."""
    if cfg.env.type == "gym_manipulator":
        return run_stock_actor(cfg)
    return run_env_actor(cfg)


def run_stock_actor(cfg) -> int:
    """LeRobot's own actor, unchanged. It runs `policy.online_steps` env steps and returns (its workers end when
    it closes their queues)."""
    from lerobot.rl.actor import actor_cli

    actor_cli.__wrapped__(cfg)  # unwrapped: the parser would re-parse argv with LeRobot's own config class
    return 0


def run_env_actor(cfg) -> int:
    """`SACEnvActor` on this package's env streams, until its `policy.online_steps` are spent."""
    setup_logging(cfg, f"actor{cfg.actor_index}")
    # torch.distributions re-validates every argument of every distribution it builds. For the gaussian_actor's
    # TanhMultivariateNormalDiag that is a positive-definiteness check of the scale per env step, ~30 % of this
    # loop's CPU on PickCube. The sampled actions are the same without it; `act` checks them for NaN/inf instead.
    torch.distributions.Distribution.set_default_validate_args(False)
    actor = build_sac_actor(cfg)
    t0 = time.perf_counter()
    try:
        code = actor.run()
    finally:
        actor.close()
    logger.info("[ACTOR] done: %d env steps, %d episodes, %.1f env steps/s", actor.env_steps, actor.episodes,
                actor.env_steps / max(time.perf_counter() - t0, 1e-9))
    return code
