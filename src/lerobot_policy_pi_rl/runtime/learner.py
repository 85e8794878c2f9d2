"""PI-RL learner: collect chunk transitions from actors over gRPC, run PPO updates, publish versioned weights.

    python -m lerobot_policy_pi_rl.runtime.learner --policy.type=pi_rl --env.type=pi_rl_pickcube \
        --algorithm.type=pi_rl --algorithm.rollout_chunks=256 --num_updates=100 --output_dir=outputs/pi_rl
    (`lerobot-pi-rl-learner ...`; `--algorithm.type=sac` runs LeRobot's stock SAC learner unchanged.)

The loop, one stage per line (`PiRLLearner.run`):
    publish weights v0 -> repeat: collect `rollout_chunks` fresh rows -> PPO update -> publish weights v+1 ->
    log -> checkpoint every N updates -> after `num_updates`: final checkpoint, tell actors to stop, exit.
Checkpoints use LeRobot's layout (`checkpoints/<update>/{pretrained_model,algorithm,training_state}`, `last`);
`--resume=true` restores weights, optimizers, RNG and counters from `checkpoints/last` or fails loudly.
"""

from __future__ import annotations

import json
import logging
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from queue import Empty
from typing import Any

import torch
from huggingface_hub.constants import SAFETENSORS_SINGLE_FILE
from safetensors.torch import load_file, load_model

from lerobot.common.train_utils import get_step_checkpoint_dir, save_checkpoint, update_last_checkpoint
from lerobot.optim.optimizers import load_optimizer_state
from lerobot.policies import make_policy, make_pre_post_processors
from lerobot.transport.utils import bytes_to_python_object, bytes_to_transitions, state_to_bytes
from lerobot.utils.constants import (
    ALGORITHM_DIR,
    CHECKPOINTS_DIR,
    LAST_CHECKPOINT_LINK,
    PRETRAINED_MODEL_DIR,
    TRAINING_STATE_DIR,
    TRAINING_STEP,
)
from lerobot.utils.io_utils import load_json, write_json
from lerobot.utils.process import ProcessSignalHandler
from lerobot.utils.random_utils import load_rng_state, set_seed
from lerobot.utils.transition import Transition

from .config import PiRLTrainRLServerPipelineConfig, apply_torch_threads, policy_dataset_stats
from .console import setup_logging
from .metrics import EpisodeWindow
from .transitions import (
    LEARNER_SESSION,
    NUM_EXECUTED,
    POLICY_VERSION,
    DropCounts,
    ForeignTransitionLog,
    NotAPiRLTransition,
    is_finite_transition,
    check_pi_rl_transition,
    transitions_to_rollout,
)
from .transport import (
    LEARNER_SESSION_KEY,
    TRAINING_DONE_KEY,
    BroadcastLearnerService,
    serve_learner,
    stop_server,
)

logger = logging.getLogger("lerobot_policy_pi_rl.learner")


class CheckpointError(RuntimeError):
    """A checkpoint to resume from is missing or broken (never silently start fresh)."""


@dataclass
class Transport:
    """Queues between the gRPC server thread and the training loop, and the server itself."""

    transition_queue: Any
    interaction_queue: Any
    parameters_queue: Any
    service: BroadcastLearnerService
    server: Any


@dataclass
class Counters:
    updates: int = 0
    interaction_steps: int = 0
    chunks_received: int = 0
    episodes: int = 0


