"""gRPC plumbing shared by the PI-RL actor and learner, on LeRobot's unchanged `LearnerService` proto.

Two things LeRobot's stock server cannot do for PI-RL, added here by subclassing/wrapping (not copying):
  * broadcast: the stock `StreamParameters` pops the parameters queue, so with several actors each weight
    message reaches only one of them. `BroadcastLearnerService` keeps the latest message and sends every new one
    to every connected actor stream, right away (versions must reach actors between chunks, not on a timer).
  * capacity: the stock server has 3 worker threads (one actor's 3 streams); this one sizes its pool by the
    number of actors.
Weight messages are `state_to_bytes({"policy_version", "state_dict", "learner_session", "training_done"})`.

Security, also without touching the proto or LeRobot's services: optional TLS (the server presents a certificate,
clients verify it against a CA they are given) and a shared token that every client call carries as
`authorization: Bearer <token>` metadata (a client interceptor adds it; a server interceptor refuses calls without
it with UNAUTHENTICATED, logs the first refusal per peer address, and counts them all). A learner that binds
anything but loopback must have both (`check_network_exposure`).
"""

from __future__ import annotations

import collections
import hmac
import ipaddress
import logging
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
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


# ----------------------------------------------------------------------------------------------------------------
# Security: TLS and the shared token
# ----------------------------------------------------------------------------------------------------------------

# gRPC metadata keys are lower case; the value is `Bearer <token>`, as in HTTP.
AUTH_METADATA_KEY = "authorization"


@dataclass
class TransportSecurityConfig:
    """TLS and a shared token on the learner's gRPC server: both off by default, both required off loopback.

    Only paths and a variable's name are stored (they are saved with every checkpoint's train_config.json), never
    the token itself. The learner reads the certificate and key, an actor the CA; both read the token."""

    # Learner: PEM certificate (chain) its gRPC server presents, with `tls_key_path`. Setting any `tls_*_path`
    # turns TLS on, for the learner and its actors alike.
    tls_cert_path: Path | None = None
    # Learner: PEM private key of `tls_cert_path`.
    tls_key_path: Path | None = None
    # Actors: PEM certificate(s) they verify the learner against (the CA that signed it, or the learner's
    # self-signed certificate itself). Unset: `tls_cert_path` (right for a self-signed certificate).
    tls_ca_path: Path | None = None
    # Actors: the name the learner's certificate must carry when it differs from `learner_host` (e.g. actors dial
    # an IP address, the certificate names a host). Unset: `learner_host`.
    tls_server_name: str | None = None
    # Name of the environment variable that holds the shared token (learner and actors). Every call must carry it.
    token_env: str | None = None
    # File that holds the shared token (stripped of surrounding whitespace); the alternative to `token_env`.
    token_file: Path | None = None

    @property
    def tls_enabled(self) -> bool:
        return any((self.tls_cert_path, self.tls_key_path, self.tls_ca_path))

    @property
    def token_enabled(self) -> bool:
        return bool(self.token_env or self.token_file)


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback IP literals (127.0.0.0/8, ::1, optionally in brackets). Host names are
    not resolved: anything else, `0.0.0.0` included, leaves the machine."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_network_exposure(host: str, security: TransportSecurityConfig, host_field: str) -> None:
    """Off loopback, gRPC traffic crosses a network: refuse it without TLS and a token (ValueError naming the
    fields). The same rule holds for the learner (which binds `host`) and its actors (which dial it)."""
    if is_loopback(host):
        return
    missing = []
    if not security.tls_enabled:
        missing.append("TLS (security.tls_cert_path and security.tls_key_path on the learner, "
                       "security.tls_ca_path on the actors)")
    if not security.token_enabled:
        missing.append("a shared token (security.token_env or security.token_file)")
    if missing:
        raise ValueError(
            f"{host_field}={host!r} is not a loopback address: a learner reachable from the network needs "
            f"{' and '.join(missing)}; or keep {host_field}=127.0.0.1"
        )


