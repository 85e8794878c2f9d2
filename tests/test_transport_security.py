"""TLS and the shared token on the actor <-> learner gRPC link.

The learner's real server (`serve_learner` with `server_security`) and the actor's real clients (`start_workers`,
`wait_for_learner`, `new_client` with `client_security`) on a free loopback port, with self-signed certificates
generated here; the configuration rules (loopback by default, TLS and a token off loopback); and one
`lerobot-pi-rl-train` run with TLS and a token switched on, whose checkpoints and logs must not hold the token.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path
from queue import Empty

import grpc
import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lerobot.rl.actor import push_transitions_to_transport_queue  # noqa: E402
from lerobot.transport import services_pb2  # noqa: E402
from lerobot.transport.utils import (  # noqa: E402
    bytes_to_python_object,
    bytes_to_state_dict,
    bytes_to_transitions,
    python_object_to_bytes,
    state_to_bytes,
)

from lerobot_policy_pi_rl.runtime.transport import (  # noqa: E402
    PLAINTEXT,
    BroadcastLearnerService,
    ClientSecurity,
    LearnerRefusedToken,
    TransportSecurityConfig,
    client_security,
    free_loopback_port,
    is_loopback,
    new_client,
    serve_learner,
    server_security,
    stop_server,
    wait_for_learner,
)

TOKEN = "s3cret-learner-token-5d41402abc4b2a76"
TOKEN_ENV = "PI_RL_TEST_LEARNER_TOKEN"


# ----------------------------------------------------------------------------------------------------------------
# Certificates and a learner server
# ----------------------------------------------------------------------------------------------------------------


def self_signed(folder: Path, *, dns: list[str], ips: list[str]) -> tuple[Path, Path]:
    """A self-signed P-256 certificate (its own CA) for the given names; returns (cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns[0])])
    now = dt.datetime.now(dt.timezone.utc)
    sans = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("certs")
    return {
        "learner": self_signed(root / "learner", dns=["localhost"], ips=["127.0.0.1"]),
        "stranger": self_signed(root / "stranger", dns=["localhost"], ips=["127.0.0.1"]),
        "named": self_signed(root / "named", dns=["learner.internal"], ips=[]),
    }