class PiRLLearner:
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
        self.foreign = ForeignTransitionLog(logger)
        # Rows from another learner run (e.g. sampled before a crash) carry another session id and are dropped.
        self.session = random.SystemRandom().randrange(1, 2**62)
        self.pending: list[Transition] = []
        self.started = time.perf_counter()
        # One JSON line per update (appended across resumes): what learning curves and reports are drawn from.
        self.metrics_path = Path(cfg.output_dir) / "metrics.jsonl"

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
            stats = self.algorithm.update_rollout(transitions_to_rollout(rows, self.drops))
            self.counters.updates += 1
            self.publish_weights()
            self.log_update(stats, rows, t_collect, time.perf_counter() - t0)
            self.maybe_checkpoint()
        done = self.counters.updates >= self.cfg.num_updates
        if done:
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
        """Drain actor messages until `rollout_chunks` fresh rows are pending; None on shutdown."""
        need = self.cfg.algorithm.rollout_chunks
        while len(self._fresh(self.pending)) < need:
            if self.shutdown_event.is_set():
                return None
            self.drain_interactions()
            try:
                message = self.transport.transition_queue.get(timeout=0.1)
            except Empty:
                continue
            self.pending.extend(self.accept(bytes_to_transitions(message)))
        fresh = self._fresh(self.pending)
        rows, self.pending = fresh[:need], fresh[need:]
        self.drain_interactions()
        return rows

    def accept(self, transitions: list[Transition]) -> list[Transition]:
        """Validate one actor message: foreign senders are logged once and dropped, non-finite rows counted."""
        try:
            for tr in transitions:
                check_pi_rl_transition(tr)
        except NotAPiRLTransition as err:
            self.foreign.report(err)
            self.drops.rejected += len(transitions)
            return []
        kept = []
        for tr in transitions:
            info = tr["complementary_info"]
            self.counters.chunks_received += 1
            self.counters.interaction_steps += int(info[NUM_EXECUTED])
            if int(info[LEARNER_SESSION]) != self.session:
                self.drops.foreign_session += 1
            elif not is_finite_transition(tr):
                self.drops.nonfinite += 1
            else:
                kept.append(tr)
        return kept

    def _fresh(self, rows: list[Transition]) -> list[Transition]:
        """Rows within the staleness bound of the current version (older ones are dropped and counted)."""
        oldest = self.algorithm.policy_version - self.cfg.algorithm.staleness
        fresh = [tr for tr in rows if int(tr["complementary_info"][POLICY_VERSION]) >= oldest]
        self.drops.stale += len(rows) - len(fresh)
        self.pending = fresh
        return fresh

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

    def log_update(self, stats, rows: list[Transition], t_collect: float, t_total: float) -> None:
        log = {
            **stats.to_log_dict(),
            **self.episodes.as_log_dict(),
            **self.drops.as_log_dict(),
            "rollout/rows": float(len(rows)),
            "rollout/chunks_received": float(self.counters.chunks_received),
            "rollout/interaction_steps": float(self.counters.interaction_steps),
            "perf/collect_s": t_collect,
            "perf/update_s": t_total - t_collect,
            "perf/rows_per_s": len(rows) / max(t_total, 1e-9),
            "policy/version": float(self.algorithm.policy_version),
        }
        if self.wandb:
            self.wandb.log_dict(log, step=self.counters.interaction_steps, mode="train")
        self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.metrics_path, "a") as f:
            record = {"update": self.counters.updates, "wall_time_s": time.perf_counter() - self.started, **log}
            f.write(json.dumps({k: v for k, v in record.items() if v == v}) + "\n")  # NaN (no episode yet) left out
        if self.counters.updates % self.cfg.console_log_every_updates == 0 or self.counters.updates == 1:
            logger.info(
                "[LEARNER] update %d/%d | version %d | rows %d (dropped: stale %d, nan %d, foreign %d) | "
                "env steps %d | return %.3f | success %.2f | ep_len %.1f | interv %.2f | "
                "loss/policy %.4f | loss/value %.4f | approx_kl %.4f | clip %.3f | collect %.2fs update %.2fs",
                self.counters.updates, self.cfg.num_updates, self.algorithm.policy_version, len(rows),
                self.drops.stale, self.drops.nonfinite, self.drops.rejected + self.drops.foreign_session,
                self.counters.interaction_steps, log["rollout/episode_return"], log["rollout/success_rate"],
                log["rollout/episode_length"], log["rollout/intervention_rate"],
                stats.losses.get("policy", float("nan")), stats.losses.get("value", float("nan")),
                stats.extra.get("ppo/approx_kl", float("nan")), stats.extra.get("ppo/clip_fraction", float("nan")),
                t_collect, t_total - t_collect,
            )

    def maybe_checkpoint(self) -> None:
        every = self.cfg.checkpoint_every_updates
        if self.cfg.save_checkpoint and every > 0 and self.counters.updates % every == 0:
            self.save_checkpoint()

    # ------------------------------------------------------------------------------------------------------
    # Checkpoints
    # ------------------------------------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        ckpt = get_step_checkpoint_dir(Path(self.cfg.output_dir), self.cfg.num_updates, self.counters.updates)
        save_checkpoint(
            checkpoint_dir=ckpt,
            step=self.counters.updates,
            cfg=self.cfg,
            policy=self.policy,
            optimizer=self.algorithm.get_optimizers(),
            preprocessor=self.preprocessor,
            postprocessor=self.postprocessor,
        )
        self.algorithm.save_pretrained(ckpt / ALGORITHM_DIR)
        write_json(
            {
                "step": self.counters.updates,
                "interaction_step": self.counters.interaction_steps,
                "chunks_received": self.counters.chunks_received,
                "episodes": self.counters.episodes,
                "policy_version": self.algorithm.policy_version,
            },
            ckpt / TRAINING_STATE_DIR / TRAINING_STEP,
        )
        update_last_checkpoint(ckpt)
        logger.info("[LEARNER] checkpoint %s (version %d)", ckpt, self.algorithm.policy_version)
        return ckpt

    def resume(self) -> None:
        """Restore everything from `checkpoints/last`; raises `CheckpointError` on anything missing."""
        ckpt = Path(self.cfg.output_dir) / CHECKPOINTS_DIR / LAST_CHECKPOINT_LINK
        if not ckpt.exists():
            raise CheckpointError(f"resume=true but there is no checkpoint at {ckpt}")
        ckpt = ckpt.resolve()
        model_file = ckpt / PRETRAINED_MODEL_DIR / SAFETENSORS_SINGLE_FILE
        state_dir = ckpt / TRAINING_STATE_DIR
        algo_file = ckpt / ALGORITHM_DIR / SAFETENSORS_SINGLE_FILE
        for required in (model_file, state_dir / TRAINING_STEP, algo_file):
            if not required.is_file():
                raise CheckpointError(f"broken checkpoint {ckpt}: {required.relative_to(ckpt)} is missing")
        try:
            missing, unexpected = load_model(self.policy, str(model_file), strict=True, device="cpu")
            self.policy.to(self.cfg.policy.device)
            for name, opt in self.algorithm.get_optimizers().items():
                if not (state_dir / name).is_dir():
                    raise CheckpointError(f"broken checkpoint {ckpt}: optimizer state '{name}' is missing")
                load_optimizer_state(opt, state_dir / name)
            self.algorithm.load_state_dict(load_file(str(algo_file)), device=self.cfg.policy.device)
            load_rng_state(state_dir)
            step = load_json(state_dir / TRAINING_STEP)
        except CheckpointError:
            raise
        except Exception as err:
            raise CheckpointError(f"cannot resume from {ckpt}: {type(err).__name__}: {err}") from err
        self.counters = Counters(
            updates=int(step["step"]),
            interaction_steps=int(step.get("interaction_step", 0)),
            chunks_received=int(step.get("chunks_received", 0)),
            episodes=int(step.get("episodes", 0)),
        )
        logger.info(
            "[LEARNER] resumed from %s: update %d, version %d, env steps %d",
            ckpt, self.counters.updates, self.algorithm.policy_version, self.counters.interaction_steps,
        )

    # ------------------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Let connected actors receive the last weights message, then stop the server."""
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and not self.transport.service.all_delivered():
            time.sleep(0.05)
        time.sleep(0.2)
        self.shutdown_event.set()
        stop_server(self.transport.server, grace_s=2.0)
        # Weights no actor will read any more must not keep the process alive: a multiprocessing queue's feeder
        # thread otherwise blocks interpreter exit on its full pipe.
        for queue in (self.transport.parameters_queue, self.transport.transition_queue,
                      self.transport.interaction_queue):
            cancel = getattr(queue, "cancel_join_thread", None)
            if cancel is not None:
                cancel()


