"""PI-RL learner: collect chunk transitions from actors over gRPC, run PPO updates, publish versioned weights.

    python -m lerobot_policy_pi_rl.runtime.learner --policy.type=pi_rl --env.type=pi_rl_pickcube \
        --algorithm.type=pi_rl --algorithm.rollout_chunks=256 --num_updates=100 --output_dir=outputs/pi_rl
    (`lerobot-pi-rl-learner ...`; `--algorithm.type=sac` runs LeRobot's stock SAC learner unchanged.)

The loop, one stage per line (`PiRLLearner.run`):
    publish weights v0 -> repeat: collect `rollout_chunks` fresh rows (buffering intervention chunks as offline
    rows on arrival) -> PPO update (mixing in offline rows when `algorithm.offline.ratio > 0`) -> publish the
    new weights (unless every step was skipped) -> log -> stop on repeated skipped steps -> checkpoint every N
    updates -> after `num_updates`: final checkpoint (unless just written), tell actors to stop, exit.
Checkpoints (`checkpoint.py`) use LeRobot's layout; `--resume=true` restores weights, optimizers, RNG and
counters from `checkpoints/last` or fails loudly. Metrics (`metrics.py`) go to `metrics.jsonl`, the console and,
with `--wandb.enable=true`, to W&B through LeRobot's own logger.

Data-parallel (`distributed.py`): the same module started as N ranks,
    torchrun --nproc_per_node N -m lerobot_policy_pi_rl.runtime.learner ...
    accelerate launch --num_processes N -m lerobot_policy_pi_rl.runtime.learner ...
runs this loop on rank 0 only; ranks 1..N-1 apply their share of every update's global minibatches and exit when
rank 0 ends. `algorithm.minibatch_size` stays the global minibatch; a checkpoint resumes on any number of ranks.
"""

from __future__ import annotations

import logging
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from queue import Empty
from typing import Any

import torch

from lerobot.policies import make_pre_post_processors
from lerobot.transport.utils import bytes_to_python_object, state_to_bytes
from lerobot.utils.process import ProcessSignalHandler
from lerobot.utils.transition import Transition

from ..rl.algorithm import PiRLAlgorithm, UpdateResult
from ..rl.data_parallel import SINGLE_PROCESS, DataParallel
from ..rl.grpo import complete_groups
from . import checkpoint, distributed
from .config import PiRLTrainRLServerPipelineConfig, apply_torch_threads, make_run_policy, policy_dataset_stats
from .console import setup_logging
from .metrics import Counters, DropCounts, EpisodeWindow, MetricsFile, console_line, update_log
from .offline import build_offline_source
from .schema import (
    GROUP_ID,
    NUM_EXECUTED,
    POLICY_VERSION,
    RejectedMessage,
    RejectionLog,
    RowShapes,
    admit,
    decode_message,
    transitions_to_rollout,
)
from .transport import (
    LEARNER_SESSION_KEY,
    TRAINING_DONE_KEY,
    BroadcastLearnerService,
    TokenAuthInterceptor,
    serve_learner,
    server_security,
    stop_server,
)

logger = logging.getLogger("lerobot_policy_pi_rl.learner")


class SkippedStepsError(RuntimeError):
    """Too many consecutive updates skipped optimizer steps for non-finite numbers."""


@dataclass
class Transport:
    """Queues between the gRPC server thread and the training loop, and the server itself."""

    transition_queue: Any
    interaction_queue: Any
    parameters_queue: Any
    service: BroadcastLearnerService
    server: Any
    # The token check (None without a token); counts the calls it refused.
    auth: TokenAuthInterceptor | None = None