@pytest.fixture
def token_env(monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    return TOKEN_ENV


class Learner:
    """The learner's gRPC side as `build_transport` assembles it."""

    def __init__(self, security: TransportSecurityConfig):
        from torch.multiprocessing import Queue

        self.port = free_loopback_port()
        self.shutdown = threading.Event()
        self.transitions, self.interactions, self.parameters = Queue(), Queue(), Queue()
        self.service = BroadcastLearnerService(
            shutdown_event=self.shutdown, parameters_queue=self.parameters, seconds_between_pushes=0.0,
            transition_queue=self.transitions, interaction_message_queue=self.interactions, queue_get_timeout=0.1)
        self.security = server_security(security)
        self.server = serve_learner(self.service, "127.0.0.1", self.port, num_actors=1, security=self.security)

    @property
    def auth(self):
        return self.security.auth

    def close(self) -> None:
        if not self.shutdown.is_set():
            self.shutdown.set()
            stop_server(self.server, grace_s=0.5)


@pytest.fixture
def learner_factory():
    started: list[Learner] = []

    def make(**security) -> Learner:
        started.append(Learner(TransportSecurityConfig(**security)))
        return started[-1]

    yield make
    for learner in started:
        learner.close()


def tls_and_token(certs, **over) -> dict:
    cert, key = certs["learner"]
    return {"tls_cert_path": cert, "tls_key_path": key, "tls_ca_path": cert, "token_env": TOKEN_ENV, **over}


def call_every_kind(stub) -> list[grpc.StatusCode]:
    """One call of each kind the actor makes: unary (Ready), client streaming (SendTransitions, SendInteractions),
    server streaming (StreamParameters). Returns their status codes."""
    codes = []
    calls = [
        lambda: stub.Ready(services_pb2.Empty(), timeout=5),
        lambda: stub.SendTransitions(iter([services_pb2.Transition(data=b"x")]), timeout=5),
        lambda: stub.SendInteractions(iter([services_pb2.InteractionMessage(data=b"x")]), timeout=5),
        lambda: next(iter(stub.StreamParameters(services_pb2.Empty(), timeout=5))),
    ]
    for call in calls:
        try:
            call()
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as err:
            codes.append(err.code())
    return codes


# ----------------------------------------------------------------------------------------------------------------
# A real actor client and the learner server, over TLS with the token
# ----------------------------------------------------------------------------------------------------------------


def _tiny_config(tmp_path, port: int, **over):
    from test_runtime import tiny_args

    from lerobot_policy_pi_rl.runtime.cli import load_config

    return load_config(tiny_args(port, tmp_path / "run", **{"n_envs": 1, "reconnect_timeout_s": 10, **over}))


def test_an_actor_exchanges_transitions_interactions_and_weights_with_a_tls_token_learner(
        tmp_path, certs, token_env, learner_factory):
    from test_schema import make_chunk

    from lerobot_policy_pi_rl.runtime.actor import start_workers

    cert, key = certs["learner"]
    learner = learner_factory(**tls_and_token(certs))
    assert learner.security.credentials is not None and learner.auth is not None
    cfg = _tiny_config(tmp_path, learner.port, **{"security.tls_ca_path": cert, "security.token_env": token_env})
    security = client_security(cfg.security)
    assert security.root_certificates == cert.read_bytes() and security.token == TOKEN
    assert TOKEN not in repr(security)

    stop = threading.Event()
    assert wait_for_learner("127.0.0.1", learner.port, stop, timeout_s=10, security=security)
    workers = start_workers(cfg, stop, security)
    try:
        # Learner -> actor: a weights message reaches the actor's parameter stream.
        weights = {"policy_version": torch.tensor(3), "state_dict": {"w": torch.arange(6.0)}}
        learner.parameters.put(state_to_bytes(weights))
        received = bytes_to_state_dict(workers.parameters.get(timeout=20))
        assert int(received["policy_version"]) == 3 and torch.equal(received["state_dict"]["w"], torch.arange(6.0))

        # Actor -> learner: a chunk transition and an episode report arrive intact.
        sent = make_chunk(stream=5, index=2)
        push_transitions_to_transport_queue([sent], workers.transitions)
        got = bytes_to_transitions(learner.transitions.get(timeout=20))
        assert len(got) == 1
        for k, v in sent["state"].items():
            assert torch.equal(got[0]["state"][k], v), k
        assert torch.equal(got[0]["action"], sent["action"])
        workers.interactions.put(python_object_to_bytes({"Episodic reward": 1.5}))
        assert bytes_to_python_object(learner.interactions.get(timeout=20)) == {"Episodic reward": 1.5}
    finally:
        stop.set()
        learner.close()  # ends the parameter stream the actor's receiver is blocked on
        for t in workers.threads:
            t.join(timeout=10)
    assert not any(t.is_alive() for t in workers.threads)
    assert learner.auth.refused_calls == 0


def test_the_certificate_name_can_differ_from_the_host_dialled(certs, learner_factory, token_env):
    """A certificate issued for `learner.internal`, dialled at 127.0.0.1: refused unless `tls_server_name`
    says which name to check."""
    cert, key = certs["named"]
    learner = learner_factory(tls_cert_path=cert, tls_key_path=key, token_env=token_env)
    stop = threading.Event()
    plain_name = client_security(TransportSecurityConfig(tls_ca_path=cert, token_env=token_env))
    assert not wait_for_learner("127.0.0.1", learner.port, stop, timeout_s=2, security=plain_name)
    named = client_security(TransportSecurityConfig(tls_ca_path=cert, tls_server_name="learner.internal",
                                                    token_env=token_env))
    assert wait_for_learner("127.0.0.1", learner.port, stop, timeout_s=10, security=named)


# ----------------------------------------------------------------------------------------------------------------
# Refusals
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("client_token", "reason"), [(None, "no token"), ("not-the-token", "a wrong token")])
def test_a_call_without_the_right_token_is_refused_logged_once_per_peer_and_counted(
        certs, token_env, learner_factory, caplog, client_token, reason):
    cert, _ = certs["learner"]
    learner = learner_factory(**tls_and_token(certs))
    client = ClientSecurity(root_certificates=cert.read_bytes(), token=client_token)
    caplog.set_level(logging.WARNING, logger="lerobot_policy_pi_rl.runtime.transport")
    stub, channel = new_client("127.0.0.1", learner.port, client)
    try:
        assert call_every_kind(stub) == [grpc.StatusCode.UNAUTHENTICATED] * 4
    finally:
        channel.close()
    with pytest.raises(LearnerRefusedToken, match=rf"127\.0\.0\.1:{learner.port} refused .*{reason}"):
        wait_for_learner("127.0.0.1", learner.port, threading.Event(), timeout_s=10, security=client)

    assert learner.auth.refused_calls == 5
    assert learner.auth.refusals() == {"ipv4:127.0.0.1": 5}
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == 1, lines  # once per peer address, however many calls and connections
    assert "ipv4:127.0.0.1" in lines[0] and reason in lines[0] and "UNAUTHENTICATED" in lines[0]
    assert TOKEN not in caplog.text and "not-the-token" not in caplog.text
    # The right token still gets through afterwards.
    good = ClientSecurity(root_certificates=cert.read_bytes(), token=TOKEN)
    assert wait_for_learner("127.0.0.1", learner.port, threading.Event(), timeout_s=10, security=good)


