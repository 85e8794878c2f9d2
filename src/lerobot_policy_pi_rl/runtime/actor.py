"""PI-RL actor: chunk-level rollouts with the learner's newest weights, streamed over LeRobot's gRPC transport.

    python -m lerobot_policy_pi_rl.runtime.actor <same flags as the learner> [--actor_index=0]
    (`lerobot-pi-rl-actor ...`; `--algorithm.type=sac` runs LeRobot's stock SAC actor unchanged.)

The loop, one stage per line (`PiRLActor.run`), over `n_envs` envs at once:
    wait for weights -> repeat: apply new weights (between chunks, never mid-chunk) -> preprocess observations ->
    sample_chain (one batch for all envs) -> execute up to C actions per env (stop at done) -> send one chunk
    transition per env -> reset finished envs (policy.reset()) and report their episodes.
With `record_rollouts`, each env step is also handed to a `RolloutRecorder` (a copy, counted in the `env` stage;
a writer process saves finished episodes as a LeRobotDataset).
Transport: LeRobot's `receive_policy` worker and two client streams (transitions, interactions) fed from their
queues by `QueueFeed`, each in a reconnect loop, so a restarted learner is picked up (rows of the old learner run are
dropped by the new one); a dropped connection costs at most the message being sent at the drop.
The actor stops when the learner says training is done, on SIGINT/SIGTERM, after `actor_max_chunks`, or when
the learner stays unreachable for `reconnect_timeout_s`.
"""

from __future__ import annotations

import logging
import sys
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty

import grpc
import torch
from torch.multiprocessing import Queue

from lerobot.policies import make_pre_post_processors
from lerobot.rl.actor import push_transitions_to_transport_queue, receive_policy
from lerobot.rl.queue import get_last_item_from_queue
from lerobot.transport import services_pb2
from lerobot.transport.utils import bytes_to_state_dict, python_object_to_bytes, send_bytes_in_chunks
from lerobot.utils.process import ProcessSignalHandler
from lerobot.utils.random_utils import set_seed

from .config import PiRLTrainRLServerPipelineConfig, apply_torch_threads, make_run_policy, policy_dataset_stats
from .env_streams import StepResult, assign_groups, make_env_streams
from .metrics import TimeSplit
from .rollout_recorder import RolloutRecorder, build_recorder
from .schema import GROUP_EPISODE_BITS, STREAM_STRIDE, ChunkOrigin, ChunkOutcome, chunk_transition
from .transport import (
    LEARNER_SESSION_KEY,
    PLAINTEXT,
    TRAINING_DONE_KEY,
    ClientSecurity,
    LearnerRefusedToken,
    client_security,
    new_client,
    wait_for_learner,
)

logger = logging.getLogger("lerobot_policy_pi_rl.actor")


@dataclass
class EpisodeStats:
    reward: float = 0.0
    length: int = 0
    intervention_steps: int = 0
    success: bool = False

    def add(self, step: StepResult) -> None:
        self.reward += step.reward
        self.length += 1
        self.intervention_steps += int(step.intervention)
        self.success = self.success or step.success


@dataclass
class Workers:
    parameters: Queue
    transitions: Queue
    interactions: Queue
    threads: list[threading.Thread] = field(default_factory=list)
    learner_lost: threading.Event = field(default_factory=threading.Event)