class PiRLLearner:
    # Exact per-row shapes checked on arrival (None: dtype and rank only).
    row_shapes: RowShapes | None = None

    def __init__(
        self,
        cfg: PiRLTrainRLServerPipelineConfig,
        policy,
        algorithm,
        preprocessor,
        postprocessor,
        transport: Transport,
        shutdown_event,
        wandb_logger=None,
    ):
        self.cfg = cfg
        self.policy = policy
        self.algorithm = algorithm
        self.preprocessor = preprocessor
        self.postprocessor = postprocessor
        self.transport = transport
        self.shutdown_event = shutdown_event
        self.wandb = wandb_logger
        self.counters = Counters()
        self.drops = DropCounts()
        self.episodes = EpisodeWindow()
        self.foreign = RejectionLog(logger)
        self.row_shapes = RowShapes.of(policy) if policy is not None else None
        # Rows from another learner run (e.g. sampled before a crash) carry another session id and are dropped.
        self.session = random.SystemRandom().randrange(1, 2**62)
        self.pending: list[Transition] = []
        self.started = time.perf_counter()
        self.metrics = MetricsFile(Path(cfg.output_dir) / "metrics.jsonl")
        self.skipped_in_a_row = 0
        # GRPO scores whole groups of `group_size` episodes (1: no grouping); groups that lost rows are dropped.
        self.group_size = cfg.algorithm.advantage.episodes_per_group
        self.broken_groups: set[int] = set()
        self.checkpointed_update: int | None = None

    # ------------------------------------------------------------------------------------------------------
    # The loop
    # ------------------------------------------------------------------------------------------------------

    def run(self) -> int:
        """Train for `num_updates`; returns the process exit code."""
        self.publish_weights()
        while self.counters.updates < self.cfg.num_updates:
            t0 = time.perf_counter()
            rows = self.collect_rollout_rows()
            if rows is None:
                logger.info("[LEARNER] shutdown requested after %d updates", self.counters.updates)
                break
            t_collect = time.perf_counter() - t0
            result = self.algorithm.update_rollout(transitions_to_rollout(rows))
            self.counters.updates += 1
            if result.weights_changed:
                self.publish_weights()
            self.log_update(result.stats, len(rows), t_collect, time.perf_counter() - t0)
            self.check_skipped_steps(result)
            self.maybe_checkpoint()
        done = self.counters.updates >= self.cfg.num_updates
        if done and self.checkpointed_update != self.counters.updates:
            self.save_checkpoint()
        self.publish_weights(training_done=done)
        return 0

    # ------------------------------------------------------------------------------------------------------
    # Stages
    # ------------------------------------------------------------------------------------------------------

    def publish_weights(self, training_done: bool = False) -> None:
        weights = self.algorithm.get_weights()
        weights[LEARNER_SESSION_KEY] = self.session
        weights[TRAINING_DONE_KEY] = training_done
        self.transport.parameters_queue.put(state_to_bytes(weights))

    def collect_rollout_rows(self) -> list[Transition] | None:
        """Drain actor messages until `rollout_chunks` fresh, usable rows are pending; None on shutdown.

        Usable: any fresh row for GAE; for GRPO only rows of complete groups (the rollout then takes every
        complete group, so it may exceed `rollout_chunks`; rows of unfinished groups wait for the next update).
        """
        need = self.cfg.algorithm.rollout_chunks
        self.pending = self.keep_fresh(self.pending)  # the last update moved the version: some rows aged out
        while len(self.usable(self.pending)) < need:
            if self.shutdown_event.is_set():
                return None
            self.drain_interactions()
            try:
                message = self.transport.transition_queue.get(timeout=0.1)
            except Empty:
                continue
            admitted = self.receive(message)
            self.buffer_interventions(admitted)
            self.pending.extend(self.keep_fresh(admitted))
        usable = self.usable(self.pending)
        if self.group_size == 1:
            rows, self.pending = self.pending[:need], self.pending[need:]
        else:
            taken = {id(tr) for tr in usable}
            rows, self.pending = usable, [tr for tr in self.pending if id(tr) not in taken]
        self.drain_interactions()
        return rows

    def buffer_interventions(self, rows: list[Transition]) -> None:
        """With `algorithm.offline.interventions`, the chunks a human took over become offline SFT rows, on arrival:
        a supervised target does not age with the policy version, so a stale takeover still counts."""
        offline = getattr(self.algorithm, "offline", None)
        if offline is not None:
            offline.add_interventions(rows)

    def usable(self, rows: list[Transition]) -> list[Transition]:
        """Rows an update may use now: all of them for GAE; for GRPO the rows of complete groups."""
        if self.group_size == 1 or not rows:
            return rows
        group_ids = torch.tensor([int(tr["complementary_info"][GROUP_ID.key]) for tr in rows])
        episode_ends = torch.tensor([bool(tr["done"]) for tr in rows])
        complete = complete_groups(group_ids=group_ids, episode_ends=episode_ends, group_size=self.group_size)
        return [tr for tr, ok in zip(rows, complete.tolist(), strict=True) if ok]

    def receive(self, message: bytes) -> list[Transition]:
        """One actor message as it arrived from the transport: its size is checked before it is decoded, bytes
        that do not decode are rejected like any other malformed message, then `accept`."""
        try:
            transitions = decode_message(message, max_bytes=self.cfg.max_message_bytes)
        except RejectedMessage as err:
            self.reject(err, rows=0)
            return []
        return self.accept(transitions)

    def accept(self, transitions: list[Transition]) -> list[Transition]:
        """The arrival check of one decoded actor message: a malformed message is rejected whole (one log line per
        kind, counted by kind); rows of another learner session or with NaN/inf are dropped and counted."""
        try:
            kept = admit(transitions, session=self.session, drops=self.drops, shapes=self.row_shapes,
                         log=self.foreign)
        except RejectedMessage as err:
            self.reject(err, rows=len(transitions))
            return []
        self.counters.chunks_received += len(transitions)
        self.counters.interaction_steps += sum(int(tr["complementary_info"][NUM_EXECUTED.key]) for tr in transitions)
        return kept

    def reject(self, error: RejectedMessage, rows: int) -> None:
        self.foreign.report(error)
        self.drops.rejected += rows
        self.drops.rejected_messages[error.kind] += 1

    def keep_fresh(self, rows: list[Transition]) -> list[Transition]:
        """Rows the algorithm's staleness rule keeps (the others are dropped and counted), less rows of a version
        this learner has not published (a sender out of step with it). For GRPO, a group that lost a row can never
        be scored: its other rows go too, now and when they arrive later."""
        if not rows:
            return rows
        versions = torch.tensor([int(tr["complementary_info"][POLICY_VERSION.key]) for tr in rows])
        future = versions > self.algorithm.policy_version
        if bool(future.any()):
            self.drops.future_version += int(future.sum())
            self.foreign.row_dropped("future_version", f"rows of policy version {int(versions.max())}, which this "
                                     f"learner (version {self.algorithm.policy_version}) has not published")
        ok = self.algorithm.fresh(versions) & ~future
        fresh = [tr for tr, keep in zip(rows, ok.tolist(), strict=True) if keep]
        self.drops.stale += len(rows) - len(fresh) - int(future.sum())
        if self.group_size == 1:
            return fresh
        kept_ids = {id(tr) for tr in fresh}
        self.broken_groups.update(self.group_of(tr) for tr in rows if id(tr) not in kept_ids)
        grouped = [tr for tr in fresh if self.group_of(tr) >= 0 and self.group_of(tr) not in self.broken_groups]
        self.drops.ungrouped += len(fresh) - len(grouped)
        return grouped

    @staticmethod
    def group_of(row: Transition) -> int:
        return int(row["complementary_info"][GROUP_ID.key])

    def drain_interactions(self) -> None:
        while True:
            try:
                message = bytes_to_python_object(self.transport.interaction_queue.get_nowait())
            except Empty:
                return
            self.counters.episodes += 1
            self.episodes.add(message)
            if self.wandb:
                self.wandb.log_dict(
                    {k: v for k, v in message.items() if isinstance(v, (int, float))},
                    step=self.counters.interaction_steps,
                    mode="train",
                )

    def log_update(self, stats, rows: int, collect_s: float, total_s: float) -> None:
        log = update_log(stats=stats, episodes=self.episodes, drops=self.drops, counters=self.counters, rows=rows,
                         policy_version=self.algorithm.policy_version, collect_s=collect_s, total_s=total_s)
        if self.wandb:
            self.wandb.log_dict(log, step=self.counters.interaction_steps, mode="train")
        self.metrics.append(
            {"update": self.counters.updates, "wall_time_s": time.perf_counter() - self.started, **log}
        )
        if self.counters.updates % self.cfg.console_log_every_updates == 0 or self.counters.updates == 1:
            logger.info(console_line(log, update=self.counters.updates, num_updates=self.cfg.num_updates,
                                     drops=self.drops))

    def check_skipped_steps(self, result: UpdateResult) -> None:
        """Raise `SkippedStepsError` once `max_consecutive_skipped_updates` updates in a row skipped steps."""
        self.skipped_in_a_row = self.skipped_in_a_row + 1 if result.steps_skipped > 0 else 0
        limit = self.cfg.max_consecutive_skipped_updates
        if limit > 0 and self.skipped_in_a_row >= limit:
            raise SkippedStepsError(
                f"{self.skipped_in_a_row} consecutive updates skipped optimizer steps for non-finite numbers "
                f"(numerics/steps_skipped > 0; last update: {result.steps_skipped} skipped, {result.steps_taken} "
                f"taken), max_consecutive_skipped_updates={limit}: stopping at update {self.counters.updates}. "
                "Usual causes: a learning rate too high for the backbone, or Flow-SDE steps at tiny t with a "
                "large noise level."
            )

    def maybe_checkpoint(self) -> None:
        every = self.cfg.checkpoint_every_updates
        if self.cfg.save_checkpoint and every > 0 and self.counters.updates % every == 0:
            self.save_checkpoint()

    def save_checkpoint(self) -> Path:
        with distributed.full_frozen_weights(self.algorithm.data_parallel, self.policy):
            ckpt = checkpoint.save(self.cfg, policy=self.policy, algorithm=self.algorithm,
                                   preprocessor=self.preprocessor, postprocessor=self.postprocessor,
                                   counters=self.counters)
        self.checkpointed_update = self.counters.updates
        return ckpt

    def resume(self) -> None:
        self.counters = checkpoint.resume(self.cfg, policy=self.policy, algorithm=self.algorithm)
        self.checkpointed_update = self.counters.updates

    # ------------------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Let connected actors receive the last weights message, then stop the server."""
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and not self.transport.service.all_delivered():
            time.sleep(0.05)
        time.sleep(0.2)
        self.shutdown_event.set()
        stop_server(self.transport.server, grace_s=2.0)
        auth = self.transport.auth
        if auth is not None and auth.refused_calls:
            logger.warning("[LEARNER] refused %d calls without the right token, by peer: %s", auth.refused_calls,
                           auth.refusals())
        if self.wandb is not None:
            import wandb

            wandb.finish()  # flush the run now (LeRobot's logger leaves it to interpreter exit)
        # Weights no actor will read any more must not keep the process alive: a multiprocessing queue's feeder
        # thread otherwise blocks interpreter exit on its full pipe.
        for queue in (self.transport.parameters_queue, self.transport.transition_queue,
                      self.transport.interaction_queue):
            cancel = getattr(queue, "cancel_join_thread", None)
            if cancel is not None:
                cancel()


