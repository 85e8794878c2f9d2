"""Sharding the frozen VLM over data-parallel learner ranks (`--shard_frozen`, FSDP2): 2 gloo ranks with the
debug-size SmolVLA's VLM sharded against one unsharded process on the same update, each rank's share of the frozen
weights, a checkpoint written from the shards, and the refusals.

CPU only, free ports; the ranks are spawned processes (`torch.multiprocessing`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lerobot_policy_pi_rl.modeling_pi_rl import PiRLPolicy
from lerobot_policy_pi_rl.rl.algorithm import PiRLAlgorithm
from lerobot_policy_pi_rl.rl.config import PiRLAlgorithmConfig
from lerobot_policy_pi_rl.rl.data_parallel import DataParallel
from lerobot_policy_pi_rl.runtime import distributed
from test_debug_smolvla import make_config, observation, stats
from test_runtime import ENV, free_port, tiny_args

# Five rows in minibatches of 4 and 1: rank 1 holds no row of the second one and must still join its frozen forward.
ROWS, MINIBATCH, SEED = 5, 4, 7
# Measured on this CPU: max |w_2 sharded ranks - w_1 process| = 5.0e-6 after 2 AdamW steps that move the weights by up
# to 2.0e-3 (float32 rounding of the shares' sums, which AdamW's normalized step magnifies where a gradient is
# near zero); the bound leaves a margin of 4. The logged losses and gradient norms, computed before any step
# magnifies anything, are compared tightly.
SHARDED_ATOL = 2e-5


@pytest.fixture()
def lerobot_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The debug VLM directory goes to a per-test HF_LEROBOT_HOME (the ranks point there too)."""
    import lerobot.utils.constants as constants

    home = tmp_path / "lerobot_home"
    monkeypatch.setattr(constants, "HF_LEROBOT_HOME", home)
    return home


def _algorithm(config, init: dict[str, torch.Tensor]) -> PiRLAlgorithm:
    """The policy at `init` weights, at version 1, and its algorithm (one epoch of minibatches 4 and 1)."""
    policy = PiRLPolicy(config)
    policy.load_state_dict(init)
    algo = PiRLAlgorithm(policy, PiRLAlgorithmConfig(policy_config=config, minibatch_size=MINIBATCH, update_epochs=1,
                                                     critic_warmup_updates=0))
    algo.make_optimizers_and_scheduler()
    algo._policy_version = 1
    return algo


def _fixed_setup(tmp_path: Path) -> dict:
    """The debug-size SmolVLA (frozen VLM), its initial weights and a rollout of it: rows 0 and 3 sampled by
    version 0 (re-scored when the update is prepared), rows 1 and 4 not terminated (bootstrapped by the critic)."""
    import tiny_vla as tv
    from lerobot_policy_pi_rl.processor_pi_rl import make_pi_rl_pre_post_processors

    torch.manual_seed(0)
    config = make_config()
    policy = PiRLPolicy(config)
    pre, _ = make_pi_rl_pre_post_processors(config, stats())
    batch = {k: v for k, v in pre(observation(batch=ROWS)).items() if torch.is_tensor(v)}
    sample = policy.sample_chain(batch, generator=torch.Generator().manual_seed(1))
    rollout = tv.vla_rollout(batch, sample, version=1)
    rollout.policy_version[[0, 3]] = 0
    rollout.terminated[[1, 4]] = False
    setup = {"config": policy.config, "init": {k: v.clone() for k, v in policy.state_dict().items()},
             "rollout": rollout}
    torch.save(setup, tmp_path / "setup.pt")
    return setup


