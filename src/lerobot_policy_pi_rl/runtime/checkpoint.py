"""Learner checkpoints in LeRobot's layout: save, resume, and the guard against overwriting a run.

    <output_dir>/checkpoints/<zero-padded update>/
        pretrained_model/   config.json, model.safetensors, train_config.json, policy_{pre,post}processor*
        algorithm/          config.json, model.safetensors (policy version, update and optimization counters)
        training_state/     training_step.json (the learner's `Counters` and the policy version),
                            rng_state.safetensors, <optimizer name>/ (AdamW moments and step, per group)
    <output_dir>/checkpoints/last -> the newest

LeRobot's own resume silently starts fresh on any error and rebuilds the policy with random weights; here a
missing or broken piece raises `CheckpointError` and the policy weights are restored from the checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path

from huggingface_hub.constants import SAFETENSORS_SINGLE_FILE
from safetensors.torch import load_file, load_model

from lerobot.common.train_utils import get_step_checkpoint_dir, save_checkpoint, update_last_checkpoint
from lerobot.optim.optimizers import load_optimizer_state
from lerobot.utils.constants import (
    ALGORITHM_DIR,
    CHECKPOINTS_DIR,
    LAST_CHECKPOINT_LINK,
    PRETRAINED_MODEL_DIR,
    TRAINING_STATE_DIR,
    TRAINING_STEP,
)
from lerobot.utils.io_utils import load_json, write_json
from lerobot.utils.random_utils import load_rng_state

from .metrics import Counters

logger = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint to resume from is missing or broken (never silently start fresh)."""


def last_checkpoint(output_dir: Path | str) -> Path:
    return Path(output_dir) / CHECKPOINTS_DIR / LAST_CHECKPOINT_LINK


def guard_output_dir(cfg) -> None:
    """Refuse to start a fresh run over an existing one (`checkpoints/last` exists and `resume` is false)."""
    last = last_checkpoint(cfg.output_dir)
    if not cfg.resume and last.exists():
        raise FileExistsError(f"{last} exists: pass --resume=true to continue that run, or another --output_dir")


def save(cfg, *, policy, algorithm, preprocessor, postprocessor, counters: Counters) -> Path:
    """Write checkpoint `counters.updates` and point `checkpoints/last` at it; returns its directory."""
    ckpt = get_step_checkpoint_dir(Path(cfg.output_dir), cfg.num_updates, counters.updates)
    save_checkpoint(
        checkpoint_dir=ckpt,
        step=counters.updates,
        cfg=cfg,
        policy=policy,
        optimizer=algorithm.get_optimizers(),
        preprocessor=preprocessor,
        postprocessor=postprocessor,
    )
    algorithm.save_pretrained(ckpt / ALGORITHM_DIR)
    write_json(
        {
            "step": counters.updates,
            "interaction_step": counters.interaction_steps,
            "chunks_received": counters.chunks_received,
            "episodes": counters.episodes,
            "policy_version": algorithm.policy_version,
        },
        ckpt / TRAINING_STATE_DIR / TRAINING_STEP,
    )
    update_last_checkpoint(ckpt)
    logger.info("[LEARNER] checkpoint %s (version %d)", ckpt, algorithm.policy_version)
    return ckpt


def resume(cfg, *, policy, algorithm) -> Counters:
    """Restore weights, optimizers, algorithm state and RNG from `checkpoints/last`; returns the counters.

    Raises `CheckpointError` when the checkpoint is missing or any part of it is missing or unreadable.
    """
    ckpt = last_checkpoint(cfg.output_dir)
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
        load_model(policy, str(model_file), strict=True, device="cpu")
        policy.to(cfg.policy.device)
        for name, opt in algorithm.get_optimizers().items():
            if not (state_dir / name).is_dir():
                raise CheckpointError(f"broken checkpoint {ckpt}: optimizer state '{name}' is missing")
            load_optimizer_state(opt, state_dir / name)
        algorithm.load_state_dict(load_file(str(algo_file)), device=cfg.policy.device)
        load_rng_state(state_dir)
        step = load_json(state_dir / TRAINING_STEP)
    except CheckpointError:
        raise
    except Exception as err:
        raise CheckpointError(f"cannot resume from {ckpt}: {type(err).__name__}: {err}") from err
    counters = Counters(
        updates=int(step["step"]),
        interaction_steps=int(step.get("interaction_step", 0)),
        chunks_received=int(step.get("chunks_received", 0)),
        episodes=int(step.get("episodes", 0)),
    )
    logger.info(
        "[LEARNER] resumed from %s: update %d, version %d, env steps %d",
        ckpt, counters.updates, algorithm.policy_version, counters.interaction_steps,
    )
    return counters