def build_learner(cfg: PiRLTrainRLServerPipelineConfig, shutdown_event=None,
                  data_parallel: DataParallel = SINGLE_PROCESS) -> PiRLLearner:
    """Assemble policy, algorithm, processors, gRPC server and logger; resume if asked. With several ranks this is
    rank 0, and the other ranks take its (resumed) state before any actor can connect."""
    checkpoint.guard_output_dir(cfg)
    if shutdown_event is None:
        shutdown_event = ProcessSignalHandler(use_threads=True).shutdown_event
    policy = make_run_policy(cfg)  # seeds cfg.seed
    policy.train()
    algorithm = PiRLAlgorithm(policy=policy, config=cfg.algorithm)
    algorithm.make_optimizers_and_scheduler()
    preprocessor, postprocessor = make_pre_post_processors(
        policy_cfg=cfg.policy,
        pretrained_path=str(cfg.policy.pretrained_path) if cfg.policy.pretrained_path else None,
        dataset_stats=policy_dataset_stats(cfg),
    )
    # Offline datasets load (and fail on a bad setting) here, before any actor can connect.
    algorithm.offline = build_offline_source(cfg, preprocessor)
    learner = PiRLLearner(cfg, policy, algorithm, preprocessor, postprocessor, None, shutdown_event)
    if cfg.resume:
        learner.resume()  # before the server starts: a broken checkpoint never leaves a port bound
    algorithm.data_parallel = data_parallel
    distributed.setup_ranks(cfg, data_parallel, algorithm)
    if cfg.wandb.enable and cfg.wandb.project:
        from lerobot.common.wandb_utils import WandBLogger

        learner.wandb = WandBLogger(cfg)
    learner.transport = build_transport(cfg, shutdown_event)
    return learner