def build_learner(cfg: PiRLTrainRLServerPipelineConfig, shutdown_event=None) -> PiRLLearner:
    """Assemble policy, algorithm, processors, gRPC server and logger; resume if asked."""
    from ..rl.algorithm import PiRLAlgorithm

    guard_output_dir(cfg)
    set_seed(cfg.seed)
    if shutdown_event is None:
        shutdown_event = ProcessSignalHandler(use_threads=True).shutdown_event
    policy = make_policy(cfg=cfg.policy, env_cfg=cfg.env)
    policy.train()
    algorithm = PiRLAlgorithm(policy=policy, config=cfg.algorithm)
    algorithm.make_optimizers_and_scheduler()
    preprocessor, postprocessor = make_pre_post_processors(
        policy_cfg=cfg.policy,
        pretrained_path=str(cfg.policy.pretrained_path) if cfg.policy.pretrained_path else None,
        dataset_stats=policy_dataset_stats(cfg),
    )
    learner = PiRLLearner(cfg, policy, algorithm, preprocessor, postprocessor, None, shutdown_event)
    if cfg.resume:
        learner.resume()  # before the server starts: a broken checkpoint never leaves a port bound
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
    server = serve_learner(service, alc.learner_host, alc.learner_port, cfg.num_actors)
    logger.info("[LEARNER] gRPC server listening on %s:%d", alc.learner_host, alc.learner_port)
    return Transport(queues[0], queues[1], queues[2], service, server)


def guard_output_dir(cfg: PiRLTrainRLServerPipelineConfig) -> None:
    last = Path(cfg.output_dir) / CHECKPOINTS_DIR / LAST_CHECKPOINT_LINK
    if not cfg.resume and last.exists():
        raise FileExistsError(f"{last} exists: pass --resume=true to continue that run, or another --output_dir")


def run_learner(cfg: PiRLTrainRLServerPipelineConfig) -> int:
    setup_logging(cfg, "learner")
    logger.info("[LEARNER] torch threads: %d", apply_torch_threads(cfg))
    learner = build_learner(cfg)
    try:
        code = learner.run()
    finally:
        learner.close()
    logger.info("[LEARNER] done: %d updates, version %d", learner.counters.updates, learner.algorithm.policy_version)
    return code


def main(argv: list[str] | None = None) -> int:
    from .cli import run_entry_point

    return run_entry_point("learner", argv, pi_rl=run_learner)


if __name__ == "__main__":
    sys.exit(main())
