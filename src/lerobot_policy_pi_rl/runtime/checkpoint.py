"""Learner checkpoints in LeRobot's layout: save, resume, and the guard against overwriting a run.

    <output_dir>/checkpoints/<zero-padded update>/
        pretrained_model/   config.json, model.safetensors, train_config.json, policy_{pre,post}processor*
        algorithm/          config.json, model.safetensors (policy version, update and optimization counters)
        training_state/     training_step.json (the learner's `Counters` and the policy version),
                            rng_state.safetensors, <optimizer name>/ (AdamW moments and step, per group)
        manifest.json       size and SHA-256 of every other file
    <output_dir>/checkpoints/last -> the newest complete one

A checkpoint is written whole into `checkpoints/.<update>.partial/`, then renamed to `<update>/`, then `last` is
swapped to it by renaming a new link over the old one: a learner killed at any moment leaves `last` pointing at
the newest complete checkpoint (a leftover partial directory is removed on resume or overwritten).

LeRobot's own resume silently starts fresh on any error and rebuilds the policy with random weights; here a
missing, truncated or corrupted piece raises `CheckpointError` naming the file, and the policy weights are restored
from the checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from huggingface_hub.constants import CONFIG_NAME, SAFETENSORS_SINGLE_FILE
from safetensors.torch import load_file, load_model

from lerobot.common.train_utils import get_step_checkpoint_dir, save_checkpoint
from lerobot.configs.train import TRAIN_CONFIG_NAME
from lerobot.optim.optimizers import load_optimizer_state
from lerobot.utils.constants import (
    ALGORITHM_DIR,
    CHECKPOINTS_DIR,
    LAST_CHECKPOINT_LINK,
    PRETRAINED_MODEL_DIR,
    RNG_STATE,
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


MANIFEST = "manifest.json"
PARTIAL_SUFFIX = ".partial"


def save(cfg, *, policy, algorithm, preprocessor, postprocessor, counters: Counters) -> Path:
    """Write checkpoint `counters.updates` and point `checkpoints/last` at it; returns its directory.

    Atomic: until the final rename of `last`, a kill leaves the previous checkpoint in place as `last`. The step
    written is always newer than `last`'s (counters only grow from the checkpoint a run resumed from)."""
    ckpt = get_step_checkpoint_dir(Path(cfg.output_dir), cfg.num_updates, counters.updates)
    partial = ckpt.with_name(f".{ckpt.name}{PARTIAL_SUFFIX}")
    if partial.exists():
        shutil.rmtree(partial)
    save_checkpoint(
        checkpoint_dir=partial,
        step=counters.updates,
        cfg=cfg,
        policy=policy,
        optimizer=algorithm.get_optimizers(),
        preprocessor=preprocessor,
        postprocessor=postprocessor,
    )
    algorithm.save_pretrained(partial / ALGORITHM_DIR)
    write_json(
        {
            "step": counters.updates,
            "interaction_step": counters.interaction_steps,
            "chunks_received": counters.chunks_received,
            "episodes": counters.episodes,
            "policy_version": algorithm.policy_version,
        },
        partial / TRAINING_STATE_DIR / TRAINING_STEP,
    )
    _write_manifest(partial)
    if ckpt.exists():  # a complete checkpoint of this step that `last` never pointed at (killed before the swap)
        shutil.rmtree(ckpt)
    os.replace(partial, ckpt)
    _point_last_at(ckpt)
    logger.info("[LEARNER] checkpoint %s (version %d)", ckpt, algorithm.policy_version)
    return ckpt


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_manifest(root: Path) -> None:
    """Size and SHA-256 of every file (resume checks them), each file flushed to disk first so that the rename
    that publishes the checkpoint cannot reach the disk before its contents."""
    files = {}
    for path in _files(root):
        _fsync(path)
        files[path.relative_to(root).as_posix()] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    (root / MANIFEST).write_text(json.dumps({"files": files}, indent=1))
    _fsync(root / MANIFEST)


def _point_last_at(ckpt: Path) -> None:
    last = ckpt.parent / LAST_CHECKPOINT_LINK
    tmp = ckpt.parent / f".{LAST_CHECKPOINT_LINK}{PARTIAL_SUFFIX}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(ckpt.name)
    os.replace(tmp, last)  # rename(2) replaces the old link in one step: `last` always exists
    _fsync(ckpt.parent)


