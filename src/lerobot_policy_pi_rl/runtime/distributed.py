"""A data-parallel learner: N learner ranks started by `torchrun --nproc_per_node N -m
lerobot_policy_pi_rl.runtime.learner ...` or `accelerate launch --num_processes N -m ...` (WORLD_SIZE > 1 in the
environment turns it on; accelerate's `PartialState` sets up the process group: gloo on the CPU, NCCL on GPUs).

Rank 0 is the learner a single process is: it alone hosts the gRPC service, admits transitions, prepares each update
once over the whole rollout (advantages, returns, proximal log-probs, masks), logs, publishes weights and writes
checkpoints. The other ranks (followers) open no port and write nothing: they receive every prepared update from
rank 0, apply their share of it (`rl/data_parallel.py`) and exit on rank 0's `Stop`. What is replicated on every
rank: the whole policy (frozen weights included, unless sharded: below), the optimizer states and the prepared rollout; at start rank 0's
trainable weights, optimizer states and counters are copied to the others (`replicate_state`), so a run resumes on
any number of ranks from a checkpoint rank 0 reads.

With `--shard_frozen=true` the frozen weights of a VLA backbone (the VLM that `freeze_vlm` freezes) are sharded
over the ranks with FSDP2 (`shard_frozen`): each rank keeps about 1/N of them and gathers each frozen module's
weights from all ranks when the prefix is encoded, then frees them again. The trainable weights stay whole on every
rank and their gradients are summed as above. Rank 0 then shares the raw rollout and every rank prepares it (the
frozen forward is a collective, see `rl/algorithm.py`); before rank 0 writes a checkpoint, the other ranks join the
gathers of the full frozen weights (`GatherFrozen`), so a checkpoint holds whole tensors in LeRobot's layout.

Control messages (prepared updates, rollouts, `GatherFrozen`, `Stop`) travel on a CPU (gloo) group whose timeout lets followers wait as long
as rank 0 takes to collect a rollout from actors; the per-minibatch collectives use the default group. A rank that
dies takes the others down with it: the launcher (torchrun, accelerate) stops the remaining ranks.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
from torch import Tensor, nn

from ..rl.data_parallel import SINGLE_PROCESS, DataParallel

logger = logging.getLogger("lerobot_policy_pi_rl.learner")

# How long followers wait for rank 0's next message (a rollout can take long to collect from real robots).
CONTROL_TIMEOUT = timedelta(days=7)


@dataclass
class Stop:
    """Rank 0's last message to the followers: training is over (or rank 0 stopped on purpose)."""

    exit_code: int


@dataclass
class GatherFrozen:
    """Rank 0 is about to write a checkpoint: every rank joins the gathers of the sharded frozen weights."""


def init_data_parallel(cfg) -> DataParallel:
    """The rank context of this learner process: `SINGLE_PROCESS` unless a launcher set WORLD_SIZE > 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        if getattr(cfg, "shard_frozen", False):
            raise ValueError(_single_process_error(world_size))
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


def _single_process_error(world_size: int) -> str:
    return (f"shard_frozen=true needs several learner ranks, but this learner is one process (WORLD_SIZE="
            f"{world_size}): start it with `torchrun --nproc_per_node N` or `accelerate launch --num_processes N`, "
            "or drop --shard_frozen")


def frozen_units(policy) -> list[nn.Module]:
    """The modules `shard_frozen` shards, one FSDP2 unit each: under every module the backbone names as its frozen
    VLM (`vlm_modules()`), the outermost modules that hold parameters themselves, each with everything below it.

    Not whole transformer layers: the upstream VLAs call a layer's norms and projections one by one rather than
    the layer, and FSDP2 gathers a unit's weights only when the unit itself is called. A module that holds a
    parameter and is called as a whole (a linear, a norm, an embedding, an attention with its own in-projection)
    always is. A module whose parameters all belong to an earlier unit (a tied copy, e.g. an LM head tied to the
    embeddings) is no unit of its own: `shard_frozen` points it at the sharded weight."""
    backbone = policy.backbone
    if not getattr(backbone, "freeze_vlm", False) or not hasattr(backbone, "vlm_modules"):
        kind = getattr(policy.config.backbone, "type", type(backbone).__name__)
        raise ValueError(
            f"shard_frozen=true shards the frozen VLM of a VLA backbone, but backbone.type={kind} "
            f"{'has no VLM' if not hasattr(backbone, 'vlm_modules') else 'trains its VLM (freeze_vlm=false)'}: "
            "drop --shard_frozen"
        )
    units: list[nn.Module] = []
    claimed: set[int] = set()

    def visit(module: nn.Module) -> None:
        if not list(module.parameters(recurse=False)):
            for child in module.children():
                visit(child)
            return
        params = {id(p): (name, p) for name, p in module.named_parameters()}
        if set(params) <= claimed:
            return
        trainable = [name for name, p in params.values() if p.requires_grad]
        if trainable:
            raise ValueError(f"shard_frozen: {type(module).__name__} of the frozen VLM has trainable parameters "
                             f"{trainable[:3]}; only frozen weights are sharded")
        units.append(module)
        claimed.update(params)

    for module in backbone.vlm_modules():
        visit(module)
    return units


def shard_frozen(ranks: DataParallel, policy) -> None:
    """Shard the policy's frozen VLM over the ranks (FSDP2 `fully_shard` per `frozen_units` module, resharded
    after each forward); every rank calls this at the same point, on equal weights."""
    if not ranks.distributed:
        raise ValueError(_single_process_error(ranks.world_size))
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    units = frozen_units(policy)
    # Where each frozen parameter is registered: its first holder, then any tied copies.
    holders: dict[int, tuple[nn.Module, str]] = {}
    tied: list[tuple[nn.Module, str, int]] = []
    for top in policy.backbone.vlm_modules():
        for module in top.modules():
            for name, p in module.named_parameters(recurse=False):
                if id(p) in holders:
                    tied.append((module, name, id(p)))
                else:
                    holders[id(p)] = (module, name)
    mesh = init_device_mesh(next(policy.parameters()).device.type, (ranks.world_size,))
    for unit in units:
        fully_shard(unit, mesh=mesh, reshard_after_forward=True)
    for module, name, key in tied:  # FSDP2 registered a new (sharded) parameter on the first holder only
        holder, holder_name = holders[key]
        module.register_parameter(name, getattr(holder, holder_name))
    ranks.shards_frozen = True
    local, full = frozen_storage(policy)
    logger.info("[LEARNER] rank %d holds %.1f of %.1f MB of frozen weights (%d FSDP2 units over %d ranks)",
                ranks.rank, local / 1e6, full / 1e6, len(units), ranks.world_size)


def frozen_storage(policy) -> tuple[int, int]:
    """Bytes of this rank's shards of the sharded weights, and bytes of those weights whole."""
    from torch.distributed.tensor import DTensor

    sharded = [p for p in policy.parameters() if isinstance(p, DTensor)]
    local = sum(p.to_local().numel() * p.element_size() for p in sharded)
    return local, sum(p.numel() * p.element_size() for p in sharded)


