"""PI-RL update throughput vs a supervised flow-matching (SFT) step on the same backbone and batch.

    HF_HUB_OFFLINE=1 python bench/bench_update.py [--batch 64] [--repeats 10]

For each backbone and variant, in one run, measured alternately:
  * SFT: `policy.forward(batch)` (the backbone's own flow-matching loss) + backward + AdamW step;
  * PI-RL: one PPO minibatch of the same rows: `evaluate_chain` + clipped surrogate + value + entropy losses,
    backward, per-group clipping, AdamW steps (exactly what `PiRLAlgorithm` runs per minibatch).
Throughput is rows per second; the target is PI-RL/SFT >= 0.7 for Flow-SDE hybrid and >= 0.7/K for Flow-Noise
(which scores all K transitions).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from lerobot_policy_pi_rl.configuration_pi_rl import FlowNoiseConfig, FlowSDEConfig  # noqa: E402
from lerobot_policy_pi_rl.modeling_pi_rl import PiRLPolicy  # noqa: E402
from lerobot_policy_pi_rl.rl.algorithm import PiRLAlgorithm  # noqa: E402
from lerobot_policy_pi_rl.rl.config import PiRLAlgorithmConfig  # noqa: E402
from lerobot_policy_pi_rl.rl.ppo_loss import ppo_policy_loss, value_loss  # noqa: E402


def best_ms(fn_a, fn_b, repeats: int, warmup: int = 2) -> tuple[float, float]:
    for _ in range(warmup):
        fn_a()
        fn_b()
    a, b = [], []
    for _ in range(repeats):
        for fn, times in ((fn_a, a), (fn_b, b)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return 1e3 * min(a), 1e3 * min(b)


def measure(policy: PiRLPolicy, obs: dict, actions: torch.Tensor, repeats: int) -> tuple[float, float]:
    """(SFT step ms, PPO minibatch step ms) on the same policy and rows."""
    algo = PiRLAlgorithm(policy, PiRLAlgorithmConfig(policy_config=policy.config))
    algo.make_optimizers_and_scheduler()
    sft_opt = torch.optim.AdamW(policy.parameters(), lr=1e-5)
    with torch.no_grad():
        sample = policy.sample_chain(obs)
    advantages = torch.randn(actions.shape[0])
    returns = sample.value + advantages

    def sft_step():
        policy.train()
        loss, _ = policy.forward({**obs, "action": actions})
        sft_opt.zero_grad(set_to_none=True)
        loss.backward()
        sft_opt.step()

    def ppo_step():
        policy.train()
        ev = policy.evaluate_chain(obs, sample.record)
        pg, _ = ppo_policy_loss(log_prob=ev.log_prob, old_log_prob=sample.log_prob, advantages=advantages,
                                clip_low=0.2, clip_high=0.2)
        v = value_loss(values=ev.value, old_values=sample.value, returns=returns, clip=0.2, huber_delta=10.0)
        loss = pg + v - 0.005 * ev.entropy.mean()
        algo._zero_grad()
        loss.backward()
        algo._clip_gradients()
        for opt in algo.optimizers.values():
            opt.step()

    return best_ms(sft_step, ppo_step, repeats)


def flow_mlp_rows(batch: int, repeats: int):
    from conftest import make_flow_mlp_config, make_obs_batch

    for name, variant in (("flow_sde hybrid", "flow_sde"), ("flow_noise", "flow_noise")):
        torch.manual_seed(0)
        policy = PiRLPolicy(make_flow_mlp_config(variant))
        obs = make_obs_batch(batch)
        actions = torch.rand(batch, policy.config.chunk_size, policy.config.action_dim) * 2 - 1
        yield "flow_mlp", name, policy.config.num_denoise_steps, *measure(policy, obs, actions, repeats)


def smolvla_rows(batch: int, repeats: int):
    import contextlib
    import io

    import tiny_vla as tv
    from lerobot_policy_pi_rl.configuration_pi_rl import PiRLConfig, SmolVLABackboneConfig
    from lerobot_policy_pi_rl.processor_pi_rl import make_pi_rl_pre_post_processors

    with tempfile.TemporaryDirectory() as tmp:
        with contextlib.redirect_stdout(io.StringIO()):
            checkpoint = tv.build_tiny_smolvla_checkpoint(Path(tmp))
        inputs, outputs = tv.features()
        for name, variant in (("flow_sde hybrid", FlowSDEConfig()), ("flow_noise", FlowNoiseConfig())):
            torch.manual_seed(0)
            config = PiRLConfig(
                variant=variant,
                backbone=SmolVLABackboneConfig(pretrained_path=str(checkpoint)),
                num_denoise_steps=4,
                chunk_size=tv.CHUNK_SIZE,
                n_action_steps=5,
                device="cpu",
                input_features=inputs,
                output_features=outputs,
            )
            policy = PiRLPolicy(config)
            preprocessor, _ = make_pi_rl_pre_post_processors(config, None)
            obs = preprocessor(tv.raw_observation(batch))
            actions = torch.rand(batch, config.chunk_size, config.action_dim) * 2 - 1
            yield "smolvla (tiny)", name, config.num_denoise_steps, *measure(policy, obs, actions, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--skip_smolvla", action="store_true")
    args = parser.parse_args()
    print(f"torch threads: {torch.get_num_threads()}, batch {args.batch}, best of {args.repeats} alternating runs")
    header = f"{'backbone':16s} {'variant':16s} {'K':>2s} {'SFT rows/s':>11s} {'PI-RL rows/s':>13s} {'ratio':>6s} {'target':>7s}"
    print(header)
    print("-" * len(header))
    rows = list(flow_mlp_rows(args.batch, args.repeats))
    if not args.skip_smolvla:
        rows += list(smolvla_rows(max(1, args.batch // 8), args.repeats))
    for backbone, variant, k, sft_ms, ppo_ms in rows:
        batch = args.batch if backbone == "flow_mlp" else max(1, args.batch // 8)
        target = 0.7 if variant.startswith("flow_sde") else 0.7 / k
        ratio = sft_ms / ppo_ms
        print(f"{backbone:16s} {variant:16s} {k:2d} {1e3 * batch / sft_ms:11.0f} {1e3 * batch / ppo_ms:13.0f} "
              f"{ratio:5.2f}x {'>=':>3s}{target:.2f} {'ok' if ratio >= target else 'MISS'}")


if __name__ == "__main__":
    main()