def test_the_learners_own_transport_refuses_and_reports_the_refusals_when_it_stops(
        tmp_path, certs, token_env, caplog):
    """`build_transport` (what `build_learner` calls) serves TLS with the token check; `PiRLLearner.close` reports
    the refused calls per peer address."""
    from lerobot_policy_pi_rl.runtime.learner import PiRLLearner, build_transport

    cert, key = certs["learner"]
    cfg = _tiny_config(tmp_path, free_loopback_port(), **{f"security.{k}": v for k, v in tls_and_token(certs).items()})
    shutdown = threading.Event()
    transport = build_transport(cfg, shutdown)
    learner = PiRLLearner(cfg, None, None, None, None, transport, shutdown)
    caplog.set_level(logging.WARNING)
    try:
        port = cfg.policy.actor_learner_config.learner_port
        stub, channel = new_client("127.0.0.1", port, ClientSecurity(root_certificates=cert.read_bytes(),
                                                                    token="guess"))
        try:
            assert call_every_kind(stub) == [grpc.StatusCode.UNAUTHENTICATED] * 4
        finally:
            channel.close()
        assert wait_for_learner("127.0.0.1", port, shutdown, timeout_s=10, security=client_security(cfg.security))
    finally:
        learner.close()
    assert transport.auth.refused_calls == 4
    summary = [r.getMessage() for r in caplog.records if "refused 4 calls" in r.getMessage()]
    assert summary and "'ipv4:127.0.0.1': 4" in summary[0], caplog.text
    assert TOKEN not in caplog.text and "guess" not in caplog.text


def test_an_actor_whose_token_is_refused_stops_at_once_naming_the_token_fields(
        tmp_path, certs, token_env, learner_factory, monkeypatch):
    from lerobot_policy_pi_rl.runtime.actor import build_actor

    cert, _ = certs["learner"]
    learner = learner_factory(**tls_and_token(certs))
    cfg = _tiny_config(tmp_path, learner.port, reconnect_timeout_s=60,
                       **{"security.tls_ca_path": cert, "security.token_env": token_env})
    monkeypatch.setenv(TOKEN_ENV, "an-old-token")
    with pytest.raises(LearnerRefusedToken, match="a wrong token.*security.token_env or security.token_file"):
        build_actor(cfg, shutdown_event=threading.Event())
    assert learner.auth.refused_calls == 1  # one refusal, no retries until reconnect_timeout_s


def test_a_token_without_tls_works_on_loopback(learner_factory, token_env):
    learner = learner_factory(token_env=token_env)
    assert learner.security.credentials is None
    assert wait_for_learner("127.0.0.1", learner.port, threading.Event(), timeout_s=10,
                            security=ClientSecurity(token=TOKEN))
    stub, channel = new_client("127.0.0.1", learner.port, PLAINTEXT)
    try:
        assert call_every_kind(stub) == [grpc.StatusCode.UNAUTHENTICATED] * 4
    finally:
        channel.close()
    assert learner.auth.refused_calls == 4


@pytest.mark.parametrize("client", ["untrusted certificate", "plaintext"])
def test_a_client_that_cannot_verify_the_learner_or_speaks_plaintext_gets_nothing_through(
        certs, token_env, learner_factory, client):
    learner = learner_factory(**tls_and_token(certs))
    if client == "plaintext":
        security = ClientSecurity(token=TOKEN)
    else:
        security = ClientSecurity(root_certificates=certs["stranger"][0].read_bytes(), token=TOKEN)
    stub, channel = new_client("127.0.0.1", learner.port, security)
    try:
        codes = call_every_kind(stub)
    finally:
        channel.close()
    assert codes == [grpc.StatusCode.UNAVAILABLE] * 4, codes
    assert not wait_for_learner("127.0.0.1", learner.port, threading.Event(), timeout_s=2, security=security)
    assert learner.transitions.empty() and learner.interactions.empty()
    assert learner.auth.refused_calls == 0  # the handshake failed before any call reached the token check