class PiRLActor:
    def __init__(self, cfg: PiRLTrainRLServerPipelineConfig, policy, algorithm, preprocessor, postprocessor, streams,
                 workers: Workers, shutdown_event, recorder: RolloutRecorder | None = None):
        self.cfg = cfg
        self.policy = policy
        self.algorithm = algorithm
        self.preprocessor = preprocessor
        self.postprocessor = postprocessor
        self.streams = streams
        self.workers = workers
        self.shutdown_event = shutdown_event
        self.recorder = recorder
        self.device = torch.device(cfg.policy.device)
        self.C = cfg.policy.n_action_steps
        self.session = -1
        self.training_done = False
        self.weights_applied = 0
        self.chunks_sent = 0
        # Rows sent with the current policy version (back-pressure, `wait_while_ahead`).
        self.rows_this_version = 0
        self.waits_for_weights = 0
        self.env_steps = 0
        self.episodes = 0
        self.stream_ids = [cfg.actor_index * STREAM_STRIDE + i for i in range(len(streams))]
        # Which task each stream runs (multi-task suites spread the envs over their tasks), one line per task.
        by_task: dict[tuple[str, str], list[int]] = {}
        for sid, stream in zip(self.stream_ids, streams, strict=True):
            by_task.setdefault((stream.task_name, stream.task), []).append(sid)
        for (name, instruction), sids in by_task.items():
            logger.info("[ACTOR] task %s (%r): streams %s", name or "-", instruction, sids)
        # GRPO: groups of envs that reset to the same state; a group's e-th episodes form one scored group.
        self.group_size = cfg.algorithm.advantage.episodes_per_group
        if self.group_size > 1:
            assign_groups(streams, self.group_size)
        self.chunk_index = [0] * len(streams)
        self.episode = [EpisodeStats() for _ in streams]
        # Where the actor's wall time goes: env steps (physics, rendering), chain sampling, the policy's processors
        # (normalization, tokenization), handing transitions to the transport, waiting for weights.
        self.time_split = TimeSplit()

    # ------------------------------------------------------------------------------------------------------
    # The loop
    # ------------------------------------------------------------------------------------------------------

    def run(self) -> int:
        if not self.wait_for_first_weights():
            return 0 if self.shutdown_event.is_set() else 1
        clock = self.time_split
        observations = self.reset_all()
        with clock("processors"):
            batch = self.preprocess(observations)
        while not self.should_stop():
            with clock("weights"):
                self.apply_new_weights()
                self.wait_while_ahead()
            if self.training_done:
                break
            with clock("sampling"):
                sample = self.policy.sample_chain(self.stack(batch))
            with clock("processors"):
                actions = self.postprocess(sample.action_chunk[:, : self.C])
            with clock("env"):
                outcomes = [self.execute_chunk(i, actions[i]) for i in range(len(self.streams))]
            with clock("processors"):
                next_batch = self.preprocess([out.next_observation for out in outcomes])
            with clock("transport"):
                self.send(batch, next_batch, outcomes, sample)
            batch = self.next_batch(outcomes, next_batch)
        return 1 if self.workers.learner_lost.is_set() and not self.training_done else 0

    # ------------------------------------------------------------------------------------------------------
    # Stages
    # ------------------------------------------------------------------------------------------------------

    def should_stop(self) -> bool:
        if self.shutdown_event.is_set() or self.training_done or self.workers.learner_lost.is_set():
            return True
        return self.cfg.actor_max_chunks > 0 and min(self.chunk_index) >= self.cfg.actor_max_chunks

    def wait_for_first_weights(self) -> bool:
        """Act only with the learner's weights (a locally initialised policy would be a different policy)."""
        while self.session < 0:
            if self.shutdown_event.is_set() or self.workers.learner_lost.is_set():
                return False
            self.apply_new_weights(block=True)
        return True

    def wait_while_ahead(self) -> None:
        """Back-pressure: after a whole rollout's rows (`algorithm.rollout_chunks`) with the current weights, wait for
        the next ones, for at most `actor_wait_for_weights_s` (then send another rollout's worth and wait again), so
        that an actor faster than the learner does not bury it in rows that age out unread. A rollout per actor, not
        a share of one: any one actor can still fill the learner's rollout, so a lost actor or dropped rows never
        stall the run. GRPO never waits: it takes complete groups only, which can span more than one rollout."""
        cap = self.cfg.algorithm.rollout_chunks
        if self.rows_this_version < cap or self.group_size > 1 or self.cfg.actor_wait_for_weights_s <= 0:
            return
        timeout = self.cfg.actor_wait_for_weights_s
        self.waits_for_weights += 1
        # Any weights message ends the wait, also one with the same version number (a learner restarted from a
        # checkpoint publishes that checkpoint's version again, in a new session).
        applied, deadline = self.weights_applied, time.monotonic() + timeout
        while self.weights_applied == applied and time.monotonic() < deadline and not self.should_stop():
            self.apply_new_weights(block=True)
        if self.weights_applied == applied:
            self.rows_this_version = 0
            if not self.should_stop():
                logger.info("[ACTOR] no new weights %.0f s after a rollout's %d rows with version %d: sending more",
                            timeout, cap, self.algorithm.policy_version)

    def apply_new_weights(self, block: bool = False) -> None:
        message = get_last_item_from_queue(self.workers.parameters, block=block, timeout=0.2)
        if message is None:
            return
        self.rows_this_version = 0
        weights = bytes_to_state_dict(message)
        self.algorithm.load_weights(weights, device=self.device)  # also policy.reset()
        self.session = int(weights[LEARNER_SESSION_KEY])
        self.training_done = bool(weights.get(TRAINING_DONE_KEY, False))
        self.weights_applied += 1
        # One line per update per actor is detail; the last weights (training done) end the actor's run.
        logger.log(logging.INFO if self.training_done else logging.DEBUG, "[ACTOR] applied weights version %d%s",
                   self.algorithm.policy_version, " (training done)" if self.training_done else "")

    def reset_all(self) -> list[dict]:
        self.policy.reset()
        observations = [stream.reset() for stream in self.streams]
        if self.recorder is not None:
            for i, observation in enumerate(observations):
                self.recorder.begin(i, observation)
        return observations

    def preprocess(self, observations: list[dict]) -> list[dict[str, torch.Tensor]]:
        """Per env: the policy's preprocessor (normalize, batch dim, device) with the env's task string."""
        return [self.preprocess_one(i, obs) for i, obs in enumerate(observations)]

    @staticmethod
    def stack(batch: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return {k: torch.cat([b[k] for b in batch]) for k in batch[0]}

    def postprocess(self, chunk: torch.Tensor) -> torch.Tensor:
        """Normalized `[N, C, A]` -> env actions `[N, C, A]` on cpu (the policy's un-normalizer)."""
        return self.postprocessor(chunk).float().cpu()

    def execute_chunk(self, i: int, actions: torch.Tensor) -> ChunkOutcome:
        """Step env i with up to C actions; stop at the first done (the chunk ends the episode there)."""
        executed, reward, step = [], 0.0, None
        intervention = success = False
        for action in actions:
            step = self.streams[i].step(action)
            self.episode[i].add(step)
            if self.recorder is not None:
                self.recorder.step(i, step, self.algorithm.policy_version)
            executed.append(step.executed_action.reshape(-1))
            reward += step.reward
            intervention |= step.intervention
            success |= step.success
            if step.terminated or step.truncated:
                break
        self.env_steps += len(executed)
        return ChunkOutcome(step.observation, torch.stack(executed), reward, step.terminated, step.truncated,
                            success, intervention)

    def send(self, batch: list[dict], next_batch: list[dict], outcomes: list[ChunkOutcome], sample) -> None:
        """One chunk transition per env: row i of the batched `ChainSample` with env i's outcome."""
        transitions = []
        for i, out in enumerate(outcomes):
            transitions.append(
                chunk_transition(
                    observation=batch[i],
                    next_observation=next_batch[i],
                    sample=sample,
                    row=i,
                    outcome=out,
                    origin=ChunkOrigin(self.algorithm.policy_version, self.session, self.stream_ids[i],
                                       self.chunk_index[i], self.group_id(i)),
                )
            )
            self.chunk_index[i] += 1
        push_transitions_to_transport_queue(transitions, self.workers.transitions)
        self.chunks_sent += len(transitions)
        self.rows_this_version += len(transitions)

    def group_id(self, i: int) -> int:
        """GRPO group of env i's current episode (-1 when not grouping): its group's first stream id and the
        episode index, so every actor and env group labels its episodes apart."""
        if self.group_size == 1:
            return -1
        leader = self.stream_ids[i - i % self.group_size]
        return (leader << GROUP_EPISODE_BITS) | self.streams[i].episode_index

    def preprocess_one(self, i: int, observation: dict) -> dict[str, torch.Tensor]:
        processed = self.preprocessor({**observation, "task": self.streams[i].task})
        return {k: v for k, v in processed.items() if k.startswith("observation") and torch.is_tensor(v)}

    def next_batch(self, outcomes: list[ChunkOutcome], next_batch: list[dict]) -> list[dict]:
        """The next decision's processed observations: running episodes continue from their (already processed)
        next observation; finished ones are reported to the learner and reset (policy.reset())."""
        batch = list(next_batch)
        for i, out in enumerate(outcomes):
            if out.terminated or out.truncated:
                self.report_episode(i)
                if self.recorder is not None:
                    self.recorder.end_episode(i)
                self.policy.reset()
                with self.time_split("env"):
                    observation = self.streams[i].reset()
                if self.recorder is not None:
                    self.recorder.begin(i, observation)
                with self.time_split("processors"):
                    batch[i] = self.preprocess_one(i, observation)
        return batch

    def report_episode(self, i: int) -> None:
        ep = self.episode[i]
        self.episodes += 1
        message = {
            "Episodic reward": ep.reward,
            "Interaction step": self.env_steps,
            "Episode length": ep.length,
            "Success": float(ep.success),
            "Episode intervention": int(ep.intervention_steps > 0),
            "Intervention rate": ep.intervention_steps / max(ep.length, 1),
            "Policy version": self.algorithm.policy_version,
            "Stream id": self.stream_ids[i],
            "Task": self.streams[i].task_name,
        }
        self.workers.interactions.put(python_object_to_bytes(message))
        self.episode[i] = EpisodeStats()

    def close(self) -> None:
        self.shutdown_event.set()
        try:
            if self.recorder is not None:
                self.recorder.close()  # first: finished episodes are written before anything else can fail
        finally:
            for t in self.workers.threads:
                t.join(timeout=5.0)
            for stream in self.streams:
                stream.close()


# ----------------------------------------------------------------------------------------------------------
# Assembly
# ----------------------------------------------------------------------------------------------------------


def _keep_streaming(name: str, worker, cfg, queue: Queue, shutdown_event, learner_lost: threading.Event,
                    security: ClientSecurity) -> None:
    """Run one of LeRobot's actor transport workers; when its stream breaks, wait for the learner and rerun."""
    alc = cfg.policy.actor_learner_config
    while not shutdown_event.is_set():
        stub, channel = new_client(alc.learner_host, alc.learner_port, security)
        try:
            worker(cfg, queue, shutdown_event, stub, channel)
        finally:
            channel.close()
        if shutdown_event.is_set():
            return
        logger.warning("[ACTOR] %s stream to the learner ended; reconnecting", name)
        try:
            back = wait_for_learner(alc.learner_host, alc.learner_port, shutdown_event, cfg.reconnect_timeout_s,
                                    security)
        except LearnerRefusedToken as err:
            logger.error("[ACTOR] %s", err)
            learner_lost.set()
            return
        if not back:
            if not shutdown_event.is_set():
                logger.error("[ACTOR] learner unreachable for %.0fs: giving up", cfg.reconnect_timeout_s)
                learner_lost.set()
            return


class QueueFeed:
    """Feeds one client-streaming call after another (one per connection) from one queue, in queue order.

    gRPC reads a call's request iterator from its own thread, and that thread asks for the next item before it
    notices that the call has ended: a plain queue-reading generator would take one more message after a dropped
    connection and lose it, whenever that message comes (seconds later, after the reconnect). Here a message taken for
    a call that has ended is kept and sent first by the next call; takes are serialized, so the old call's reader
    and the new one cannot swap two messages. Lost at a drop: only the message whose chunks were being sent."""

    def __init__(self, queue: Queue, message_class, timeout_s: float):
        self.queue, self.message_class, self.timeout_s = queue, message_class, timeout_s
        self._take_lock = threading.Lock()
        self._kept: bytes | None = None

    def _take(self, call_ended) -> bytes | None:
        with self._take_lock:
            if call_ended():
                return None
            if self._kept is not None:
                message, self._kept = self._kept, None
                return message
            try:
                message = self.queue.get(timeout=self.timeout_s)
            except Empty:
                return None
            if call_ended():
                self._kept = message
                return None
            return message

    def requests(self, call_ended, shutdown_event):
        while not shutdown_event.is_set() and not call_ended():
            message = self._take(call_ended)
            if message is not None:
                yield from send_bytes_in_chunks(message, self.message_class)

    def worker(self, method: str):
        """A transport worker (LeRobot's signature) streaming this feed over `stub.<method>` until the call ends."""

        def stream(cfg, _queue, shutdown_event, stub, _channel) -> None:
            box: list = []
            call = getattr(stub, method).future(self.requests(lambda: bool(box) and box[0].done(), shutdown_event))
            box.append(call)
            try:
                call.result()
            except grpc.RpcError as err:
                logger.debug("[ACTOR] %s ended: %s", method, err.code())

        return stream


def start_workers(cfg: PiRLTrainRLServerPipelineConfig, shutdown_event,
                  security: ClientSecurity = PLAINTEXT) -> Workers:
    # LeRobot's workers close their channel and re-init logging unless they run as threads.
    cfg.policy.concurrency.actor = "threads"
    workers = Workers(Queue(), Queue(), Queue())
    timeout_s = cfg.policy.actor_learner_config.queue_get_timeout
    transitions = QueueFeed(workers.transitions, services_pb2.Transition, timeout_s)
    interactions = QueueFeed(workers.interactions, services_pb2.InteractionMessage, timeout_s)
    for name, fn, queue in (
        ("parameters", receive_policy, workers.parameters),
        ("transitions", transitions.worker("SendTransitions"), workers.transitions),
        ("interactions", interactions.worker("SendInteractions"), workers.interactions),
    ):
        thread = threading.Thread(
            target=_keep_streaming,
            args=(name, fn, cfg, queue, shutdown_event, workers.learner_lost, security),
            name=f"pi_rl-actor-{name}",
            daemon=True,
        )
        thread.start()
        workers.threads.append(thread)
    return workers


class ActorStopped(Exception):
    """Shutdown was requested (a signal) before the learner answered: a stop, not a connection failure. The
    launcher's clean-up after a finished learner ends a slow-starting actor this way."""


def build_actor(cfg: PiRLTrainRLServerPipelineConfig, shutdown_event=None) -> PiRLActor:
    """Assemble policy (+ algorithm, for versioned weight loading), processors, envs and transport workers."""
    from ..rl.algorithm import PiRLAlgorithm

    if shutdown_event is None:
        shutdown_event = ProcessSignalHandler(use_threads=True).shutdown_event
    security = client_security(cfg.security)  # a bad certificate or token path fails before any model is built
    policy = make_run_policy(cfg)  # the learner's build, so the frozen weights it does not publish match
    # This actor's own streams (exploration noise, env resets) from here on.
    seed = (cfg.seed or 0) + 1_000 * (cfg.actor_index + 1)
    set_seed(seed)
    policy.eval()
    algorithm = PiRLAlgorithm(policy=policy, config=cfg.algorithm)
    preprocessor, postprocessor = make_pre_post_processors(
        policy_cfg=cfg.policy,
        pretrained_path=str(cfg.policy.pretrained_path) if cfg.policy.pretrained_path else None,
        dataset_stats=policy_dataset_stats(cfg),
    )
    streams = make_env_streams(cfg, cfg.n_envs, seed)
    alc = cfg.policy.actor_learner_config
    if not wait_for_learner(alc.learner_host, alc.learner_port, shutdown_event, cfg.reconnect_timeout_s, security):
        if shutdown_event.is_set():
            raise ActorStopped(f"stopped before the learner at {alc.learner_host}:{alc.learner_port} answered")
        raise ConnectionError(f"no learner at {alc.learner_host}:{alc.learner_port} after {cfg.reconnect_timeout_s}s")
    workers = start_workers(cfg, shutdown_event, security)
    actor = PiRLActor(cfg, policy, algorithm, preprocessor, postprocessor, streams, workers, shutdown_event)
    actor.recorder = build_recorder(cfg, streams, actor.stream_ids)
    return actor


def run_actor(cfg: PiRLTrainRLServerPipelineConfig) -> int:
    from .console import setup_logging

    setup_logging(cfg, f"actor{cfg.actor_index}")
    logger.info("[ACTOR] torch threads: %d", apply_torch_threads(cfg))
    try:
        actor = build_actor(cfg)
    except ActorStopped as e:
        # Same exit code as an actor stopped by a signal mid-run: nothing was collected, nothing is lost.
        logger.info("[ACTOR] %s: exiting without collecting", e)
        return 0
    t0 = time.perf_counter()
    try:
        code = actor.run()
        # Let the last transitions leave before the workers stop.
        deadline = time.monotonic() + 5.0
        while not actor.workers.transitions.empty() and time.monotonic() < deadline and not actor.training_done:
            time.sleep(0.05)
    finally:
        actor.close()
    logger.info(
        "[ACTOR] done: %d chunks, %d env steps, %d episodes, %d weight updates applied, %d waits for weights after "
        "a full rollout, %.1f env steps/s",
        actor.chunks_sent, actor.env_steps, actor.episodes, actor.weights_applied, actor.waits_for_weights,
        actor.env_steps / max(time.perf_counter() - t0, 1e-9),
    )
    split = actor.time_split.summary()
    logger.info("[ACTOR] time: %s", TimeSplit.format(split))
    write_time_split(cfg, split, env_steps=actor.env_steps)
    return code


TIME_SPLIT_DIR = "time_split"


def write_time_split(cfg: PiRLTrainRLServerPipelineConfig, split: dict[str, float], *, env_steps: int) -> Path:
    """`<output_dir>/time_split/actor<i>.json`: the actor's wall time per stage, for reports."""
    out = Path(cfg.output_dir) / TIME_SPLIT_DIR / f"actor{cfg.actor_index}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"seconds": split, "env_steps": env_steps}, indent=2))
    return out


def main(argv: list[str] | None = None) -> int:
    from .cli import run_entry_point

    return run_entry_point("actor", argv, pi_rl=run_actor)


if __name__ == "__main__":
    sys.exit(main())
