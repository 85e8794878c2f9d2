"""gRPC plumbing shared by the PI-RL actor and learner, on LeRobot's unchanged `LearnerService` proto.

Two things LeRobot's stock server cannot do for PI-RL, added here by subclassing/wrapping (not copying):
  * broadcast: the stock `StreamParameters` pops the parameters queue, so with several actors each weight
    message reaches only one of them. `BroadcastLearnerService` keeps the latest message and sends every new one
    to every connected actor stream, right away (versions must reach actors between chunks, not on a timer).
  * capacity: the stock server has 3 worker threads (one actor's 3 streams); this one sizes its pool by the
    number of actors.
Weight messages are `state_to_bytes({"policy_version", "state_dict", "learner_session", "training_done"})`.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from lerobot.rl.learner_service import SHUTDOWN_TIMEOUT, LearnerService
from lerobot.rl.queue import get_last_item_from_queue
from lerobot.transport import services_pb2, services_pb2_grpc
from lerobot.transport.utils import MAX_MESSAGE_SIZE, grpc_channel_options, send_bytes_in_chunks

logger = logging.getLogger(__name__)

# Fields added to `algorithm.get_weights()` on the wire.
LEARNER_SESSION_KEY = "learner_session"
TRAINING_DONE_KEY = "training_done"


class BroadcastLearnerService(LearnerService):
    """`LearnerService` whose parameter stream sends every new weights message to every connected actor."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._lock = threading.Condition()
        self._latest: bytes | None = None
        self._latest_seq = 0
        self._delivered: dict[int, int] = {}  # stream token -> last seq sent
        self._next_token = 0

    def _refresh(self) -> None:
        item = get_last_item_from_queue(self.parameters_queue, block=False)
        if item is not None:
            self._latest, self._latest_seq = item, self._latest_seq + 1

    def StreamParameters(self, request, context):  # noqa: N802
        with self._lock:
            token, self._next_token = self._next_token, self._next_token + 1
            self._delivered[token] = 0
        logger.info("[LEARNER] actor stream %d subscribed to parameters", token)
        try:
            while not self.shutdown_event.is_set() and context.is_active():
                with self._lock:
                    self._refresh()
                    seq, buffer = self._latest_seq, self._latest
                if buffer is None or seq == self._delivered[token]:
                    time.sleep(0.02)
                    continue
                yield from send_bytes_in_chunks(buffer, services_pb2.Parameters, log_prefix="[LEARNER] params")
                with self._lock:
                    self._delivered[token] = seq
        finally:
            with self._lock:
                self._delivered.pop(token, None)
        return services_pb2.Empty()

    def all_delivered(self) -> bool:
        """True when every connected actor stream has been sent the newest weights message."""
        with self._lock:
            self._refresh()
            return all(seq == self._latest_seq for seq in self._delivered.values())

    def num_subscribers(self) -> int:
        with self._lock:
            return len(self._delivered)


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the OS picks it), for runs that must not collide
    with another learner on the same machine."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_learner(
    service: BroadcastLearnerService, host: str, port: int, num_actors: int
) -> grpc.Server:
    """Start the gRPC server (3 streams per actor, plus slack for reconnects) and return it."""
    server = grpc.server(
        ThreadPoolExecutor(max_workers=3 * num_actors + 4),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_SIZE),
            ("grpc.max_send_message_length", MAX_MESSAGE_SIZE),
            ("grpc.so_reuseport", 0),
        ],
    )
    services_pb2_grpc.add_LearnerServiceServicer_to_server(service, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"the learner could not bind {host}:{port} (in use?)")
    server.start()
    return server


def stop_server(server: grpc.Server, grace_s: float = SHUTDOWN_TIMEOUT) -> None:
    server.stop(grace_s).wait(grace_s + 1)


def new_client(host: str, port: int) -> tuple[services_pb2_grpc.LearnerServiceStub, grpc.Channel]:
    """A fresh stub on a fresh channel (after a learner restart a new channel reconnects at once, where an old
    one may sit in exponential reconnect backoff)."""
    channel = grpc.insecure_channel(f"{host}:{port}", grpc_channel_options())
    return services_pb2_grpc.LearnerServiceStub(channel), channel


def wait_for_learner(host: str, port: int, shutdown_event: Any, timeout_s: float) -> bool:
    """Poll `Ready` until the learner answers (True), `timeout_s` passes or shutdown is requested (False)."""
    deadline = time.monotonic() + timeout_s
    while not shutdown_event.is_set() and time.monotonic() < deadline:
        stub, channel = new_client(host, port)
        try:
            stub.Ready(services_pb2.Empty(), timeout=2.0)
            return True
        except grpc.RpcError:
            shutdown_event.wait(0.5)
        finally:
            channel.close()
    return False