def _read_file(path: Path | str, field_name: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise ValueError(f"{field_name}={str(path)!r} cannot be read: {err.strerror or err}") from None


def read_token(security: TransportSecurityConfig) -> str | None:
    """The shared token from `security.token_env` (a variable's name) or `security.token_file` (a path), or None
    when neither is set. Errors name the variable or path, never the value."""
    if security.token_env:
        token = os.environ.get(security.token_env, "").strip()
        source = f"security.token_env={security.token_env!r}: the environment variable"
        if not token:
            raise ValueError(f"{source} is unset or empty in this process")
    elif security.token_file:
        token = _read_file(security.token_file, "security.token_file").decode("utf-8", "replace").strip()
        source = f"security.token_file={str(security.token_file)!r}: the file"
        if not token:
            raise ValueError(f"{source} is empty")
    else:
        return None
    if not (token.isascii() and token.isprintable()):
        # gRPC metadata values are printable ASCII.
        raise ValueError(f"{source} holds a token with characters gRPC metadata cannot carry; use printable "
                         "ASCII (e.g. `openssl rand -hex 32`)")
    return token


@dataclass(frozen=True)
class ServerSecurity:
    """What the learner's server is built with: TLS credentials (None: plaintext) and the token check (None:
    no token)."""

    credentials: grpc.ServerCredentials | None = None
    auth: TokenAuthInterceptor | None = None


@dataclass(frozen=True)
class ClientSecurity:
    """What an actor's channel is built with: the PEM roots it verifies the learner against (None: plaintext),
    the name the learner's certificate must carry (None: the host dialled) and the token (None: no token)."""

    root_certificates: bytes | None = None
    server_name: str | None = None
    token: str | None = field(default=None, repr=False)


PLAINTEXT = ClientSecurity()


def server_security(security: TransportSecurityConfig) -> ServerSecurity:
    """The learner's side of `security`: certificate and key read now, so a bad path fails before binding."""
    credentials = None
    if security.tls_enabled:
        for name in ("tls_cert_path", "tls_key_path"):
            if not getattr(security, name):
                raise ValueError(f"security.{name} is not set: TLS is on (security.tls_* is set), so the learner "
                                 "needs security.tls_cert_path and security.tls_key_path")
        chain = _read_file(security.tls_cert_path, "security.tls_cert_path")
        key = _read_file(security.tls_key_path, "security.tls_key_path")
        credentials = grpc.ssl_server_credentials([(key, chain)])
    token = read_token(security)
    return ServerSecurity(credentials, TokenAuthInterceptor(token) if token is not None else None)


def client_security(security: TransportSecurityConfig) -> ClientSecurity:
    """The actor's side of `security`: it trusts `tls_ca_path`, else the learner's own (self-signed)
    `tls_cert_path`."""
    roots = None
    if security.tls_enabled:
        if security.tls_ca_path:
            roots = _read_file(security.tls_ca_path, "security.tls_ca_path")
        elif security.tls_cert_path:
            roots = _read_file(security.tls_cert_path, "security.tls_cert_path")
        else:
            raise ValueError("security.tls_ca_path is not set: TLS is on (security.tls_* is set), so the actor "
                             "needs the certificate(s) it verifies the learner with")
    return ClientSecurity(roots, security.tls_server_name or None, read_token(security))


class TokenAuthInterceptor(grpc.ServerInterceptor):
    """Refuses every call whose `authorization` metadata is not `Bearer <token>` with UNAUTHENTICATED.

    The first refusal from each peer address (port stripped, so a reconnecting client is one peer) is logged with
    that address and why (no token / a wrong token); every refusal is counted (`refused_calls`, `refusals`)."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()
        self._lock = threading.Lock()
        self._by_peer: collections.Counter[str] = collections.Counter()

    @property
    def refused_calls(self) -> int:
        with self._lock:
            return sum(self._by_peer.values())

    def refusals(self) -> dict[str, int]:
        """Refused calls per peer address."""
        with self._lock:
            return dict(self._by_peer)

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        presented = dict(handler_call_details.invocation_metadata or ()).get(AUTH_METADATA_KEY)
        if isinstance(presented, str) and hmac.compare_digest(presented.encode(), self._expected):
            return handler
        reason = "no token" if presented is None else "a wrong token"
        return _refusing_handler(handler, lambda context: self._refuse(context, handler_call_details.method, reason))

    def _refuse(self, context: grpc.ServicerContext, method: str, reason: str) -> None:
        peer = context.peer().rsplit(":", 1)[0]  # "ipv4:10.0.0.7:51234" -> "ipv4:10.0.0.7"
        with self._lock:
            self._by_peer[peer] += 1
            first = self._by_peer[peer] == 1
        if first:
            logger.warning("[LEARNER] refused %s from %s: %s (UNAUTHENTICATED); further refusals from this address "
                           "are counted, not logged", method, peer, reason)
        context.abort(grpc.StatusCode.UNAUTHENTICATED,
                      f"the learner refused {reason}: send the learner's shared token")


def _refusing_handler(handler: grpc.RpcMethodHandler, refuse) -> grpc.RpcMethodHandler:
    """A handler of the same streaming kind and (de)serializers as `handler` whose behaviour is `refuse`."""

    def behaviour(_request_or_iterator, context):
        refuse(context)

    if handler.request_streaming and handler.response_streaming:
        make = grpc.stream_stream_rpc_method_handler
    elif handler.request_streaming:
        make = grpc.stream_unary_rpc_method_handler
    elif handler.response_streaming:
        make = grpc.unary_stream_rpc_method_handler
    else:
        make = grpc.unary_unary_rpc_method_handler
    return make(behaviour, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)


class _CallDetails(
    collections.namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready",
                                            "compression")),
    grpc.ClientCallDetails,
):
    pass


class TokenMetadataInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds `authorization: Bearer <token>` to every call of a channel (LeRobot's workers call the stub as is)."""

    def __init__(self, token: str):
        self._item = (AUTH_METADATA_KEY, f"Bearer {token}")

    def _details(self, details: grpc.ClientCallDetails) -> _CallDetails:
        return _CallDetails(details.method, details.timeout, [*(details.metadata or ()), self._item],
                            details.credentials, details.wait_for_ready, details.compression)

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)