def build_transport(cfg: PiRLTrainRLServerPipelineConfig, shutdown_event) -> Transport:
    from torch.multiprocessing import Queue

    queues = Queue(), Queue(), Queue()
    service = BroadcastLearnerService(
        shutdown_event=shutdown_event,
        parameters_queue=queues[2],
        seconds_between_pushes=0.0,
        transition_queue=queues[0],
        interaction_message_queue=queues[1],
        queue_get_timeout=cfg.policy.actor_learner_config.queue_get_timeout,
    )
    alc = cfg.policy.actor_learner_config
    security = server_security(cfg.security)
    server = serve_learner(service, alc.learner_host, alc.learner_port, cfg.num_actors, security)
    logger.info("[LEARNER] gRPC server listening on %s:%d (%s, %s)", alc.learner_host, alc.learner_port,
                "TLS" if security.credentials is not None else "plaintext",
                "token required" if security.auth is not None else "no token")
    return Transport(queues[0], queues[1], queues[2], service, server, security.auth)


def run_learner(cfg: PiRLTrainRLServerPipelineConfig) -> int:
    ranks = distributed.init_data_parallel(cfg)
    try:
        return _run_rank(cfg, ranks)
    finally:
        distributed.leave(ranks)


def _run_rank(cfg: PiRLTrainRLServerPipelineConfig, ranks: DataParallel) -> int:
    setup_logging(cfg, "learner" if ranks.is_main else f"learner_rank{ranks.rank}")
    threads = distributed.share_cores(cfg, ranks)
    logger.info("[LEARNER] torch threads: %d", threads or apply_torch_threads(cfg))
    if not ranks.is_main:
        return distributed.run_follower(cfg, ranks)
    if ranks.distributed:
        logger.info("[LEARNER] rank 0 of %d data-parallel learner ranks", ranks.world_size)
    learner = build_learner(cfg, data_parallel=ranks)
    try:
        code = learner.run()
    except SkippedStepsError as err:
        logger.error("[LEARNER] %s", err)
        code = 1
    finally:
        learner.close()
    distributed.stop_followers(ranks, code)
    logger.info("[LEARNER] done: %d updates, version %d", learner.counters.updates, learner.algorithm.policy_version)
    return code


def main(argv: list[str] | None = None) -> int:
    from .cli import run_entry_point

    return run_entry_point("learner", argv, pi_rl=run_learner)


if __name__ == "__main__":
    sys.exit(main())
