"""Learner checkpoints: an exact round trip (weights, optimizer moments, RNG, counters), loud failures, the
output-directory guard."""

from __future__ import annotations

import random
import threading

import numpy as np
import pytest
import torch

from lerobot.optim.optimizers import load_optimizer_state_dict
from lerobot.policies import make_policy, make_pre_post_processors
from lerobot.utils.random_utils import serialize_rng_state, set_seed
from safetensors.torch import load_file

from lerobot_policy_pi_rl.rl.algorithm import PiRLAlgorithm
from lerobot_policy_pi_rl.runtime import checkpoint
from lerobot_policy_pi_rl.runtime.checkpoint import CheckpointError
from lerobot_policy_pi_rl.runtime.cli import load_config
from lerobot_policy_pi_rl.runtime.metrics import Counters
from test_runtime import free_port, tiny_args


def build_parts(cfg):
    policy = make_policy(cfg=cfg.policy, env_cfg=cfg.env)
    policy.train()
    algorithm = PiRLAlgorithm(policy, cfg.algorithm)
    algorithm.make_optimizers_and_scheduler()
    pre, post = make_pre_post_processors(policy_cfg=cfg.policy, dataset_stats=None)
    return policy, algorithm, pre, post


def take_optimizer_steps(policy, algorithm, steps: int = 2) -> None:
    """Give every optimizer non-trivial Adam moments."""
    for _ in range(steps):
        for opt in algorithm.get_optimizers().values():
            opt.zero_grad()
            loss = sum((p.float() ** 2).sum() for g in opt.param_groups for p in g["params"])
            loss.backward()
            opt.step()


def test_resume_restores_weights_optimizer_moments_rng_and_counters_exactly(tmp_path):
    out = tmp_path / "run"
    cfg = load_config(tiny_args(free_port(), out))
    set_seed(0)
    policy, algorithm, pre, post = build_parts(cfg)
    take_optimizer_steps(policy, algorithm)
    algorithm.load_state_dict({"policy_version": torch.tensor(3), "num_updates": torch.tensor(4),
                               "optimization_step": torch.tensor(17)})
    counters = Counters(updates=4, interaction_steps=1234, chunks_received=321, episodes=12)
    random.random(), np.random.rand(), torch.rand(3)  # RNG states that are not the seed's
    rng_at_save = serialize_rng_state()
    ckpt = checkpoint.save(cfg, policy=policy, algorithm=algorithm, preprocessor=pre, postprocessor=post,
                           counters=counters)
    assert ckpt.name == "000004" and (out / "checkpoints" / "last").resolve() == ckpt
    saved_weights = {k: v.detach().clone() for k, v in policy.state_dict().items()}
    saved_moments = {name: opt.state_dict() for name, opt in algorithm.get_optimizers().items()}

    set_seed(1)  # a fresh process: other initial weights, untrained optimizers, another RNG position
    fresh_policy, fresh_algorithm, _, _ = build_parts(load_config(tiny_args(free_port(), out, resume="true")))
    random.random(), np.random.rand(), torch.rand(5)
    resumed = checkpoint.resume(cfg, policy=fresh_policy, algorithm=fresh_algorithm)

    assert resumed == counters
    restored = fresh_algorithm.policy_version, fresh_algorithm.num_updates, fresh_algorithm.optimization_step
    assert restored == (3, 4, 17)
    for k, v in fresh_policy.state_dict().items():
        assert torch.equal(v, saved_weights[k]), k
    for name, opt in fresh_algorithm.get_optimizers().items():
        state, expected = opt.state_dict()["state"], saved_moments[name]["state"]
        assert state.keys() == expected.keys() and len(state) > 0, name
        for index, moments in expected.items():
            for key in ("exp_avg", "exp_avg_sq", "step"):
                assert torch.equal(state[index][key], moments[key]), (name, index, key)
        # ... and they are what the checkpoint holds on disk.
        on_disk = load_optimizer_state_dict(ckpt / "training_state" / name)["state"]
        for index, moments in expected.items():
            for key in ("exp_avg", "exp_avg_sq", "step"):
                assert torch.equal(on_disk[str(index)][key].reshape(moments[key].shape), moments[key])
    rng_now = serialize_rng_state()
    rng_on_disk = load_file(str(ckpt / "training_state" / "rng_state.safetensors"))
    assert rng_now.keys() == rng_at_save.keys()
    for key, value in rng_at_save.items():
        assert torch.equal(rng_now[key], value), key
        assert torch.equal(rng_on_disk[key], value), key


def test_a_fresh_run_refuses_to_overwrite_a_run(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints" / "000002").mkdir(parents=True)
    (out / "checkpoints" / "last").symlink_to("000002")
    with pytest.raises(FileExistsError, match="--resume=true"):
        checkpoint.guard_output_dir(load_config(tiny_args(free_port(), out)))
    checkpoint.guard_output_dir(load_config(tiny_args(free_port(), out, resume="true")))  # resuming is fine


def test_resume_from_a_broken_checkpoint_fails_loudly(tmp_path):
    from lerobot_policy_pi_rl.runtime.learner import build_learner

    out = tmp_path / "run"
    with pytest.raises(CheckpointError, match="no checkpoint"):
        build_learner(load_config(tiny_args(free_port(), out, resume="true")), shutdown_event=threading.Event())
    broken = out / "checkpoints" / "000002"
    (broken / "pretrained_model").mkdir(parents=True)
    (broken / "pretrained_model" / "model.safetensors").write_bytes(b"garbage")
    (out / "checkpoints" / "last").symlink_to("000002")
    with pytest.raises(CheckpointError, match="missing|cannot resume"):
        build_learner(load_config(tiny_args(free_port(), out, resume="true")), shutdown_event=threading.Event())