# ----------------------------------------------------------------------------------------------------------------
# Server and clients
# ----------------------------------------------------------------------------------------------------------------


def serve_learner(
    service: BroadcastLearnerService, host: str, port: int, num_actors: int,
    security: ServerSecurity = ServerSecurity(),
) -> grpc.Server:
    """Start the gRPC server (3 streams per actor, plus slack for reconnects) and return it."""
    server = grpc.server(
        ThreadPoolExecutor(max_workers=3 * num_actors + 4),
        interceptors=[security.auth] if security.auth is not None else None,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_SIZE),
            ("grpc.max_send_message_length", MAX_MESSAGE_SIZE),
            ("grpc.so_reuseport", 0),
        ],
    )
    services_pb2_grpc.add_LearnerServiceServicer_to_server(service, server)
    address = f"{host}:{port}"
    if security.credentials is None:
        bound = server.add_insecure_port(address)
    else:
        bound = server.add_secure_port(address, security.credentials)
    if bound == 0:
        raise OSError(f"the learner could not bind {address} (in use?)")
    server.start()
    return server


def stop_server(server: grpc.Server, grace_s: float = SHUTDOWN_TIMEOUT) -> None:
    server.stop(grace_s).wait(grace_s + 1)


def new_client(
    host: str, port: int, security: ClientSecurity = PLAINTEXT
) -> tuple[services_pb2_grpc.LearnerServiceStub, grpc.Channel]:
    """A fresh stub on a fresh channel (after a learner restart a new channel reconnects at once, where an old
    one may sit in exponential reconnect backoff); TLS and the token as `security` says."""
    address = f"{host}:{port}"
    # No gRPC-level retries: a retried client-streaming call replays the messages it had already sent (gRPC keeps
    # the start of a call to replay), so a learner that dropped the connection after receiving them would admit
    # them twice. Reconnecting is the caller's job (the actor's reconnect loop), which never resends.
    options = grpc_channel_options(enable_retries=False)
    if security.root_certificates is None:
        channel = grpc.insecure_channel(address, options)
    else:
        options = list(options)
        if security.server_name:
            options.append(("grpc.ssl_target_name_override", security.server_name))
        credentials = grpc.ssl_channel_credentials(root_certificates=security.root_certificates)
        channel = grpc.secure_channel(address, credentials, options)
    if security.token is not None:
        channel = grpc.intercept_channel(channel, TokenMetadataInterceptor(security.token))
    return services_pb2_grpc.LearnerServiceStub(channel), channel


class LearnerRefusedToken(ConnectionError):
    """The learner answered UNAUTHENTICATED: this client's token is missing or wrong (retrying cannot help)."""


def wait_for_learner(
    host: str, port: int, shutdown_event: Any, timeout_s: float, security: ClientSecurity = PLAINTEXT
) -> bool:
    """Poll `Ready` until the learner answers (True), `timeout_s` passes or shutdown is requested (False).
    Raises `LearnerRefusedToken` when the learner refuses the token."""
    deadline = time.monotonic() + timeout_s
    while not shutdown_event.is_set() and time.monotonic() < deadline:
        stub, channel = new_client(host, port, security)
        try:
            stub.Ready(services_pb2.Empty(), timeout=2.0)
            return True
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise LearnerRefusedToken(
                    f"the learner at {host}:{port} refused this client: {err.details()} (give it the learner's "
                    "token through security.token_env or security.token_file)"
                ) from None
            shutdown_event.wait(0.5)
        finally:
            channel.close()
    return False