def test_a_learner_without_a_token_serves_tls_to_anyone_who_trusts_it(certs, learner_factory):
    cert, key = certs["learner"]
    learner = learner_factory(tls_cert_path=cert, tls_key_path=key)
    assert learner.auth is None
    assert wait_for_learner("127.0.0.1", learner.port, threading.Event(), timeout_s=10,
                            security=client_security(TransportSecurityConfig(tls_cert_path=cert)))


# ----------------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.0.1.1", True), ("localhost", True), ("::1", True), ("[::1]", True),
    ("0.0.0.0", False), ("::", False), ("10.0.0.7", False), ("learner.internal", False), ("", False),
])
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback


def _parse(tmp_path, **over):
    from test_runtime import free_port, tiny_args

    from lerobot_policy_pi_rl.runtime.cli import register_plugin
    from lerobot_policy_pi_rl.runtime.config import parse_config

    register_plugin()
    return parse_config(tiny_args(free_port(), tmp_path / "run", **over))


OFF_LOOPBACK = {"policy.actor_learner_config.learner_host": "0.0.0.0"}


def test_the_default_is_loopback_plaintext_without_a_token(tmp_path):
    cfg = _parse(tmp_path)
    assert cfg.policy.actor_learner_config.learner_host == "127.0.0.1"
    assert cfg.security == TransportSecurityConfig()
    assert client_security(cfg.security) == PLAINTEXT
    plain = server_security(cfg.security)
    assert plain.credentials is None and plain.auth is None


@pytest.mark.parametrize(("over", "named", "not_named"), [
    ({}, ["learner_host='0.0.0.0'", "security.tls_cert_path", "security.token_env"], []),
    ({"security.token_env": TOKEN_ENV}, ["learner_host='0.0.0.0'", "security.tls_cert_path"],
     ["security.token_env"]),
    ({"security.tls_cert_path": "c.pem", "security.tls_key_path": "k.pem"},
     ["learner_host='0.0.0.0'", "security.token_env", "security.token_file"], ["security.tls_cert_path"]),
])
def test_leaving_loopback_without_tls_and_a_token_is_refused_naming_the_missing_fields(
        tmp_path, over, named, not_named):
    with pytest.raises(ValueError) as err:
        _parse(tmp_path, **OFF_LOOPBACK, **over)
    for needle in named:
        assert needle in str(err.value), (needle, str(err.value))
    for needle in not_named:
        assert needle not in str(err.value), (needle, str(err.value))


def test_leaving_loopback_with_tls_and_a_token_is_accepted(tmp_path):
    for actor_side in ({"security.tls_ca_path": "ca.pem"},
                       {"security.tls_cert_path": "c.pem", "security.tls_key_path": "k.pem"}):
        cfg = _parse(tmp_path, **OFF_LOOPBACK, **actor_side, **{"security.token_file": "token.txt"})
        assert cfg.security.tls_enabled and cfg.security.token_enabled


def test_bad_security_settings_are_rejected_with_the_field_named(tmp_path, capsys):
    from test_runtime import free_port, tiny_args

    from lerobot_policy_pi_rl.runtime.cli import load_config

    with pytest.raises(SystemExit) as exc:
        load_config(tiny_args(free_port(), tmp_path / "run", **{"security.token_env": "A", "security.token_file": "b"}))
    assert exc.value.code == 2
    assert "security.token_env='A' and security.token_file='b'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        load_config(tiny_args(free_port(), tmp_path / "run", **OFF_LOOPBACK))
    assert "learner_host='0.0.0.0' is not a loopback address" in capsys.readouterr().err


