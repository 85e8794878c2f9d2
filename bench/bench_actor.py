"""Actor throughput vs the raw env, and weight-publication cost, on the state-only PickCube env (CPU).

    MUJOCO_GL=osmesa PYOPENGL_PLATFORM=osmesa HF_HUB_OFFLINE=1 python bench/bench_actor.py [--steps 600]

1. Raw env rate: N envs stepped one by one with random actions (env steps / s, all envs together).
2. Actor chunk loop (`PiRLActor` stages: preprocess -> sample_chain -> postprocess -> execute <= C actions per
   env -> build + serialize chunk transitions), same envs, default flow_mlp (no learner: transitions go to a queue).
   Target: actor >= 0.5x the raw env rate.
3. Weight publication for flow_mlp's trainable set: get_weights + serialize, send over loopback gRPC through
   LeRobot's transport (BroadcastLearnerService -> stock `receive_policy`), deserialize + load_weights.
"""

from __future__ import annotations

import argparse
from pathlib import Path
import os
import statistics
import sys
import threading
import time

os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch.multiprocessing import Queue  # noqa: E402


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_cfg(n_envs: int, port: int):
    from lerobot_policy_pi_rl.runtime.cli import load_config

    return load_config([
        "--policy.type=pi_rl", "--env.type=pi_rl_pickcube", "--policy.device=cpu", "--algorithm.type=pi_rl",
        f"--n_envs={n_envs}", f"--policy.actor_learner_config.learner_port={port}", "--output_dir=/tmp/pi_rl_bench",
    ])


