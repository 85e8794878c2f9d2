"""The learner's transition ingest rate with 1, 2, 4, 8 concurrent actors on loopback, side by side in one run.

    MUJOCO_GL=osmesa PYOPENGL_PLATFORM=osmesa python bench/bench_ingest.py [--senders 1,2,4,8] [--messages 240]

A real learner (`build_learner`: the default flow_mlp PickCube policy, its gRPC server) takes messages through its
real arrival path: the gRPC service queues each message, and a thread of this process runs `PiRLLearner.receive`
on it (size check, decode, field/shape/finiteness checks, session check) as the learner's collect loop does. No
PPO update runs: this is the ceiling on what the learner can admit, not a training rate.

Senders are separate processes (forked before gRPC starts here), each one long `SendTransitions` stream over the
client actors use (`new_client`), like an actor's transitions worker. They resend one pre-built, well-formed message
as fast as gRPC takes it: one chunk step of 8 envs (8 chunk transitions, chains sampled by the policy), so the
senders are cheap and the learner is what is measured. Per round: N senders share `--messages` out; the rate is
rows admitted / time from the start until the learner admitted the last message sent (a backlog counts).

Prints per sender count: messages and rows (chunk transitions) admitted per second, MB/s admitted, the learner
process's CPU (all its threads; 100% = one core), the part of it spent in `receive`, the senders' CPU summed, how
long the learner kept admitting after the senders were done (its backlog), and where the rate stops rising.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import tempfile
import threading
import time

os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402


def sender(conn, port: int) -> None:
    """One actor's transitions stream: on a count, resend the message that many times on one call; reply with the
    number sent and this process's CPU seconds."""
    from lerobot.transport import services_pb2
    from lerobot.transport.utils import send_bytes_in_chunks

    from lerobot_policy_pi_rl.runtime.transport import new_client

    message = conn.recv()
    stub, channel = new_client("127.0.0.1", port)
    while (command := conn.recv()) is not None:
        count, sent = command, 0
        cpu0 = time.process_time()

        def stream():
            nonlocal sent
            for _ in range(count):
                yield from send_bytes_in_chunks(message, services_pb2.Transition)
                sent += 1

        stub.SendTransitions(stream())
        conn.send((sent, time.process_time() - cpu0))
    channel.close()


def build(port: int, out: str, n_envs: int):
    """A real learner on `port` and one message of `n_envs` chunk transitions it admits."""
    from lerobot.transport.utils import transitions_to_bytes

    from lerobot_policy_pi_rl.runtime import schema as S
    from lerobot_policy_pi_rl.runtime.cli import load_config
    from lerobot_policy_pi_rl.runtime.learner import build_learner

    cfg = load_config(["--policy.type=pi_rl", "--env.type=pi_rl_pickcube", "--algorithm.type=pi_rl",
                       "--policy.device=cpu", f"--policy.actor_learner_config.learner_port={port}", "--num_actors=8",
                       f"--output_dir={out}"])
    learner = build_learner(cfg, shutdown_event=threading.Event())
    policy = learner.policy.eval()
    g = torch.Generator().manual_seed(0)
    obs = {"observation.state": torch.randn(n_envs, 18, generator=g),
           "observation.environment_state": torch.randn(n_envs, 3, generator=g)}
    with torch.no_grad():
        sample = policy.sample_chain(obs, generator=g)
    c = cfg.policy.n_action_steps
    rows = []
    for i in range(n_envs):
        outcome = S.ChunkOutcome(next_observation={}, executed=sample.action_chunk[i, :c], reward=0.0,
                                 terminated=False, truncated=False, success=False, intervention=False)
        rows.append(S.chunk_transition(
            observation={k: v[i : i + 1] for k, v in obs.items()},
            next_observation={k: v[i : i + 1] for k, v in obs.items()}, sample=sample, row=i, outcome=outcome,
            origin=S.ChunkOrigin(0, learner.session, i, 0)))
    message = transitions_to_bytes(rows)
    assert len(learner.receive(message)) == n_envs, "the learner must admit the benchmark's message"
    return learner, message