def test_unreadable_certificates_and_tokens_fail_naming_the_field_never_the_token(tmp_path, certs, monkeypatch):
    cert, key = certs["learner"]
    missing = tmp_path / "nope.pem"
    cases = [
        (TransportSecurityConfig(tls_cert_path=missing, tls_key_path=key), server_security,
         f"security.tls_cert_path='{missing}' cannot be read"),
        (TransportSecurityConfig(tls_ca_path=cert), server_security, "security.tls_cert_path is not set"),
        (TransportSecurityConfig(tls_key_path=key), client_security, "security.tls_ca_path is not set"),
        (TransportSecurityConfig(tls_ca_path=missing), client_security, "security.tls_ca_path="),
        (TransportSecurityConfig(token_env="PI_RL_TEST_UNSET_TOKEN"), client_security,
         "security.token_env='PI_RL_TEST_UNSET_TOKEN': the environment variable is unset or empty"),
        (TransportSecurityConfig(token_file=missing), server_security, f"security.token_file='{missing}'"),
    ]
    monkeypatch.delenv("PI_RL_TEST_UNSET_TOKEN", raising=False)
    for security, resolve, message in cases:
        with pytest.raises(ValueError) as err:
            resolve(security)
        assert message in str(err.value), (message, str(err.value))

    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="security.token_file=.* is empty"):
        server_security(TransportSecurityConfig(token_file=empty))
    bad = tmp_path / "bad.txt"
    bad.write_text("tøken with\ttab")
    with pytest.raises(ValueError, match="printable ASCII") as err:
        client_security(TransportSecurityConfig(token_file=bad))
    assert "tøken" not in str(err.value)
    good = tmp_path / "token.txt"
    good.write_text(f"  {TOKEN}\n")
    assert client_security(TransportSecurityConfig(token_file=good)).token == TOKEN


def test_the_stock_sac_transport_stays_on_loopback_without_security(tmp_path):
    sac = ["--policy.type=gaussian_actor", "--policy.device=cpu", "--env.type=pi_rl_pickcube",
           "--algorithm.type=sac", f"--output_dir={tmp_path / 'sac'}"]
    assert _parse_args(sac).algorithm.type == "sac"
    with pytest.raises(ValueError, match="security.* is set but algorithm.type=sac runs LeRobot's stock transport"):
        _parse_args([*sac, f"--security.token_env={TOKEN_ENV}"])
    with pytest.raises(ValueError, match="learner_host='0.0.0.0' is not a loopback address, and algorithm.type=sac"):
        _parse_args([*sac, "--policy.actor_learner_config.learner_host=0.0.0.0"])


def _parse_args(args: list[str]):
    from lerobot_policy_pi_rl.runtime.cli import register_plugin
    from lerobot_policy_pi_rl.runtime.config import parse_config

    register_plugin()
    return parse_config(args)


# ----------------------------------------------------------------------------------------------------------------
# End to end: lerobot-pi-rl-train with TLS and a token
# ----------------------------------------------------------------------------------------------------------------


def test_train_runs_learner_and_actor_over_tls_with_a_token_and_saves_no_token(tmp_path, certs):
    from test_runtime import ENV, tiny_args

    cert, key = certs["learner"]
    out = tmp_path / "run"
    args = tiny_args(free_loopback_port(), out, num_updates=2, num_actors=1, n_envs=1, checkpoint_every_updates=0,
                     **{"security.tls_cert_path": cert, "security.tls_key_path": key,
                        "security.tls_ca_path": cert, "security.token_env": TOKEN_ENV})
    env = {**ENV, TOKEN_ENV: TOKEN}
    proc = subprocess.run([sys.executable, "-m", "lerobot_policy_pi_rl.runtime.train", *args], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "exit codes: learner 0, actors [0]" in proc.stderr
    assert "(TLS, token required)" in proc.stderr
    assert "(training done)" in proc.stderr  # the actor received the final weights over TLS
    last = out / "checkpoints" / "last"
    assert (last / "pretrained_model" / "model.safetensors").exists()

    import json

    saved = json.loads((last / "pretrained_model" / "train_config.json").read_text())
    assert saved["security"]["token_env"] == TOKEN_ENV
    assert saved["security"]["tls_cert_path"] == str(cert)
    # The token itself is nowhere: not in any file the run wrote, not in its output.
    assert TOKEN not in proc.stdout and TOKEN not in proc.stderr
    for path in out.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path

    # Without the token variable, the launcher stops before starting anything, naming the variable.
    without_token = {k: v for k, v in env.items() if k != TOKEN_ENV}
    proc = subprocess.run([sys.executable, "-m", "lerobot_policy_pi_rl.runtime.train",
                           *tiny_args(free_loopback_port(), tmp_path / "run2", num_updates=1,
                                      **{"security.token_env": TOKEN_ENV})],
                          env=without_token, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert f"security.token_env='{TOKEN_ENV}': the environment variable is unset or empty" in proc.stderr
