"""A data-parallel learner: N learner ranks started by `torchrun --nproc_per_node N -m
lerobot_policy_pi_rl.runtime.learner ...` or `accelerate launch --num_processes N -m ...` (WORLD_SIZE > 1 in the
environment turns it on; accelerate's `PartialState` sets up the process group: gloo on the CPU, NCCL on GPUs).

Rank 0 is the learner a single process is: it alone hosts the gRPC service, admits transitions, prepares each update
once over the whole rollout (advantages, returns, proximal log-probs, masks), logs, publishes weights and writes
checkpoints. The other ranks (followers) open no port and write nothing: they receive every prepared update from
rank 0, apply their share of it (`rl/data_parallel.py`) and exit on rank 0's `Stop`. What is replicated on every
rank: the whole policy (frozen weights included), the optimizer states and the prepared rollout; at start rank 0's
trainable weights, optimizer states and counters are copied to the others (`replicate_state`), so a run resumes on
any number of ranks from a checkpoint rank 0 reads.

Control messages (prepared updates, `Stop`) travel on a CPU (gloo) group whose timeout lets followers wait as long
as rank 0 takes to collect a rollout from actors; the per-minibatch collectives use the default group. A rank that
dies takes the others down with it: the launcher (torchrun, accelerate) stops the remaining ranks.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

from ..rl.data_parallel import SINGLE_PROCESS, DataParallel

logger = logging.getLogger("lerobot_policy_pi_rl.learner")

# How long followers wait for rank 0's next message (a rollout can take long to collect from real robots).
CONTROL_TIMEOUT = timedelta(days=7)


@dataclass
class Stop:
    """Rank 0's last message to the followers: training is over (or rank 0 stopped on purpose)."""

    exit_code: int


def init_data_parallel(cfg) -> DataParallel:
    """The rank context of this learner process: `SINGLE_PROCESS` unless a launcher set WORLD_SIZE > 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return SINGLE_PROCESS
    import torch.distributed as dist
    from accelerate import PartialState

    on_cpu = torch.device(cfg.policy.device).type == "cpu"
    state = PartialState(cpu=on_cpu)
    if state.num_processes != world_size:
        raise RuntimeError(f"WORLD_SIZE={world_size} but the process group has {state.num_processes} processes")
    if not on_cpu and state.device.type == "cuda":
        torch.cuda.set_device(state.device)  # `policy.device=cuda` then means this rank's own GPU
    control = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
    return DataParallel(rank=state.process_index, world_size=state.num_processes, control_group=control)


def share_cores(cfg, ranks: DataParallel) -> int | None:
    """With `torch_threads=0` (auto), count every learner rank among the processes sharing this host's cores
    (`apply_torch_threads` counts one learner); returns the threads set, or None when nothing changed."""
    if not ranks.distributed or cfg.torch_threads:
        return None
    threads = max(1, (os.cpu_count() or 1) // (cfg.num_actors + ranks.world_size))
    torch.set_num_threads(threads)
    return threads


def _on_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _on_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_on_cpu(v) for v in obj)
    return obj


def replicate_state(ranks: DataParallel, algorithm) -> None:
    """Rank 0's trainable weights and buffers, optimizer states and algorithm counters on every rank (as DDP copies
    rank 0's parameters when it wraps a model). Frozen weights are not sent: every rank built them the same way
    (from the same pretrained path)."""
    if not ranks.distributed:
        return
    state = None
    if ranks.is_main:
        state = _on_cpu({
            "weights": algorithm.get_weights(),
            "optimizers": {name: opt.state_dict() for name, opt in algorithm.get_optimizers().items()},
            "algorithm": algorithm.state_dict(),
        })
    state = ranks.share(state)
    if ranks.is_main:
        return
    device = next(algorithm.policy.parameters()).device
    algorithm.load_weights(state["weights"], device=device)
    own = algorithm.get_optimizers()
    if set(own) != set(state["optimizers"]):
        raise RuntimeError(f"rank {ranks.rank} has optimizers {sorted(own)}, rank 0 {sorted(state['optimizers'])}")
    for name, opt in own.items():
        opt.load_state_dict(state["optimizers"][name])
    algorithm.load_state_dict(state["algorithm"], device=device)


def stop_followers(ranks: DataParallel, exit_code: int) -> None:
    """Rank 0: tell the followers to exit (they wait for rank 0's next message)."""
    if not ranks.distributed or not ranks.is_main:
        return
    try:
        ranks.share(Stop(exit_code))
    except Exception as err:  # a follower already gone (e.g. the launcher stopping every rank): nothing to tell
        logger.warning("[LEARNER] could not tell the other learner ranks to stop: %s: %s", type(err).__name__, err)


def leave(ranks: DataParallel) -> None:
    """Destroy the process group, on every rank and however the rank ends: a process that still holds a gloo group
    whose peer died does not exit (its launcher then waits its grace period out and kills it)."""
    if ranks.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def run_follower(cfg, ranks: DataParallel) -> int:
    """A learner rank other than 0: build the same policy and algorithm, take rank 0's state, then apply every
    update rank 0 shares until it says `Stop`."""
    from lerobot.policies import make_policy
    from lerobot.utils.random_utils import set_seed

    from ..rl.algorithm import PiRLAlgorithm

    set_seed(cfg.seed)
    policy = make_policy(cfg=cfg.policy, env_cfg=cfg.env)
    policy.train()
    algorithm = PiRLAlgorithm(policy=policy, config=cfg.algorithm)
    algorithm.make_optimizers_and_scheduler()
    algorithm.data_parallel = ranks
    replicate_state(ranks, algorithm)
    logger.info("[LEARNER] rank %d/%d following rank 0 from update %d (version %d)", ranks.rank, ranks.world_size,
                algorithm.num_updates, algorithm.policy_version)
    while True:
        message = ranks.share(None)
        if isinstance(message, Stop):
            logger.info("[LEARNER] rank %d stops after %d updates (rank 0 exit code %d)", ranks.rank,
                        algorithm.num_updates, message.exit_code)
            return 0
        algorithm.apply_update(message)
