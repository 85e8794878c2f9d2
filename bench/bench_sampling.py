"""Cost of recording a stochastic chain vs. the backbone's own deterministic sampling, at equal K and batch.

    HF_HUB_OFFLINE=1 python bench/bench_sampling.py [--repeats 20] [--threads N]

Rows: `flow_mlp` (pi_rl `sample_chain` vs pi_rl `predict_action_chunk`; B=4 is the actor's n_envs) and a tiny
SmolVLA built offline (pi_rl `sample_chain` vs upstream `SmolVLAPolicy.predict_action_chunk` on the same weights
and batch, with the upstream step count set to K). Each row times both exploration variants on the same backbone
weights, side by side with the deterministic sampler in one alternating run: `sde/det` and `noise/det` are the
ratios of best-of-N times (Flow-SDE's target is <= 1.15; Flow-Noise also runs its noise head at every step).
The sample columns include everything PPO records (chain, log-prob, value). For flow_mlp a last column times a
bare Euler loop over the same backbone: the floor, without the policy's method overhead.
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

from lerobot_policy_pi_rl.configuration_pi_rl import (  # noqa: E402
    FlowNoiseConfig,
    FlowSDEConfig,
    PiRLConfig,
    SmolVLABackboneConfig,
)
from lerobot_policy_pi_rl.flow import time_grid  # noqa: E402
from lerobot_policy_pi_rl.modeling_pi_rl import PiRLPolicy  # noqa: E402
from lerobot_policy_pi_rl.processor_pi_rl import make_pi_rl_pre_post_processors  # noqa: E402


def paired_ms(*fns, repeats: int, warmup: int = 3) -> tuple[float, ...]:
    """Best-of-`repeats` wall time (ms) of each callable, measured alternately so all see the same machine load
    (the minimum is the estimate least disturbed by other processes)."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, t in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            t.append(time.perf_counter() - start)
    return tuple(1e3 * min(t) for t in times)


def bench_flow_mlp(batch: int, k: int, repeats: int) -> tuple[float, float, float, float]:
    """Flow-SDE and Flow-Noise `sample_chain`, `predict_action_chunk`, and a bare Euler loop, on one backbone."""
    from conftest import make_flow_mlp_config, make_obs_batch

    def build(variant: str, **variant_kwargs) -> PiRLPolicy:
        torch.manual_seed(0)  # the backbone is built first: both variants get the same backbone weights
        return PiRLPolicy(make_flow_mlp_config(variant, variant_kwargs=variant_kwargs, num_denoise_steps=k)).eval()

    sde = build("flow_sde")
    noise = build("flow_noise", noise_head_hidden_dims=FlowNoiseConfig().noise_head_hidden_dims)
    obs = make_obs_batch(batch)

    @torch.no_grad()
    def bare_ode():
        context = sde.backbone.encode(obs)
        x = sde._initial_noise(batch, None)
        times = time_grid(k)
        for step in range(k):
            x = x - (1.0 / k) * sde.backbone.velocity(context, x, times[step].expand(batch))[0]
        return x

    return paired_ms(lambda: sde.sample_chain(obs), lambda: noise.sample_chain(obs),
                     lambda: sde.predict_action_chunk(obs), bare_ode, repeats=repeats)


def bench_smolvla(checkpoint: Path, batch: int, k: int, repeats: int) -> tuple[float, float, float, None]:
    import tiny_vla as tv

    inputs, outputs = tv.features()

    def build(variant) -> PiRLPolicy:
        config = PiRLConfig(
            variant=variant,
            backbone=SmolVLABackboneConfig(pretrained_path=str(checkpoint)),
            num_denoise_steps=k,
            chunk_size=tv.CHUNK_SIZE,
            n_action_steps=5,
            device="cpu",
            input_features=inputs,
            output_features=outputs,
        )
        return PiRLPolicy(config).eval()

    sde, noise = build(FlowSDEConfig()), build(FlowNoiseConfig())  # the same checkpoint weights
    upstream = sde.backbone.policy  # same weights
    upstream.config.num_steps = k
    preprocessor, _ = make_pi_rl_pre_post_processors(sde.config, None)
    obs = preprocessor(tv.raw_observation(batch))
    times = paired_ms(lambda: sde.sample_chain(obs), lambda: noise.sample_chain(obs),
                      lambda: upstream.predict_action_chunk(dict(obs)), repeats=repeats)
    return (*times, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's; 1 is steadier when busy)"
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    import contextlib
    import io

    import tiny_vla as tv

    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        checkpoint = tv.build_tiny_smolvla_checkpoint(Path(tmp))
        rows = []
        for batch, k in [(4, 4), (8, 4), (8, 10), (64, 4)]:
            rows.append(("flow_mlp", batch, k, *bench_flow_mlp(batch, k, args.repeats)))
        for batch, k in [(1, 4), (8, 4), (8, 10)]:
            rows.append(("smolvla (tiny)", batch, k, *bench_smolvla(checkpoint, batch, k, args.repeats)))

    print(f"torch threads: {torch.get_num_threads()}, best of {args.repeats} alternating runs")
    header = (f"{'backbone':<16}{'B':>4}{'K':>4}{'Flow-SDE ms':>13}{'Flow-Noise ms':>15}{'deterministic ms':>18}"
              f"{'sde/det':>9}{'noise/det':>11}{'bare ODE ms':>13}{'sde/bare':>10}")
    print(header)
    print("-" * len(header))
    for name, batch, k, sde, noise, det, bare in rows:
        tail = f"{bare:>13.2f}{sde / bare:>9.2f}x" if bare is not None else f"{'-':>13}{'-':>10}"
        print(f"{name:<16}{batch:>4}{k:>4}{sde:>13.2f}{noise:>15.2f}{det:>18.2f}{sde / det:>8.2f}x"
              f"{noise / det:>10.2f}x{tail}")


if __name__ == "__main__":
    main()
