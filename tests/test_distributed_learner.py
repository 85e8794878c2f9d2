"""The data-parallel learner: the share arithmetic in closed form, 2 gloo ranks against one process on the same
update, and a 2-rank run with an actor that loses a rank and resumes on one.

CPU only, loopback, free ports. The ranks are spawned processes (`torch.multiprocessing`) or the real launcher
(`python -m torch.distributed.run`).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from bandit import bandit_config, collect_rollout
from lerobot_policy_pi_rl.configuration_pi_rl import FlowNoiseConfig
from lerobot_policy_pi_rl.modeling_pi_rl import PiRLPolicy
from lerobot_policy_pi_rl.rl.algorithm import PiRLAlgorithm
from lerobot_policy_pi_rl.rl.config import PiRLAlgorithmConfig
from lerobot_policy_pi_rl.rl.data_parallel import SINGLE_PROCESS, DataParallel, shard_bounds, share_weight
from lerobot_policy_pi_rl.rl.ppo_loss import value_loss
from test_runtime import ENV, _wait_for, free_port, tiny_args

# ---------------------------------------------------------------------------------------------------------------
# The share arithmetic
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "world", "expected"),
    [(16, 2, [(0, 8), (8, 16)]), (5, 2, [(0, 3), (3, 5)]), (7, 3, [(0, 3), (3, 5), (5, 7)]),
     (1, 2, [(0, 1), (1, 1)]), (0, 2, [(0, 0), (0, 0)]), (4, 1, [(0, 4)])],
)
def test_shard_bounds_are_contiguous_in_rank_order_and_differ_by_at_most_one_row(n, world, expected):
    assert [shard_bounds(n, rank=r, world_size=world) for r in range(world)] == expected


@pytest.mark.parametrize(("kwargs", "needle"), [({"n": 4, "rank": 2, "world_size": 2}, "rank=2"),
                                                ({"n": -1, "rank": 0, "world_size": 1}, "n=-1")])
def test_shard_bounds_name_a_bad_value(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        shard_bounds(**kwargs)


def test_share_weight_is_the_ranks_part_of_the_denominator():
    assert share_weight(3, 4) == 0.75 and share_weight(0, 4) == 0.0 and share_weight(0, 0) == 0.0
    assert share_weight(4, 4) == 1.0  # a single process: exactly 1, its loss is unchanged
    with pytest.raises(ValueError, match="local=5"):
        share_weight(5, 4)


def test_share_weighted_masked_means_of_the_shards_sum_to_the_global_masked_mean():
    """Rows 0..6, kept rows {0, 2, 3, 6}, value loss 0.5*(V - R)^2 with V = row index and R = 0 (Huber with a large
    delta): global mean = 0.5*(0 + 4 + 9 + 36)/4 = 6.125. Two ranks hold rows 0..3 and 4..6: their masked means
    0.5*(0+4+9)/3 and 0.5*36/1, weighted 3/4 and 1/4, sum to it."""
    values = torch.arange(7, dtype=torch.float32)
    keep = torch.tensor([1, 0, 1, 1, 0, 0, 1], dtype=torch.bool)

    def loss(rows):
        return value_loss(values=values[rows], old_values=values[rows], returns=torch.zeros(len(rows)),
                          huber_delta=1e6, mask=keep[rows])

    total = int(keep.sum())
    parts = []
    for rank in range(2):
        start, stop = shard_bounds(7, rank=rank, world_size=2)
        rows = torch.arange(start, stop)
        parts.append(float(loss(rows)) * share_weight(int(keep[rows].sum()), total))
    assert parts == pytest.approx([0.5 * 13 / 3 * 0.75, 0.5 * 36 * 0.25])
    assert sum(parts) == pytest.approx(6.125) == float(loss(torch.arange(7)))


def test_a_single_process_draws_the_permutation_it_always_drew_and_communicates_nothing():
    """One rank: the permutation comes from the global RNG exactly as `torch.randperm` (a resumed single-process
    run stays bit-identical), shards are whole minibatches, reductions are identities."""
    torch.manual_seed(3)
    expected = torch.randperm(10)
    torch.manual_seed(3)
    assert torch.equal(SINGLE_PROCESS.permutation(10, device="cpu"), expected)
    rows = torch.arange(5)
    assert SINGLE_PROCESS.shard(rows) is rows and SINGLE_PROCESS.share(rows) is rows
    assert torch.equal(SINGLE_PROCESS.sum(torch.tensor([1.0, 2.0])), torch.tensor([1.0, 2.0]))
    assert SINGLE_PROCESS.is_main and not SINGLE_PROCESS.distributed
    with pytest.raises(ValueError, match="rank=1"):
        DataParallel(rank=1, world_size=1)


# ---------------------------------------------------------------------------------------------------------------
# 2 gloo ranks against one process
# ---------------------------------------------------------------------------------------------------------------

# Measured on this CPU: max |w_2 ranks - w_1 process| = 1.5e-8 after 6 Adam steps (float32 rounding: sums taken
# in another order; weights move by 6e-3), so the bound leaves a margin of 60.
EQUIVALENCE_ATOL = 1e-6
# Two PPO epochs of global minibatches 16, 16, 5: ranks hold 8+8, 8+8 and 3+2 rows.
ROWS, MINIBATCH, EPOCHS = 37, 16, 2


def _fixed_update(data_parallel: DataParallel | None = None) -> tuple[PiRLAlgorithm, object]:
    """A Flow-Noise flow_mlp policy (policy, value and entropy terms all in the loss) and its algorithm at version
    1, and a fixed rollout with intervention rows (masked from the policy loss only) and rows of version 0 (re-scored,
    weighted): the masks cover the ranks' shares unevenly."""
    torch.manual_seed(0)
    cfg = bandit_config(FlowNoiseConfig(noise_head_hidden_dims=[16]))
    policy = PiRLPolicy(cfg)
    algo = PiRLAlgorithm(policy, PiRLAlgorithmConfig(policy_config=cfg, minibatch_size=MINIBATCH,
                                                     update_epochs=EPOCHS, entropy_coef=0.01))
    algo.make_optimizers_and_scheduler()
    algo._policy_version = 1
    rollout = collect_rollout(policy, n=ROWS, version=1, generator=torch.Generator().manual_seed(1))
    rollout.intervention[[0, 3, 4, 5, 11, 20, 29, 30]] = True
    rollout.policy_version[[1, 2, 17, 33]] = 0
    if data_parallel is not None:
        algo.data_parallel = data_parallel
    return algo, rollout


