"""Full-size π0, π0.5 and SmolVLA under PI-RL on one GPU: sampling, update, memory, bf16 ratio, weight publication.

    HF_HUB_OFFLINE=1 python bench/bench_vla_gpu.py [--backbones pi0,pi05,smolvla] [--repeats 3] [--out vla.json]
    python bench/bench_vla_gpu.py --tiny --device cpu --repeats 1      # same code path at toy sizes (CI)

Each backbone is built at full size with random weights in bfloat16 (no checkpoint, no network): π0 / π0.5 from
LeRobot's own config tables, SmolVLA over a local SmolVLM2-500M directory written here (its real configuration
and a stand-in word-level processor: the model only reads the processor's special-token ids). The upstream
config goes into `backbone.upstream_config`, which is how a saved pi_rl policy rebuilds without its original
checkpoint. The PI-RL settings of each backbone (variant, K, H, C, value head, the actor's `n_envs`, the learner's
`minibatch_size`, the ratio tolerance) come from its example config in examples/. Observations are random:
LIBERO-like cameras and state, and pre-tokenized prompts of random length (the tokenizers are not needed).

Columns, per backbone, all in one run:
  * chain / det: `sample_chain` vs the upstream policy's own deterministic `predict_action_chunk` (K steps) at
    the actor's batch, best of N alternating runs (target <= 1.15).
  * SFT / PPO: one SFT step (`policy.forward` flow-matching loss + backward + AdamW) vs one PPO minibatch (what
    `PiRLAlgorithm` runs per minibatch: evaluate chain, clipped surrogate + value + entropy losses, backward,
    clipping, its optimizers' steps) on the learner's minibatch; throughput ratio (target >= 0.7 for hybrid
    Flow-SDE, >= 0.7/K for Flow-Noise, which scores all K transitions).
  * peak memory: `torch.cuda.max_memory_allocated` while sampling at the actor's batch, and over a PPO minibatch
    at the learner's (weights and optimizer state included; the rollout storage is not).
  * |log ratio| per Gaussian term: chains sampled in eval mode in actor batches, shuffled into one learner
    minibatch and scored in train mode with the weights unchanged, divided by `ChainEvaluation.terms` as the
    algorithm's first-minibatch guard does; its max against `algorithm.ratio_check_tolerance`.
  * publish: trainable-set weights `PiRLAlgorithm.get_weights()` -> `state_to_bytes` -> the learner's gRPC
    service over loopback -> `bytes_to_state_dict` -> `load_weights` on the actor side (the same policy object
    stands in for the actor's copy: the copy into device memory is the same work). Target <= 2 s for π0.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import queue
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import tiny_vla as tv  # noqa: E402

from lerobot.configs.types import FeatureType, PolicyFeature  # noqa: E402
from lerobot.utils.constants import ACTION, OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS, OBS_STATE  # noqa: E402

from lerobot_policy_pi_rl.backbones.vla_base import encode_upstream_config  # noqa: E402
from lerobot_policy_pi_rl.configuration_pi_rl import (  # noqa: E402
    BackboneConfig,
    PiRLConfig,
    ValueHeadConfig,
    VariantConfig,
)
from lerobot_policy_pi_rl.exploration import ChainRecord  # noqa: E402
from lerobot_policy_pi_rl.modeling_pi_rl import PiRLPolicy  # noqa: E402
from lerobot_policy_pi_rl.rl.algorithm import PiRLAlgorithm  # noqa: E402
from lerobot_policy_pi_rl.rl.config import PiRLAlgorithmConfig  # noqa: E402
from lerobot_policy_pi_rl.rl.ppo_loss import ppo_policy_loss, value_loss  # noqa: E402

BACKBONES = ("pi0", "pi05", "smolvla")
EXAMPLES = {
    "pi0": "pi0_libero_flow_sde.json",
    "pi05": "pi05_libero_flow_noise.json",
    "smolvla": "smolvla_libero_flow_sde.json",
}
# LIBERO-like observations (LeRobot's LIBERO env: two cameras, 8-d state, 7-d action).
CAMERAS = ("observation.images.image", "observation.images.wrist_image")
IMAGE_SHAPE = (3, 256, 256)
STATE_DIM, ACTION_DIM = 8, 7
# Toy sizes of `--tiny`: tests/tiny_vla.py models, small actor batch and minibatch.
TINY_N_ENVS, TINY_MINIBATCH = 2, 4

# SmolVLM2-500M-Video-Instruct (the `vlm_model_name` of LeRobot's SmolVLA), from that model's config.json on
# the hub: a SigLIP-B/16 at 512 px and a SmolLM2-360M text model; pixel shuffle 4 -> 64 tokens per image.
# SmolVLA itself keeps the first `num_vlm_layers=16` text layers and derives its action expert from the text
# config (width x `expert_width_multiplier=0.75`), which is why the text config must be the real one.
SMOLVLM2_500M = dict(
    text_config=dict(
        model_type="llama", hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
        num_key_value_heads=5, head_dim=64, vocab_size=49280, max_position_embeddings=8192, rms_norm_eps=1e-5,
        rope_theta=100000.0, pad_token_id=2, tie_word_embeddings=False,
    ),
    vision_config=dict(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, patch_size=16,
        image_size=512,
    ),
    scale_factor=4,
    image_token_id=49190,
    tie_word_embeddings=False,
)


@dataclass
class Setting:
    """The PI-RL settings of one backbone, read from its example config."""

    backbone: str
    variant: dict[str, Any]
    num_denoise_steps: int
    chunk_size: int
    n_action_steps: int
    value_head: dict[str, Any]
    n_envs: int
    minibatch_size: int
    ratio_check_tolerance: float


def read_setting(backbone: str, *, tiny: bool, variant: str | None) -> Setting:
    example = json.loads((ROOT / "examples" / EXAMPLES[backbone]).read_text())
    policy, algorithm = example["policy"], example["algorithm"]
    variant_cfg = dict(policy["variant"]) if variant is None or variant == policy["variant"]["type"] else {
        "type": variant}
    return Setting(
        backbone=backbone,
        variant=variant_cfg,
        num_denoise_steps=policy["num_denoise_steps"],
        chunk_size=tv.CHUNK_SIZE if tiny else policy["chunk_size"],
        n_action_steps=policy["n_action_steps"],
        value_head=dict(policy.get("value_head", {})) | ({"hidden_dims": [32, 32]} if tiny else {}),
        n_envs=TINY_N_ENVS if tiny else example["n_envs"],
        minibatch_size=TINY_MINIBATCH if tiny else algorithm["minibatch_size"],
        ratio_check_tolerance=algorithm.get("ratio_check_tolerance", PiRLAlgorithmConfig.ratio_check_tolerance),
    )


# -------------------------------------------------------------------------------------------------------------
# Building the policies
# -------------------------------------------------------------------------------------------------------------


def features(tiny: bool) -> tuple[dict[str, PolicyFeature], dict[str, PolicyFeature]]:
    if tiny:
        return tv.features()
    inputs = {key: PolicyFeature(type=FeatureType.VISUAL, shape=IMAGE_SHAPE) for key in CAMERAS}
    inputs[OBS_STATE] = PolicyFeature(type=FeatureType.STATE, shape=(STATE_DIM,))
    return inputs, {ACTION: PolicyFeature(type=FeatureType.ACTION, shape=(ACTION_DIM,))}


def write_smolvlm2_500m(directory: Path) -> Path:
    """A local SmolVLM2-500M "model id": the real configuration and a stand-in processor."""
    from transformers import SmolVLMConfig

    image_size = SMOLVLM2_500M["vision_config"]["image_size"]
    tv.write_tiny_smolvlm(directory, image_size=image_size)  # processor: SmolVLM's special tokens, 64 per image
    SmolVLMConfig(**SMOLVLM2_500M).save_pretrained(directory)  # replaces the tiny model config
    return directory


def upstream_config(setting: Setting, *, tiny: bool, device: str, workdir: Path):
    """LeRobot's config of the upstream policy, at full size (or tests/tiny_vla.py's toy size)."""
    k, h, c = setting.num_denoise_steps, setting.chunk_size, setting.n_action_steps
    if setting.backbone == "smolvla":
        from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig

        if tiny:
            upstream = tv.tiny_smolvla_config(tv.write_tiny_smolvlm(workdir / "vlm"), num_steps=k)
        else:
            inputs, outputs = features(tiny)
            upstream = SmolVLAConfig(
                input_features=inputs, output_features=outputs, chunk_size=h, n_action_steps=c, num_steps=k,
                vlm_model_name=str(write_smolvlm2_500m(workdir / "smolvlm2_500m")), load_vlm_weights=False,
                push_to_hub=False,
            )
    elif tiny:
        upstream = tv.tiny_pi_config(setting.backbone, num_steps=k)
    else:
        from lerobot.policies.pi0.configuration_pi0 import PI0Config
        from lerobot.policies.pi05.configuration_pi05 import PI05Config

        inputs, outputs = features(tiny)
        cls = PI0Config if setting.backbone == "pi0" else PI05Config
        upstream = cls(input_features=inputs, output_features=outputs, chunk_size=h, n_action_steps=c,
                       num_inference_steps=k, dtype="bfloat16", push_to_hub=False)
    upstream.chunk_size, upstream.n_action_steps, upstream.device = h, c, device
    return upstream


def build_policy(setting: Setting, *, tiny: bool, device: str, workdir: Path) -> PiRLPolicy:
    """A random-init pi_rl policy over the full-size (or tiny) upstream model, in bfloat16, on `device`."""
    upstream = upstream_config(setting, tiny=tiny, device=device, workdir=workdir)
    inputs, outputs = features(tiny)
    config = PiRLConfig(
        variant=draccus_decode(VariantConfig, setting.variant),
        backbone=draccus_decode(BackboneConfig, {
            "type": setting.backbone, "freeze_vlm": True, "dtype": "bfloat16",
            "upstream_config": encode_upstream_config(upstream),
        }),
        value_head=ValueHeadConfig(**setting.value_head),
        num_denoise_steps=setting.num_denoise_steps,
        chunk_size=setting.chunk_size,
        n_action_steps=setting.n_action_steps,
        device=device,
        input_features=inputs,
        output_features=outputs,
        push_to_hub=False,
    )
    toy_sizes = tiny and setting.backbone != "smolvla"
    tiny_pi = tv.tiny_paligemma(setting.backbone) if toy_sizes else contextlib.nullcontext()
    torch.manual_seed(0)
    # Parameters are created (and randomly initialized) on the device directly: a 4 B model initialized on the
    # CPU takes minutes.
    with tiny_pi, torch.device(device), contextlib.redirect_stdout(io.StringIO()):
        policy = PiRLPolicy(config)
    return policy.to(device)


def draccus_decode(cls, encoded: dict[str, Any]):
    import draccus

    return draccus.decode(cls, encoded)


def vlm_vocab_size(policy: PiRLPolicy) -> int:
    backbone = policy.backbone
    vlm = backbone.model.vlm_with_expert if hasattr(backbone.model, "vlm_with_expert") else \
        backbone.model.paligemma_with_expert.paligemma
    return int(vlm.config.text_config.vocab_size)


def observation(policy: PiRLPolicy, batch: int, *, seed: int, device: str) -> dict[str, torch.Tensor]:
    """A pre-processed observation batch: images in [0, 1], normalized state, right-padded prompt tokens of random
    length between a quarter and a half of the upstream `tokenizer_max_length` (π0.5's prompt holds the state)."""
    upstream = policy.backbone.policy.config
    g = torch.Generator().manual_seed(seed)
    obs = {key: torch.rand(batch, *ft.shape, generator=g) for key, ft in upstream.image_features.items()}
    obs[OBS_STATE] = torch.randn(batch, upstream.input_features[OBS_STATE].shape[0], generator=g)
    max_length = int(upstream.tokenizer_max_length)
    lengths = torch.randint(max(1, max_length // 4), max(2, max_length // 2) + 1, (batch,), generator=g)
    mask = torch.arange(max_length)[None, :] < lengths[:, None]
    vocab = min(1000, vlm_vocab_size(policy))
    obs[OBS_LANGUAGE_TOKENS] = torch.randint(1, vocab, (batch, max_length), generator=g) * mask
    obs[OBS_LANGUAGE_ATTENTION_MASK] = mask
    return {k: v.to(device) for k, v in obs.items()}


# -------------------------------------------------------------------------------------------------------------
# Measurements
# -------------------------------------------------------------------------------------------------------------


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def paired_ms(*fns, device: str, repeats: int, warmup: int = 1) -> tuple[float, ...]:
    """Best-of-`repeats` wall time (ms) of each callable, run alternately (device work included)."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    synchronize(device)
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, t in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            synchronize(device)
            t.append(time.perf_counter() - start)
    return tuple(1e3 * min(t) for t in times)


def peak_gib(fn, device: str) -> float | None:
    """Peak device memory (GiB) allocated while `fn` runs, everything already resident included."""
    if not device.startswith("cuda"):
        fn()
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**30


def measure_sampling(policy: PiRLPolicy, setting: Setting, *, device: str, repeats: int) -> dict[str, Any]:
    """`sample_chain` vs upstream deterministic sampling at the actor's batch, in eval mode, and its peak memory."""
    policy.eval()
    upstream = policy.backbone.policy
    # Upstream integrates with its own step count: set it to K, as the chain does.
    steps_field = "num_steps" if setting.backbone == "smolvla" else "num_inference_steps"
    setattr(upstream.config, steps_field, setting.num_denoise_steps)
    obs = observation(policy, setting.n_envs, seed=0, device=device)
    chain_ms, det_ms, own_det_ms = paired_ms(
        lambda: policy.sample_chain(obs),
        lambda: upstream.predict_action_chunk(dict(obs)),
        lambda: policy.predict_action_chunk(obs),
        device=device, repeats=repeats,
    )
    return {
        "chain_ms": chain_ms, "upstream_det_ms": det_ms, "pi_rl_det_ms": own_det_ms,
        "chain_over_det": chain_ms / det_ms,
        "actor_peak_gib": peak_gib(lambda: policy.sample_chain(obs), device),
    }


def actor_rows(policy: PiRLPolicy, setting: Setting, *, device: str):
    """`minibatch_size` rows sampled in eval mode in batches of the actor's `n_envs`, shuffled as the learner's
    minibatch draws them: (observations, chain record, behaviour log-prob, behaviour value)."""
    policy.eval()
    parts = []
    for i in range(-(-setting.minibatch_size // setting.n_envs)):
        obs = observation(policy, setting.n_envs, seed=1 + i, device=device)
        parts.append((obs, policy.sample_chain(obs)))
    rows = torch.randperm(len(parts) * setting.n_envs, generator=torch.Generator().manual_seed(0))
    rows = rows[: setting.minibatch_size].to(device)
    obs = {k: torch.cat([p[0][k] for p in parts])[rows] for k in parts[0][0]}
    record = ChainRecord(*(torch.cat([getattr(p[1].record, f) for p in parts])[rows]
                           for f in ("chain", "stochastic", "noise_level")))
    log_prob = torch.cat([p[1].log_prob for p in parts])[rows]
    value = torch.cat([p[1].value for p in parts])[rows]
    return obs, record, log_prob, value


def measure_learner(policy: PiRLPolicy, setting: Setting, *, device: str, repeats: int) -> dict[str, Any]:
    """First-minibatch |log ratio| per term, PPO minibatch vs SFT step, and the PPO minibatch's peak memory."""
    algo = PiRLAlgorithm(policy, PiRLAlgorithmConfig(policy_config=policy.config,
                                                     minibatch_size=setting.minibatch_size))
    algo.make_optimizers_and_scheduler()
    obs, record, old_log_prob, old_value = actor_rows(policy, setting, device=device)
    advantages = torch.randn(setting.minibatch_size, device=device)
    returns = old_value + advantages
    cfg = algo.config

    def ppo_step():
        policy.train()
        ev = policy.evaluate_chain(obs, record)
        pg, _ = ppo_policy_loss(log_prob=ev.log_prob, old_log_prob=old_log_prob, advantages=advantages,
                                clip_low=cfg.clip_low, clip_high=cfg.clip_high, dual_clip=cfg.dual_clip)
        v = value_loss(values=ev.value, old_values=old_value, returns=returns, clip=cfg.value_clip,
                       huber_delta=cfg.huber_delta)
        loss = pg + cfg.value_coef * v
        if policy.exploration.learns_std:
            loss = loss - cfg.entropy_coef * ev.entropy.mean()
        algo._zero_grad()
        loss.backward()
        algo._clip_gradients()
        for opt in algo.optimizers.values():
            opt.step()
        return ev

    # The first minibatch, weights unchanged: the guard's measure (|log ratio| / Gaussian terms per entry).
    first = {}
    learner_peak = peak_gib(lambda: first.setdefault("ev", ppo_step()), device)
    ev = first["ev"]
    per_term = (ev.log_prob.detach().float() - old_log_prob.float()).abs() / ev.terms.clamp_min(1.0)

    trainable = [p for p in policy.parameters() if p.requires_grad]
    sft_opt = torch.optim.AdamW(trainable, lr=1e-5)
    actions = torch.rand(setting.minibatch_size, setting.chunk_size, policy.config.action_dim, device=device) * 2 - 1

    def sft_step():
        policy.train()
        loss, _ = policy.forward({**obs, ACTION: actions})
        sft_opt.zero_grad(set_to_none=True)
        loss.backward()
        sft_opt.step()

    sft_ms, ppo_ms = paired_ms(sft_step, ppo_step, device=device, repeats=repeats)
    k = setting.num_denoise_steps
    target = 0.7 if setting.variant["type"] == "flow_sde" and setting.variant.get("stochastic_steps", "hybrid") == \
        "hybrid" else 0.7 / k
    del sft_opt
    return {
        "log_ratio_per_term_max": float(per_term.max()),
        "log_ratio_per_term_mean": float(per_term.mean()),
        "ratio_check_tolerance": setting.ratio_check_tolerance,
        "sft_ms": sft_ms, "ppo_ms": ppo_ms, "ppo_over_sft_throughput": sft_ms / ppo_ms, "throughput_target": target,
        "learner_peak_gib": learner_peak,
        "algorithm": algo,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure_publication(algo: PiRLAlgorithm, *, device: str, repeats: int) -> dict[str, Any]:
    """Learner `get_weights` -> bytes -> gRPC loopback -> actor `bytes_to_state_dict` + `load_weights`."""
    import grpc
    from torch.multiprocessing import Queue

    from lerobot.transport import services_pb2
    from lerobot.transport.utils import bytes_to_state_dict, receive_bytes_in_chunks, state_to_bytes

    from lerobot_policy_pi_rl.runtime.transport import BroadcastLearnerService, new_client, serve_learner, stop_server

    shutdown = threading.Event()
    parameters: Queue = Queue()
    service = BroadcastLearnerService(
        shutdown_event=shutdown, parameters_queue=parameters, seconds_between_pushes=0.0,
        transition_queue=Queue(), interaction_message_queue=Queue(),
    )
    port = free_port()
    server = serve_learner(service, "127.0.0.1", port, num_actors=1)
    stub, channel = new_client("127.0.0.1", port)
    received: queue.Queue = queue.Queue()

    def receive() -> None:
        try:
            receive_bytes_in_chunks(stub.StreamParameters(services_pb2.Empty()), received, shutdown)
        except grpc.RpcError:
            if not shutdown.is_set():
                raise

    receiver = threading.Thread(target=receive, daemon=True)
    receiver.start()
    actor = PiRLAlgorithm(algo.policy, algo.config)
    times, size = [], 0
    try:
        for _ in range(repeats + 1):  # the first publication also waits for the stream to subscribe
            synchronize(device)
            start = time.perf_counter()
            message = state_to_bytes(algo.get_weights())
            parameters.put(message)
            actor.load_weights(bytes_to_state_dict(received.get(timeout=120)), device=device)
            synchronize(device)
            times.append(time.perf_counter() - start)
            size = len(message)
    finally:
        shutdown.set()
        channel.close()
        stop_server(server, grace_s=1.0)
    return {"publish_s": min(times[1:] or times), "publish_mb": size / 1e6,
            "published_tensors": len(algo.get_weights()["state_dict"])}


def bench_backbone(setting: Setting, *, tiny: bool, device: str, repeats: int) -> dict[str, Any]:
    row: dict[str, Any] = {"backbone": setting.backbone, "variant": setting.variant["type"],
                           "K": setting.num_denoise_steps, "H": setting.chunk_size, "n_envs": setting.n_envs,
                           "minibatch": setting.minibatch_size}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        policy = build_policy(setting, tiny=tiny, device=device, workdir=Path(tmp))
        synchronize(device)
        row["build_s"] = time.perf_counter() - start
    row["params_b"] = sum(p.numel() for p in policy.parameters()) / 1e9
    row["trainable_b"] = sum(p.numel() for p in policy.parameters() if p.requires_grad) / 1e9
    try:
        row |= measure_sampling(policy, setting, device=device, repeats=repeats)
        learner = measure_learner(policy, setting, device=device, repeats=repeats)
        algo = learner.pop("algorithm")
        row |= learner
        row |= measure_publication(algo, device=device, repeats=repeats)
    except torch.OutOfMemoryError as err:
        row["error"] = f"out of memory: {str(err).splitlines()[0]}"
    finally:
        del policy
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return row


# -------------------------------------------------------------------------------------------------------------
# Report
# -------------------------------------------------------------------------------------------------------------


def fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (f"{'backbone':<8} {'variant':<10} {'K':>2} {'params B':>8} {'train B':>8} {'chain ms':>9} "
              f"{'det ms':>8} {'chain/det':>9} {'SFT ms':>8} {'PPO ms':>8} {'PPO/SFT':>12} {'actor GiB':>9} "
              f"{'learner GiB':>11} {'|dlogp|/term':>17} {'publish s':>10} {'MB':>7}")
    print(header)
    print("-" * len(header))
    for r in rows:
        if "error" in r:
            print(f"{r['backbone']:<8} {r['variant']:<10} {r['K']:>2} {r['params_b']:>8.3g} {r['trainable_b']:>8.3g} "
                  f"{r['error']}")
            continue
        throughput = f"{r['ppo_over_sft_throughput']:.2f}x>={r['throughput_target']:.2f}"
        ratio = f"{r['log_ratio_per_term_max']:.1e}<={r['ratio_check_tolerance']:g}"
        print(f"{r['backbone']:<8} {r['variant']:<10} {r['K']:>2} {r['params_b']:>8.3g} {r['trainable_b']:>8.3g} "
              f"{r['chain_ms']:>9.1f} {r['upstream_det_ms']:>8.1f} {r['chain_over_det']:>8.2f}x {r['sft_ms']:>8.1f} "
              f"{r['ppo_ms']:>8.1f} {throughput:>12} {fmt(r['actor_peak_gib'], '.1f'):>9} "
              f"{fmt(r['learner_peak_gib'], '.1f'):>11} {ratio:>17} {r['publish_s']:>10.3f} {r['publish_mb']:>7.1f}")
    print("chain/det target <= 1.15; PPO/SFT = minibatch throughput ratio (target shown); |dlogp|/term = max over "
          "the first minibatch (tolerance shown); actor GiB at the actor's n_envs, learner GiB over a PPO minibatch")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", default=",".join(BACKBONES), help="comma-separated subset of pi0,pi05,smolvla")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --tiny)")
    parser.add_argument("--tiny", action="store_true", help="toy-size models (tests/tiny_vla.py), for a CPU check")
    parser.add_argument("--variant", choices=("flow_sde", "flow_noise"), default=None,
                        help="override the example configs' variant (default: each example's own)")
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON")
    args = parser.parse_args(argv)
    backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]
    unknown = sorted(set(backbones) - set(BACKBONES))
    if unknown or not backbones:
        parser.error(f"--backbones={args.backbones!r}: unknown {unknown}, choose from {list(BACKBONES)}")
    if args.repeats < 1:
        parser.error(f"--repeats={args.repeats} must be >= 1")
    device = args.device or ("cpu" if args.tiny else "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device={device} but CUDA is not available (use --tiny --device cpu for a CPU check)")

    torch.manual_seed(0)
    rows = []
    for backbone in backbones:
        setting = read_setting(backbone, tiny=args.tiny, variant=args.variant)
        rows.append(bench_backbone(setting, tiny=args.tiny, device=device, repeats=args.repeats))
        print(f"[{backbone}] done: {json.dumps(rows[-1], default=str)}", flush=True)

    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"
    print(f"\n{name}, torch {torch.__version__}, bfloat16{' (tiny models)' if args.tiny else ''}, "
          f"best of {args.repeats} alternating runs")
    print_table(rows)
    if args.out is not None:
        args.out.write_text(json.dumps({"device": name, "tiny": args.tiny, "torch": torch.__version__,
                                        "repeats": args.repeats, "rows": rows}, indent=2) + "\n")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