def resume(cfg, *, policy, algorithm) -> Counters:
    """Restore weights, optimizers, algorithm state and RNG from `checkpoints/last`; returns the counters.

    Raises `CheckpointError` naming the file when the checkpoint is missing or any part of it is missing,
    truncated, corrupted or unreadable (the train config included, though resuming takes the config from the
    command line).
    """
    last = last_checkpoint(cfg.output_dir)
    if not last.exists():
        raise CheckpointError(f"resume=true but there is no checkpoint at {last}")
    ckpt = last.resolve()
    for leftover in ckpt.parent.glob(f".*{PARTIAL_SUFFIX}"):  # a write killed half way; no writer runs now
        shutil.rmtree(leftover) if leftover.is_dir() and not leftover.is_symlink() else leftover.unlink()
    _verify_manifest(ckpt)
    model_file = ckpt / PRETRAINED_MODEL_DIR / SAFETENSORS_SINGLE_FILE
    state_dir = ckpt / TRAINING_STATE_DIR
    algo_file = ckpt / ALGORITHM_DIR / SAFETENSORS_SINGLE_FILE
    for required in (model_file, state_dir / TRAINING_STEP, algo_file, state_dir / RNG_STATE):
        if not required.is_file():
            raise CheckpointError(f"broken checkpoint {ckpt}: {required.relative_to(ckpt)} is missing")
    for config_file in (ckpt / PRETRAINED_MODEL_DIR / CONFIG_NAME, ckpt / PRETRAINED_MODEL_DIR / TRAIN_CONFIG_NAME):
        if config_file.is_file():
            _read(ckpt, config_file, lambda p: json.loads(p.read_text()))

    def load_weights(path: Path) -> None:
        load_model(policy, str(path), strict=True, device="cpu")

    _read(ckpt, model_file, load_weights)
    policy.to(cfg.policy.device)
    for name, opt in algorithm.get_optimizers().items():
        if not (state_dir / name).is_dir():
            raise CheckpointError(f"broken checkpoint {ckpt}: optimizer state '{name}' is missing")
        _read(ckpt, state_dir / name, lambda p, opt=opt: load_optimizer_state(opt, p))
    _read(ckpt, algo_file, lambda p: algorithm.load_state_dict(load_file(str(p)), device=cfg.policy.device))
    _read(ckpt, state_dir / RNG_STATE, lambda p: load_rng_state(p.parent))
    step = _read(ckpt, state_dir / TRAINING_STEP, load_json)
    try:
        counters = Counters(
            updates=int(step["step"]),
            interaction_steps=int(step.get("interaction_step", 0)),
            chunks_received=int(step.get("chunks_received", 0)),
            episodes=int(step.get("episodes", 0)),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise CheckpointError(f"cannot resume from {ckpt}: {TRAINING_STATE_DIR}/{TRAINING_STEP} holds no valid "
                              f"counters: {type(err).__name__}: {err}") from err
    logger.info(
        "[LEARNER] resumed from %s: update %d, version %d, env steps %d",
        ckpt, counters.updates, algorithm.policy_version, counters.interaction_steps,
    )
    return counters


def _read(ckpt: Path, path: Path, load: Callable[[Path], object]):
    """`load(path)`, any failure raised as a `CheckpointError` that names the file."""
    try:
        return load(path)
    except CheckpointError:
        raise
    except Exception as err:
        raise CheckpointError(f"cannot resume from {ckpt}: {path.relative_to(ckpt)} is unreadable: "
                              f"{type(err).__name__}: {str(err)[:300]}") from err


def _verify_manifest(ckpt: Path) -> None:
    """Every file the manifest lists is there with its size and SHA-256 (a checkpoint written before manifests
    existed is only loaded, with a warning)."""
    manifest = ckpt / MANIFEST
    if not manifest.is_file():
        logger.warning("[LEARNER] checkpoint %s has no %s: its files cannot be checked for truncation or corruption "
                       "before loading", ckpt, MANIFEST)
        return
    files = _read(ckpt, manifest, lambda p: json.loads(p.read_text())["files"])
    for rel, expected in files.items():
        path = ckpt / rel
        if not path.is_file():
            raise CheckpointError(f"broken checkpoint {ckpt}: {rel} is missing")
        size = path.stat().st_size
        if size != expected["bytes"]:
            raise CheckpointError(f"broken checkpoint {ckpt}: {rel} has {size} bytes, {expected['bytes']} were "
                                  "written (truncated or replaced)")
        if _sha256(path) != expected["sha256"]:
            raise CheckpointError(f"broken checkpoint {ckpt}: {rel} is corrupted (its SHA-256 differs from the one "
                                  "written)")