def _rank_main(rank: int, world_size: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        ranks = DataParallel(rank=rank, world_size=world_size, control_group=dist.new_group(backend="gloo"))
        algo, rollout = _fixed_update(ranks)
        if ranks.is_main:
            result = algo.update_rollout(rollout)  # prepares once, shares, applies its share
        else:
            result = algo.apply_update(ranks.share(None))
        torch.save({"state": algo.policy.state_dict(), "steps": result.steps_taken,
                    "version": algo.policy_version, "stats": result.stats.to_log_dict()},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_make_the_same_update_as_one_process(tmp_path):
    import torch.multiprocessing as mp

    single, rollout = _fixed_update()
    before = {k: v.clone() for k, v in single.policy.state_dict().items()}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks run
    try:
        expected = single.update_rollout(rollout)
    finally:
        torch.set_num_threads(threads)
    weights = single.policy.state_dict()

    mp.spawn(_rank_main, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    moved = max(float((weights[k] - before[k]).abs().max()) for k in weights)
    assert moved > 1e-3, "the update must change the weights for the comparison to mean anything"
    for k in weights:
        assert torch.equal(ranks[0]["state"][k], ranks[1]["state"][k]), f"ranks disagree on {k}"
    diff = max(float((ranks[0]["state"][k] - weights[k]).abs().max()) for k in weights)
    assert diff <= EQUIVALENCE_ATOL, f"2 ranks vs 1 process: max |dw| = {diff:.3g}"
    assert ranks[0]["steps"] == ranks[1]["steps"] == expected.steps_taken == EPOCHS * 3
    assert ranks[0]["version"] == ranks[1]["version"] == single.policy_version == 2
    log, one = ranks[0]["stats"], expected.stats.to_log_dict()
    for key in ("policy", "value", "entropy", "ppo/approx_kl", "ppo/clip_fraction", "ppo/ratio_max",
                "flow/std_mean", "samples/used", "actor_grad_norm", "critic_grad_norm"):
        assert log[key] == pytest.approx(one[key], rel=1e-4, abs=1e-6), key
    assert one["samples/used"] == ROWS - 8


# ---------------------------------------------------------------------------------------------------------------
# A 2-rank run with an actor: checkpoint, SIGKILL of rank 1, resume on one rank
# ---------------------------------------------------------------------------------------------------------------


def _rank_pid(launcher: subprocess.Popen, rank: int, timeout: float) -> int:
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in psutil.Process(launcher.pid).children(recursive=True):
            try:
                if child.environ().get("RANK") == str(rank):
                    return child.pid
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        time.sleep(0.2)
    raise AssertionError(f"no rank {rank} process under the launcher")


def test_two_rank_learner_loses_a_rank_and_resumes_on_one(tmp_path):
    from safetensors.torch import load_file

    from lerobot_policy_pi_rl.runtime.cli import load_config
    from lerobot_policy_pi_rl.runtime.learner import build_learner

    port, out = free_port(), tmp_path / "run"
    # The actor waits out the gap between the two learners (the resume check below runs in between).
    args = tiny_args(port, out, num_updates=4, checkpoint_every_updates=2, reconnect_timeout_s=600, torch_threads=1)
    env = {**ENV, "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
         "lerobot_policy_pi_rl.runtime.learner", *args], env=env,
        stdout=open(tmp_path / "learner2ranks.log", "w"), stderr=subprocess.STDOUT)
    actor = subprocess.Popen([sys.executable, "-m", "lerobot_policy_pi_rl.runtime.actor", *args], env=env,
                             stdout=open(tmp_path / "actor.log", "w"), stderr=subprocess.STDOUT)
    single = None
    try:
        ckpt2 = out / "checkpoints" / "000002"
        _wait_for(lambda: (out / "checkpoints" / "last").exists() and ckpt2.exists(), 240, "checkpoint 2", launcher)
        os.kill(_rank_pid(launcher, 1, 10), signal.SIGKILL)
        assert launcher.wait(timeout=90) != 0, "the launcher must report the lost rank"
        assert actor.poll() is None, "the actor must survive the learner ranks going down"
        last = (out / "checkpoints" / "last").resolve()
        saved = json.loads((last / "training_state" / "training_step.json").read_text())
        assert saved["step"] >= 2 and saved["policy_version"] == saved["step"]

        # Resume on one rank (another rank count): exactly the checkpoint's weights and counters.
        resumed = build_learner(load_config(tiny_args(free_port(), out, num_updates=4, resume="true")),
                                shutdown_event=threading.Event())
        try:
            on_disk = load_file(str(last / "pretrained_model" / "model.safetensors"))
            own = resumed.policy.state_dict()
            for k, v in on_disk.items():
                assert torch.equal(own[k], v), k
            assert resumed.counters.updates == saved["step"]
            assert resumed.algorithm.policy_version == saved["policy_version"]
        finally:
            resumed.shutdown_event.set()
            resumed.transport.server.stop(0)

        single = subprocess.Popen([sys.executable, "-m", "lerobot_policy_pi_rl.runtime.learner", *args,
                                   "--resume=true"], env=env,
                                  stdout=open(tmp_path / "learner1rank.log", "w"), stderr=subprocess.STDOUT)
        assert single.wait(timeout=240) == 0, (tmp_path / "learner1rank.log").read_text()[-3000:]
        assert actor.wait(timeout=60) == 0, (tmp_path / "actor.log").read_text()[-3000:]
    finally:
        for p in (launcher, single, actor):
            if p is not None and p.poll() is None:
                p.kill()
    two = (tmp_path / "learner2ranks.log").read_text()
    assert "rank 0 of 2 data-parallel learner ranks" in two and "rank 1/2 following rank 0" in two, two[-3000:]
    one = (tmp_path / "learner1rank.log").read_text()
    assert re.search(rf"resumed from .*{last.name}: update {saved['step']}, version {saved['step']}", one), one[-3000:]
    final = json.loads((out / "checkpoints" / "000004" / "training_state" / "training_step.json").read_text())
    assert final["step"] == 4 and final["policy_version"] == 4
    assert "(training done)" in (tmp_path / "actor.log").read_text()


def test_two_ranks_started_by_accelerate_train_to_the_end_and_every_rank_exits(tmp_path):
    """The clean end: rank 0 finishes, tells rank 1 to stop, both exit 0; only rank 0 logs metrics and checkpoints."""
    port, out = free_port(), tmp_path / "run"
    args = tiny_args(port, out, num_updates=2, checkpoint_every_updates=0, n_envs=1, torch_threads=1)
    env = {**ENV, "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--main_process_port", str(free_port()), "-m", "lerobot_policy_pi_rl.runtime.learner", *args], env=env,
        stdout=open(tmp_path / "learner.log", "w"), stderr=subprocess.STDOUT)
    actor = subprocess.Popen([sys.executable, "-m", "lerobot_policy_pi_rl.runtime.actor", *args], env=env,
                             stdout=open(tmp_path / "actor.log", "w"), stderr=subprocess.STDOUT)
    try:
        assert launcher.wait(timeout=300) == 0, (tmp_path / "learner.log").read_text()[-3000:]
        assert actor.wait(timeout=60) == 0, (tmp_path / "actor.log").read_text()[-3000:]
    finally:
        for p in (launcher, actor):
            if p.poll() is None:
                p.kill()
    log = (tmp_path / "learner.log").read_text()
    assert "rank 0 of 2 data-parallel learner ranks" in log and "rank 1 stops after 2 updates" in log, log[-3000:]
    assert [json.loads(line)["update"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["000002", "last"]