class Ingest:
    """The learner's collect side: admit every queued message through `PiRLLearner.receive`, counting."""

    def __init__(self, learner):
        self.learner = learner
        self.messages = self.rows = self.bytes = 0
        self.cpu = 0.0  # this thread's CPU seconds inside `receive`
        self.last = time.perf_counter()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        from queue import Empty

        queue = self.learner.transport.transition_queue
        while not self.stop.is_set():
            try:
                message = queue.get(timeout=0.1)
            except Empty:
                continue
            cpu0 = time.thread_time()
            rows = self.learner.receive(message)
            self.cpu += time.thread_time() - cpu0
            self.messages, self.rows, self.bytes = self.messages + 1, self.rows + len(rows), self.bytes + len(message)
            self.last = time.perf_counter()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--senders", default="1,2,4,8", help="sender counts, one round each")
    parser.add_argument("--messages", type=int, default=240, help="messages per round, shared out among the senders")
    parser.add_argument("--envs", type=int, default=8, help="chunk transitions per message (envs per actor)")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.senders.split(",")]

    torch.set_num_threads(1)
    with socket.socket() as sock:  # the transport module's helper would import gRPC before the fork
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    # Senders fork before this process starts gRPC (a forked gRPC runtime is unusable).
    ctx = multiprocessing.get_context("fork")
    pipes, procs = [], []
    for _ in range(max(counts)):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=sender, args=(child, port), daemon=True)
        proc.start()
        pipes.append(parent)
        procs.append(proc)

    with tempfile.TemporaryDirectory() as out:
        learner, message = build(port, os.path.join(out, "run"), args.envs)
        ingest = Ingest(learner)
        for pipe in pipes:
            pipe.send(message)
        print(f"message: {args.envs} chunk transitions of the default flow_mlp PickCube policy, "
              f"{len(message) / 1e3:.1f} kB; {args.messages} messages per round; cores: {os.cpu_count()}")
        print(f"{'senders':>7} {'msgs/s':>8} {'rows/s':>8} {'MB/s':>7} {'learner CPU':>11} {'in receive':>10} "
              f"{'senders CPU':>11} {'backlog s':>9}")
        rates = []
        try:
            for n in counts:
                m0, r0, b0, rc0 = ingest.messages, ingest.rows, ingest.bytes, ingest.cpu
                t0, cpu0 = time.perf_counter(), time.process_time()
                for pipe in pipes[:n]:
                    pipe.send(args.messages // n)
                replies = [pipe.recv() for pipe in pipes[:n]]
                senders_done = time.perf_counter()
                sent = sum(count for count, _ in replies)
                deadline = time.monotonic() + 120
                while ingest.messages - m0 < sent and time.monotonic() < deadline:
                    time.sleep(0.01)
                wall = ingest.last - t0
                cpu = time.process_time() - cpu0
                msgs, rows, mb = ingest.messages - m0, ingest.rows - r0, (ingest.bytes - b0) / 1e6
                assert msgs == sent and rows == sent * args.envs, (msgs, rows, sent)
                rates.append(rows / wall)
                print(f"{n:>7} {msgs / wall:>8.0f} {rows / wall:>8.0f} {mb / wall:>7.1f} "
                      f"{100 * cpu / wall:>10.0f}% {100 * (ingest.cpu - rc0) / wall:>9.0f}% "
                      f"{100 * sum(c for _, c in replies) / wall:>10.0f}% "
                      f"{max(0.0, ingest.last - senders_done):>9.2f}")
        finally:
            for pipe in pipes:
                pipe.send(None)
            for proc in procs:
                proc.join(timeout=10)
            ingest.stop.set()
            learner.shutdown_event.set()
            learner.close()
    rising = [counts[0]] + [n for i, n in enumerate(counts[1:], 1) if rates[i] > 1.1 * max(rates[:i])]
    print(f"the rate stops rising (by more than 10%) after {rising[-1]} sender(s): best {max(rates):.0f} rows/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