def raw_env_rate(n_envs: int, steps: int) -> float:
    from lerobot_policy_pi_rl.envs.pickcube import make_pickcube_env

    envs = [make_pickcube_env(seed=i) for i in range(n_envs)]
    for i, env in enumerate(envs):
        env.reset(seed=i)
    t0 = time.perf_counter()
    for _ in range(steps // n_envs):
        for env in envs:
            _, _, term, trunc, _ = env.step(env.action_space.sample())
            if term or trunc:
                env.reset()
    rate = (steps // n_envs) * n_envs / (time.perf_counter() - t0)
    for env in envs:
        env.close()
    return rate


def actor_rate(n_envs: int, steps: int) -> tuple[float, dict[str, float]]:
    from lerobot.policies import make_policy, make_pre_post_processors

    from lerobot_policy_pi_rl.rl.algorithm import PiRLAlgorithm
    from lerobot_policy_pi_rl.runtime.actor import PiRLActor, Workers
    from lerobot_policy_pi_rl.runtime.env_streams import make_env_streams

    cfg = make_cfg(n_envs, free_port())
    policy = make_policy(cfg=cfg.policy, env_cfg=cfg.env).eval()
    algorithm = PiRLAlgorithm(policy, cfg.algorithm)
    pre, post = make_pre_post_processors(policy_cfg=cfg.policy)
    actor = PiRLActor(cfg, policy, algorithm, pre, post, make_env_streams(cfg, n_envs, 0), Workers(Queue(), Queue(), Queue()),
                      threading.Event())
    actor.session = 1
    done = threading.Event()

    def drain() -> None:  # stands in for the transport worker that ships transitions to the learner
        while not done.is_set():
            try:
                actor.workers.transitions.get(timeout=0.1)
            except Exception:
                pass

    drainer = threading.Thread(target=drain, daemon=True)
    drainer.start()
    stages = dict.fromkeys(("preprocess", "sample_chain", "postprocess", "env", "send", "next_obs"), 0.0)
    observations = actor.reset_all()
    t0 = time.perf_counter()
    while actor.env_steps < steps:
        t = time.perf_counter()
        batch = actor.preprocess(observations)
        stages["preprocess"] += time.perf_counter() - t; t = time.perf_counter()
        sample = policy.sample_chain(actor.stack(batch))
        stages["sample_chain"] += time.perf_counter() - t; t = time.perf_counter()
        actions = actor.postprocess(sample.action_chunk[:, : actor.C])
        stages["postprocess"] += time.perf_counter() - t; t = time.perf_counter()
        outcomes = [actor.execute_chunk(i, actions[i]) for i in range(n_envs)]
        stages["env"] += time.perf_counter() - t; t = time.perf_counter()
        actor.send(batch, outcomes, sample)
        stages["send"] += time.perf_counter() - t; t = time.perf_counter()
        observations = actor.next_observations(outcomes)
        stages["next_obs"] += time.perf_counter() - t
    elapsed = time.perf_counter() - t0
    done.set()
    drainer.join()
    for stream in actor.streams:
        stream.close()
    return actor.env_steps / elapsed, {k: v / elapsed for k, v in stages.items()}


def tiny_smolvla_policies(tmp: Path):
    """Two pi_rl policies on a tiny random-weight SmolVLA built offline (learner side, actor side)."""
    import contextlib
    import io

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import tiny_vla as tv

    from lerobot_policy_pi_rl.configuration_pi_rl import FlowSDEConfig, PiRLConfig, SmolVLABackboneConfig
    from lerobot_policy_pi_rl.modeling_pi_rl import PiRLPolicy

    with contextlib.redirect_stdout(io.StringIO()):
        checkpoint = tv.build_tiny_smolvla_checkpoint(tmp)
    inputs, outputs = tv.features()

    def make():
        return PiRLPolicy(PiRLConfig(
            variant=FlowSDEConfig(), backbone=SmolVLABackboneConfig(pretrained_path=str(checkpoint)),
            num_denoise_steps=4, chunk_size=tv.CHUNK_SIZE, n_action_steps=5, device="cpu",
            input_features=inputs, output_features=outputs,
        ))

    return make(), make()


def weight_publication(repeats: int = 5, policies=None) -> dict[str, float]:
    from lerobot.policies import make_policy
    from lerobot.rl.actor import receive_policy
    from lerobot.transport.utils import bytes_to_state_dict, state_to_bytes

    from lerobot_policy_pi_rl.rl.algorithm import PiRLAlgorithm
    from lerobot_policy_pi_rl.runtime.learner import build_transport
    from lerobot_policy_pi_rl.runtime.transport import LEARNER_SESSION_KEY, TRAINING_DONE_KEY, new_client, stop_server

    cfg = make_cfg(1, free_port())
    cfg.policy.concurrency.actor = "threads"
    if policies is None:
        policies = make_policy(cfg=cfg.policy, env_cfg=cfg.env), make_policy(cfg=cfg.policy, env_cfg=cfg.env)
    learner_algo = PiRLAlgorithm(policies[0], cfg.algorithm)
    actor_algo = PiRLAlgorithm(policies[1], cfg.algorithm)
    stop = threading.Event()
    transport = build_transport(cfg, stop)
    received: Queue = Queue()
    stub, channel = new_client(cfg.policy.actor_learner_config.learner_host, cfg.policy.actor_learner_config.learner_port)
    receiver = threading.Thread(target=receive_policy, args=(cfg, received, stop, stub, channel), daemon=True)
    receiver.start()
    times: dict[str, list[float]] = {"serialize": [], "transport": [], "apply": []}
    size = 0
    n_params = sum(v.numel() for v in learner_algo.get_weights()["state_dict"].values())
    try:
        for version in range(repeats + 1):
            t = time.perf_counter()
            weights = learner_algo.get_weights()
            weights.update({"policy_version": version, LEARNER_SESSION_KEY: 1, TRAINING_DONE_KEY: False})
            payload = state_to_bytes(weights)
            t_ser = time.perf_counter() - t
            t = time.perf_counter()
            transport.parameters_queue.put(payload)
            message = received.get(timeout=30)
            t_send = time.perf_counter() - t
            t = time.perf_counter()
            actor_algo.load_weights(bytes_to_state_dict(message))
            t_apply = time.perf_counter() - t
            assert actor_algo.policy_version == version
            if version > 0:  # the first message includes stream set-up
                times["serialize"].append(t_ser)
                times["transport"].append(t_send)
                times["apply"].append(t_apply)
            size = len(payload)
    finally:
        stop.set()
        channel.close()
        stop_server(transport.server, grace_s=1.0)
    out = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    out["bytes"] = float(size)
    out["params"] = float(n_params)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=600, help="env steps per measurement")
    ap.add_argument("--envs", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--skip_smolvla", action="store_true", help="only flow_mlp in the weight-publication table")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for n in args.envs:
        raw = raw_env_rate(n, args.steps)
        act, stages = actor_rate(n, args.steps)
        rows.append((n, raw, act, stages))
    print()
    print("| envs | raw env steps/s | actor env steps/s | actor / raw | actor time split (env / sample_chain / pre+post / send) |")
    print("|---:|---:|---:|---:|---|")
    for n, raw, act, st in rows:
        split = f"{st['env']:.0%} / {st['sample_chain']:.0%} / {st['preprocess'] + st['postprocess'] + st['next_obs']:.0%} / {st['send']:.0%}"
        print(f"| {n} | {raw:.1f} | {act:.1f} | {act / raw:.2f} | {split} |")
    import tempfile

    results = [("flow_mlp", weight_publication())]
    if not args.skip_smolvla:
        with tempfile.TemporaryDirectory() as tmp:
            results.append(("tiny SmolVLA (VLM frozen)", weight_publication(policies=tiny_smolvla_policies(Path(tmp)))))
    print()
    print("weight publication of the trainable set, median of 5:")
    print("| policy | parameters | MB | serialize (get_weights + torch.save) ms | gRPC loopback send+receive ms "
          "| apply (torch.load + load_weights) ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, w in results:
        print(f"| {name} | {int(w['params'])} | {w['bytes'] / 1e6:.2f} | {w['serialize']:.2f} | "
              f"{w['transport']:.2f} | {w['apply']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