def _rank_main(rank: int, world_size: int, port: int, out_dir: str, home: str) -> None:
    import torch.distributed as dist

    import lerobot.utils.constants as constants

    constants.HF_LEROBOT_HOME = Path(home)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        setup = torch.load(Path(out_dir) / "setup.pt", weights_only=False)
        ranks = DataParallel(rank=rank, world_size=world_size, control_group=dist.new_group(backend="gloo"))
        algo = _algorithm(setup["config"], setup["init"])
        algo.data_parallel = ranks
        distributed.setup_ranks(SimpleNamespace(shard_frozen=True), ranks, algo)
        storage = distributed.frozen_storage(algo.policy)
        if ranks.is_main:
            torch.manual_seed(SEED)  # the minibatch permutation, drawn where the single process draws it
            result = algo.update_rollout(setup["rollout"])
            steps, stats = result.steps_taken, result.stats.to_log_dict()
            with distributed.full_frozen_weights(ranks, algo.policy):  # rank 1 joins the gathers (`follow`)
                algo.policy.save_pretrained(Path(out_dir) / "ckpt")
            distributed.stop_followers(ranks, 0)
        else:
            steps, stats = None, None
            distributed.follow(ranks, algo)
        trainable = {n: p.detach().clone() for n, p in algo.policy.named_parameters() if p.requires_grad}
        torch.save({"trainable": trainable, "storage": storage, "steps": steps, "stats": stats,
                    "version": algo.policy_version},
                   Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_with_the_frozen_vlm_sharded_make_the_single_process_update(tmp_path, lerobot_home):
    """Each rank holds half of the frozen VLM, the trainable weights end as the single process's, and the
    checkpoint rank 0 writes holds whole tensors that an unsharded policy loads strictly."""
    import torch.multiprocessing as mp
    from safetensors.torch import load_model

    setup = _fixed_setup(tmp_path)
    single = _algorithm(setup["config"], setup["init"])
    frozen = {n for n, p in single.policy.named_parameters() if not p.requires_grad}
    vlm_bytes = sum(p.numel() * p.element_size() for n, p in single.policy.named_parameters() if n in frozen)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks run
    try:
        torch.manual_seed(SEED)
        expected = single.update_rollout(setup["rollout"])
    finally:
        torch.set_num_threads(threads)
    weights = {n: p.detach() for n, p in single.policy.named_parameters() if p.requires_grad}

    mp.spawn(_rank_main, args=(2, free_port(), str(tmp_path), str(lerobot_home)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    # Memory: every frozen weight is sharded, each rank keeps about half of it.
    (local0, full0), (local1, full1) = ranks[0]["storage"], ranks[1]["storage"]
    assert full0 == full1 == vlm_bytes > 0
    assert local0 + local1 == vlm_bytes
    ratios = [local0 / vlm_bytes, local1 / vlm_bytes]
    assert all(0.45 <= r <= 0.55 for r in ratios), ratios

    # The update: the ranks agree exactly and match the single process within float rounding.
    moved = max(float((weights[k] - setup["init"][k]).abs().max()) for k in weights)
    assert moved > 1e-4, "the update must change the weights for the comparison to mean anything"
    for k in weights:
        assert torch.equal(ranks[0]["trainable"][k], ranks[1]["trainable"][k]), f"ranks disagree on {k}"
    diff = max(float((ranks[0]["trainable"][k] - weights[k]).abs().max()) for k in weights)
    assert diff <= SHARDED_ATOL, f"2 sharded ranks vs 1 process: max |dw| = {diff:.3g} (moved {moved:.3g})"
    assert ranks[0]["steps"] == expected.steps_taken == 2
    assert ranks[0]["version"] == ranks[1]["version"] == single.policy_version == 2
    log, one = ranks[0]["stats"], expected.stats.to_log_dict()
    for key in ("policy", "value", "actor_grad_norm", "critic_grad_norm", "samples/used"):
        assert log[key] == pytest.approx(one[key], rel=1e-4, abs=1e-6), key

    # The checkpoint: whole tensors in LeRobot's layout, loaded strictly by an unsharded policy.
    reloaded = PiRLPolicy(setup["config"])
    load_model(reloaded, str(tmp_path / "ckpt" / "model.safetensors"), strict=True)
    state = reloaded.state_dict()
    for k in frozen:
        assert torch.equal(state[k], setup["init"][k]), f"frozen {k} changed in the checkpoint"
    for k in weights:
        assert torch.equal(state[k], ranks[0]["trainable"][k]), f"trainable {k} differs in the checkpoint"


def test_a_sharded_two_rank_learner_trains_with_an_actor_and_checkpoints_whole_weights(tmp_path, lerobot_home):
    """The path users run: torchrun starts 2 learner ranks with `--shard_frozen` on a fresh debug SmolVLA (no SFT
    checkpoint: its VLM is a random init that each process builds, and only trainable weights are published), one
    actor samples PickCube with a blank camera, two updates pass the first-minibatch ratio check, and the final
    checkpoint loads strictly into an unsharded policy."""
    from lerobot_policy_pi_rl.configuration_pi_rl import PiRLConfig

    port, out = free_port(), tmp_path / "run"
    drop = ("policy.backbone.hidden_dim", "policy.backbone.num_layers", "policy.backbone.token_dim",
            "policy.value_head.hidden_dims")
    args = [a for a in tiny_args(port, out, num_updates=2, checkpoint_every_updates=0, n_envs=1, torch_threads=1,
                                 **{"policy.backbone.type": "smolvla"})
            if not a.startswith(tuple(f"--{k}=" for k in drop))]
    args += ["--policy.backbone.debug_size=tiny", "--env.state_includes_cube=true", "--env.camera=blank",
             "--env.camera_size=32"]
    env = {**ENV, "OMP_NUM_THREADS": "1", "HF_LEROBOT_HOME": str(lerobot_home)}
    launcher = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
         "lerobot_policy_pi_rl.runtime.learner", *args, "--shard_frozen=true"], env=env,
        stdout=open(tmp_path / "learner.log", "w"), stderr=subprocess.STDOUT)
    actor = subprocess.Popen([sys.executable, "-m", "lerobot_policy_pi_rl.runtime.actor", *args], env=env,
                             stdout=open(tmp_path / "actor.log", "w"), stderr=subprocess.STDOUT)
    try:
        assert launcher.wait(timeout=420) == 0, (tmp_path / "learner.log").read_text()[-3000:]
        assert actor.wait(timeout=60) == 0, (tmp_path / "actor.log").read_text()[-3000:]
    finally:
        for proc in (launcher, actor):
            if proc.poll() is None:
                proc.kill()
    log = (tmp_path / "learner.log").read_text()
    assert "rank 0 holds" in log and "rank 1 holds" in log and "over 2 ranks" in log, log[-3000:]
    assert [json.loads(line)["update"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]

    saved = out / "checkpoints" / "last" / "pretrained_model"
    reloaded = PiRLPolicy.from_pretrained(str(saved), strict=True)
    fresh = PiRLPolicy(PiRLConfig.from_pretrained(str(saved)))
    assert {k: v.shape for k, v in reloaded.state_dict().items()} == {k: v.shape for k, v in fresh.state_dict().items()}


def test_shard_frozen_is_refused_where_nothing_frozen_can_be_sharded(tmp_path, monkeypatch, capsys):
    """One learner process, a backbone without a VLM, a VLM that trains, offline mixing: each refused, named."""
    from bandit import bandit_config
    from lerobot_policy_pi_rl.configuration_pi_rl import FlowSDEConfig
    from lerobot_policy_pi_rl.runtime.cli import load_config

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ValueError, match="WORLD_SIZE=1"):
        distributed.init_data_parallel(SimpleNamespace(shard_frozen=True))
    with pytest.raises(ValueError, match="WORLD_SIZE=1"):
        distributed.shard_frozen(DataParallel(), None)
    with pytest.raises(ValueError, match="backbone.type=flow_mlp has no VLM"):
        distributed.frozen_units(PiRLPolicy(bandit_config(FlowSDEConfig(noise_level=0.5))))

    with pytest.raises(SystemExit):
        load_config(tiny_args(free_port(), tmp_path / "run", shard_frozen="true"))
    assert "policy.backbone.type='flow_mlp' has none" in capsys.readouterr().err
    # A VLA backbone whose VLM trains, or offline mixing (the SFT term runs the VLM on rank 0 alone).
    from lerobot_policy_pi_rl.configuration_pi_rl import SmolVLABackboneConfig

    cfg = load_config(tiny_args(free_port(), tmp_path / "run"))
    cfg.shard_frozen = True
    cfg.policy.backbone = SmolVLABackboneConfig(debug_size="tiny", freeze_vlm=False)
    with pytest.raises(ValueError, match="trains its VLM"):
        cfg.validate_shard_frozen()
    cfg.policy.backbone = SmolVLABackboneConfig(debug_size="tiny")
    cfg.validate_shard_frozen()
    cfg.algorithm.offline.ratio = 0.25
    with pytest.raises(ValueError, match="algorithm.offline.ratio=0.25"):
        cfg.validate_shard_frozen()