@torch.no_grad()
def gather_frozen(ranks: DataParallel, policy) -> dict[str, Tensor]:
    """The sharded weights whole, on the CPU, on rank 0 (empty on the others): a collective that every rank enters,
    one tensor at a time (no rank ever holds more than one gathered tensor beyond its shards)."""
    from torch.distributed.tensor import DTensor

    full = {}
    for name, p in policy.named_parameters():
        if isinstance(p, DTensor):
            whole = p.full_tensor()
            if ranks.is_main:
                full[name] = whole.cpu()
    return full


@contextlib.contextmanager
def full_frozen_weights(ranks: DataParallel, policy) -> Iterator[None]:
    """Rank 0, around a checkpoint write: `policy.state_dict()` holds whole tensors where the frozen weights are
    sharded, so the checkpoint keeps LeRobot's layout and loads on any number of ranks. The other ranks are told
    to join the gathers (`GatherFrozen`). Nothing to do without sharding."""
    if not ranks.shards_frozen or not ranks.is_main:
        yield
        return
    ranks.share(GatherFrozen())
    full = gather_frozen(ranks, policy)

    def whole(module, state_dict, prefix, local_metadata) -> None:
        for name, tensor in full.items():
            if prefix + name in state_dict:
                state_dict[prefix + name] = tensor

    handle = policy.register_state_dict_post_hook(whole)
    try:
        yield
    finally:
        handle.remove()


def setup_ranks(cfg, ranks: DataParallel, algorithm) -> None:
    """On every rank, at the same point, once the weights are loaded: shard the frozen weights when asked
    (`--shard_frozen`), then take rank 0's trainable state (`replicate_state`)."""
    if getattr(cfg, "shard_frozen", False):
        algorithm.frozen_fingerprint()  # of the whole frozen weights, for the actors' check, before each rank drops most
        shard_frozen(ranks, algorithm.policy)
    replicate_state(ranks, algorithm)


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
    from ..rl.algorithm import PiRLAlgorithm
    from .config import make_run_policy

    policy = make_run_policy(cfg)
    policy.train()
    algorithm = PiRLAlgorithm(policy=policy, config=cfg.algorithm)
    algorithm.make_optimizers_and_scheduler()
    algorithm.data_parallel = ranks
    setup_ranks(cfg, ranks, algorithm)
    logger.info("[LEARNER] rank %d/%d following rank 0 from update %d (version %d)", ranks.rank, ranks.world_size,
                algorithm.num_updates, algorithm.policy_version)
    return follow(ranks, algorithm)


def follow(ranks: DataParallel, algorithm) -> int:
    """A follower's loop: do what each of rank 0's messages says until `Stop`; returns the exit code."""
    while True:
        message = ranks.share(None)
        if isinstance(message, Stop):
            logger.info("[LEARNER] rank %d stops after %d updates (rank 0 exit code %d)", ranks.rank,
                        algorithm.num_updates, message.exit_code)
            return 0
        if isinstance(message, GatherFrozen):
            gather_frozen(ranks, algorithm.policy)
            continue
        algorithm.apply_shared(message)
