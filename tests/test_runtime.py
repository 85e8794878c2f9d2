"""PI-RL runtime: transition schema, validation, CLI errors, actor <-> learner over real gRPC, kill + resume.

CPU only, loopback, free ports, bounded time. The end-to-end tests run the real entry points as subprocesses on
the state-only PickCube env with a tiny flow_mlp.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lerobot.transport.utils import (  # noqa: E402
    bytes_to_transitions,
    state_to_bytes,
    transitions_to_bytes,
)
from lerobot.utils.transition import Transition  # noqa: E402

from lerobot_policy_pi_rl.runtime import transitions as T  # noqa: E402
from lerobot_policy_pi_rl.runtime.transitions import (  # noqa: E402
    DropCounts,
    NotAPiRLTransition,
    chunk_to_transition,
    transitions_to_rollout,
)

K, H, A, C = 2, 4, 4, 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_chunk(stream: int = 0, index: int = 0, *, reward: float = 1.0, log_prob: float = -1.0, version: int = 0,
               session: int = 7, terminated: bool = False, truncated: bool = False, executed: int = C) -> Transition:
    obs = {"observation.state": torch.randn(1, 18), "observation.environment_state": torch.randn(1, 3)}
    nxt = {k: torch.randn_like(v) for k, v in obs.items()}
    return chunk_to_transition(
        observation=obs, next_observation=nxt, executed_actions=torch.randn(executed, A), reward=reward,
        terminated=terminated, truncated=truncated, chain=torch.randn(1, K + 1, H, A),
        stochastic=torch.nn.functional.one_hot(torch.tensor(1), K).bool(),
        noise_level=torch.tensor([0.5]), log_prob=torch.tensor([log_prob]), value=torch.tensor([0.25]),
        policy_version=version, learner_session=session, stream_id=stream, chunk_index=index, success=terminated,
        group_id=-1, is_intervention=False,
    )


# ----------------------------------------------------------------------------------------------------------------
# Schema
# ----------------------------------------------------------------------------------------------------------------


def test_chunk_transitions_round_trip_through_transport_into_rollout():
    sent = [make_chunk(0, 0), make_chunk(1, 0), make_chunk(0, 1, terminated=True, executed=2), make_chunk(1, 1)]
    received = bytes_to_transitions(transitions_to_bytes(sent))  # torch.load(weights_only=True)
    assert len(received) == 4
    for tr in received:
        assert set(T.REQUIRED_KEYS) <= set(tr["complementary_info"])
    rollout = transitions_to_rollout(received)
    assert len(rollout) == 4
    assert rollout.chain.shape == (4, K + 1, H, A) and rollout.chain.dtype == torch.float32
    assert rollout.observations["observation.state"].shape == (4, 18)
    assert rollout.next_observations["observation.environment_state"].shape == (4, 3)
    assert rollout.stochastic.dtype == torch.bool and rollout.stochastic.shape == (4, K)
    assert rollout.stochastic.float().argmax(dim=1).tolist() == [1, 1, 1, 1]
    assert rollout.log_prob.shape == (4,) and rollout.value.shape == (4,)
    assert rollout.terminated.tolist() == [False, False, True, False]
    assert rollout.stream_id.tolist() == [0, 1, 0, 1]
    assert torch.equal(rollout.chain[0], sent[0]["complementary_info"][T.CHAIN])
    assert received[2]["action"].shape == (2, A)  # executed actions, cut at the done


def test_sac_style_transition_is_rejected_and_logged_once(caplog):
    from lerobot_policy_pi_rl.runtime.learner import Counters, PiRLLearner

    sac = Transition(state={"observation.state": torch.zeros(1, 18)}, action=torch.zeros(1, 4), reward=0.0,
                     next_state={"observation.state": torch.zeros(1, 18)}, done=False, truncated=False,
                     complementary_info={"discrete_penalty": torch.tensor([0.0]), "is_intervention": False})
    sac = bytes_to_transitions(transitions_to_bytes([sac]))[0]
    with pytest.raises(NotAPiRLTransition, match="missing"):
        transitions_to_rollout([sac])

    learner = PiRLLearner.__new__(PiRLLearner)  # only the validation stage, no model or server
    learner.foreign, learner.drops, learner.counters, learner.session = (
        T.ForeignTransitionLog(logging.getLogger("test")), DropCounts(), Counters(), 7)
    with caplog.at_level(logging.ERROR):
        for _ in range(3):
            assert learner.accept([sac, sac]) == []
    assert learner.drops.rejected == 6
    assert sum("not a PI-RL chunk transition" in r.message for r in caplog.records) == 1
    assert len(learner.accept([make_chunk()])) == 1  # PI-RL rows from another actor still flow


def test_nonfinite_rows_are_dropped_and_counted():
    rows = [make_chunk(0, 0), make_chunk(0, 1, reward=float("nan")), make_chunk(0, 2, log_prob=float("inf")),
            make_chunk(0, 3)]
    rows[3]["complementary_info"][T.CHAIN][0, 0, 0] = float("nan")
    rows.append(make_chunk(0, 4))
    counts = DropCounts()
    rollout = transitions_to_rollout(rows, counts)
    assert len(rollout) == 2 and counts.nonfinite == 3
    # The dropped rows leave a gap in stream 0: the GAE trace must not run across it.
    assert rollout.stream_id[0] != rollout.stream_id[1]


def test_rows_of_another_learner_run_and_stale_rows_are_dropped():
    from lerobot_policy_pi_rl.runtime.learner import Counters, PiRLLearner

    learner = PiRLLearner.__new__(PiRLLearner)
    learner.foreign, learner.drops, learner.counters, learner.session = (
        T.ForeignTransitionLog(), DropCounts(), Counters(), 7)
    kept = learner.accept([make_chunk(session=7), make_chunk(session=99), make_chunk(session=7, version=0)])
    assert len(kept) == 2 and learner.drops.foreign_session == 1
    assert learner.counters.interaction_steps == 3 * C


# ----------------------------------------------------------------------------------------------------------------
# CLI / config
# ----------------------------------------------------------------------------------------------------------------

ENV = {**os.environ, "MUJOCO_GL": "osmesa", "PYOPENGL_PLATFORM": "osmesa", "HF_HUB_OFFLINE": "1"}


def tiny_args(port: int, out: Path, **over) -> list[str]:
    args = {
        "policy.type": "pi_rl", "env.type": "pi_rl_pickcube", "policy.device": "cpu",
        "policy.backbone.type": "flow_mlp", "policy.backbone.hidden_dim": 32, "policy.backbone.num_layers": 2,
        "policy.backbone.token_dim": 16, "policy.value_head.hidden_dims": "[32]", "policy.chunk_size": H,
        "policy.n_action_steps": C, "policy.num_denoise_steps": K, "algorithm.type": "pi_rl",
        "algorithm.rollout_chunks": 16, "algorithm.minibatch_size": 16, "algorithm.update_epochs": 1,
        "num_updates": 3, "checkpoint_every_updates": 2, "n_envs": 2, "reconnect_timeout_s": 60,
        "policy.actor_learner_config.learner_port": port, "output_dir": str(out), "seed": 0,
    }
    args.update(over)
    return [f"--{k}={v}" for k, v in args.items()]


def run_module(module: str, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"lerobot_policy_pi_rl.runtime.{module}", *args], env=ENV,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    ("override", "field"),
    [({"n_envs": 0}, "n_envs"), ({"algorithm.clip_low": 2.0}, "clip_low"),
     ({"policy.n_action_steps": 9}, "n_action_steps"), ({"actor_index": 3}, "actor_index"),
     ({"policy.variant.type": "flow_sdee"}, "flow_sdee"), ({"num_updatez": 3}, "num_updatez"),
     ({"torch_threads": -1}, "torch_threads")],
)
def test_bad_config_is_rejected_with_the_field_named(tmp_path, override, field, capsys):
    from lerobot_policy_pi_rl.runtime.cli import load_config

    with pytest.raises(SystemExit) as exc:
        load_config(tiny_args(free_port(), tmp_path / "run", **override))
    assert exc.value.code not in (0, None)
    assert field in capsys.readouterr().err


def test_torch_threads_auto_shares_the_cores_between_learner_and_actors(tmp_path, monkeypatch):
    import torch

    from lerobot_policy_pi_rl.runtime.cli import load_config
    from lerobot_policy_pi_rl.runtime.config import apply_torch_threads

    before = torch.get_num_threads()
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    try:
        assert apply_torch_threads(load_config(tiny_args(free_port(), tmp_path / "a", num_actors=3))) == 4
        assert torch.get_num_threads() == 4
        assert apply_torch_threads(load_config(tiny_args(free_port(), tmp_path / "b", num_actors=20))) == 1
        assert apply_torch_threads(load_config(tiny_args(free_port(), tmp_path / "c", torch_threads=3))) == 3
    finally:
        torch.set_num_threads(before)


def test_train_rejects_bad_config_before_any_process_starts(tmp_path):
    out = tmp_path / "run"
    proc = run_module("train", tiny_args(free_port(), out, **{"algorithm.clip_low": 2.0}), timeout=120)
    assert proc.returncode == 2
    assert "clip_low" in proc.stderr.strip().splitlines()[-1]
    assert "learner pid" not in proc.stderr and not out.exists()


# ----------------------------------------------------------------------------------------------------------------
# Actor <-> learner over real gRPC
# ----------------------------------------------------------------------------------------------------------------


def test_actor_streams_chunk_transitions_and_applies_versioned_weights(tmp_path):
    """A real PI-RL actor process against an in-test gRPC learner service: fields, shapes, weight versions."""
    from torch.multiprocessing import Queue

    from lerobot_policy_pi_rl.runtime.cli import load_config
    from lerobot_policy_pi_rl.runtime.learner import build_transport
    from lerobot_policy_pi_rl.runtime.transport import LEARNER_SESSION_KEY, TRAINING_DONE_KEY, stop_server
    from lerobot_policy_pi_rl.modeling_pi_rl import PiRLPolicy
    from lerobot_policy_pi_rl.rl.algorithm import PiRLAlgorithm

    port = free_port()
    args = tiny_args(port, tmp_path / "run", actor_max_chunks=6)
    cfg = load_config(args)
    from lerobot.policies import make_policy

    policy = make_policy(cfg.policy, env_cfg=cfg.env)
    assert isinstance(policy, PiRLPolicy)
    algorithm = PiRLAlgorithm(policy, cfg.algorithm)
    stop = threading.Event()
    transport = build_transport(cfg, stop)
    # Each weight version the actor applies is logged at DEBUG.
    actor = subprocess.Popen([sys.executable, "-m", "lerobot_policy_pi_rl.runtime.actor", *args],
                             env={**ENV, "PI_RL_LOG_LEVEL": "DEBUG"},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def publish(version: int) -> None:
            weights = algorithm.get_weights()
            weights["policy_version"] = version
            weights[LEARNER_SESSION_KEY], weights[TRAINING_DONE_KEY] = 7, False
            transport.parameters_queue.put(state_to_bytes(weights))

        publish(0)
        rows: list[Transition] = []
        deadline = time.monotonic() + 150
        published = 0
        while len(rows) < 2 * 6 and time.monotonic() < deadline:
            try:
                rows += bytes_to_transitions(transport.transition_queue.get(timeout=0.5))
            except Exception:
                continue
            if len(rows) >= 4 * (published + 1) and published < 2:  # new weights between chunks
                published += 1
                publish(published)
        assert actor.wait(timeout=60) == 0
    finally:
        stop.set()
        stop_server(transport.server, grace_s=1.0)
        if actor.poll() is None:
            actor.kill()
    log = actor.stdout.read()
    assert len(rows) == 12, log[-3000:]
    for tr in rows:
        info = tr["complementary_info"]
        assert set(T.REQUIRED_KEYS) <= set(info)
        assert info[T.CHAIN].shape == (K + 1, H, A) and info[T.CHAIN].dtype == torch.float32
        assert info[T.LOG_PROB].shape == () and info[T.VALUE].shape == ()
        assert 1 <= tr["action"].shape[0] <= C and tr["action"].shape[1] == A
        assert tr["state"]["observation.state"].shape == (1, 18)
        assert tr["next_state"]["observation.environment_state"].shape == (1, 3)
        assert int(info[T.LEARNER_SESSION]) == 7
    versions = [int(tr["complementary_info"][T.POLICY_VERSION]) for tr in rows]
    assert versions == sorted(versions) and versions[-1] >= 1, versions
    assert {int(tr["complementary_info"][T.STREAM_ID]) for tr in rows} == {0, 1}
    applied = [int(v) for v in re.findall(r"applied weights version (\d+)", log)]
    assert applied[:1] == [0] and applied == sorted(applied) and len(applied) >= 2, applied
    rollout = transitions_to_rollout(rows)
    assert len(rollout) == 12


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} while waiting for {what}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_learner_actor_train_checkpoint_kill_and_resume(tmp_path):
    from lerobot_policy_pi_rl.runtime.cli import load_config
    from lerobot_policy_pi_rl.runtime.learner import build_learner
    from safetensors.torch import load_file

    port, out = free_port(), tmp_path / "run"
    args = tiny_args(port, out, num_updates=4, checkpoint_every_updates=2, reconnect_timeout_s=90)
    logs = tmp_path
    learner = subprocess.Popen([sys.executable, "-m", "lerobot_policy_pi_rl.runtime.learner", *args], env=ENV,
                               stdout=open(logs / "learner1.log", "w"), stderr=subprocess.STDOUT)
    actor = subprocess.Popen([sys.executable, "-m", "lerobot_policy_pi_rl.runtime.actor", *args], env=ENV,
                             stdout=open(logs / "actor.log", "w"), stderr=subprocess.STDOUT)
    learner2 = None
    try:
        ckpt2 = out / "checkpoints" / "000002"
        _wait_for(lambda: (ckpt2 / "training_state" / "training_step.json").exists()
                  and (out / "checkpoints" / "last").exists(), 240, "checkpoint 2", learner)
        time.sleep(0.5)
        learner.send_signal(signal.SIGKILL)
        learner.wait(timeout=10)
        for rel in ("pretrained_model/config.json", "pretrained_model/model.safetensors",
                    "pretrained_model/train_config.json", "algorithm/model.safetensors", "algorithm/config.json",
                    "training_state/rng_state.safetensors", "training_state/actor", "training_state/critic"):
            assert (ckpt2 / rel).exists(), rel
        assert any(p.name.startswith("policy_preprocessor") for p in (ckpt2 / "pretrained_model").iterdir())
        assert actor.poll() is None, "the actor must survive a learner crash"

        # Restart with --resume=true: counters continue, the actor reconnects, training completes.
        learner2 = subprocess.Popen(
            [sys.executable, "-m", "lerobot_policy_pi_rl.runtime.learner", *args, "--resume=true"], env=ENV,
            stdout=open(logs / "learner2.log", "w"), stderr=subprocess.STDOUT)
        assert learner2.wait(timeout=240) == 0, (logs / "learner2.log").read_text()[-3000:]
        assert actor.wait(timeout=60) == 0, (logs / "actor.log").read_text()[-3000:]
    finally:
        for p in (learner, learner2, actor):
            if p is not None and p.poll() is None:
                p.kill()
    log2 = (logs / "learner2.log").read_text()
    assert re.search(r"resumed from .*000002: update 2, version 2", log2), log2[-3000:]
    assert "update 3/4" in log2 and "update 4/4" in log2 and "update 1/4" not in log2
    import json

    step4 = json.loads((out / "checkpoints" / "000004" / "training_state" / "training_step.json").read_text())
    assert step4["step"] == 4 and step4["policy_version"] == 4 and step4["interaction_step"] > 0
    actor_log = (logs / "actor.log").read_text()
    assert "reconnecting" in actor_log
    assert "(training done)" in actor_log

    # In process: a resumed learner holds exactly the checkpoint's parameters and optimizer moments.
    cfg = load_config(tiny_args(free_port(), out, num_updates=4, resume="true"))
    resumed = build_learner(cfg, shutdown_event=threading.Event())
    try:
        saved = load_file(str(out / "checkpoints" / "last" / "pretrained_model" / "model.safetensors"))
        own = resumed.policy.state_dict()
        assert set(saved) <= set(own)
        for k, v in saved.items():
            assert torch.equal(own[k], v), k
        assert resumed.algorithm.policy_version == 4 and resumed.counters.updates == 4
        opt = resumed.algorithm.get_optimizers()["actor"]
        assert any("exp_avg" in s for s in opt.state.values())
    finally:
        resumed.shutdown_event.set()
        resumed.transport.server.stop(0)


def test_resume_from_a_broken_checkpoint_fails_loudly(tmp_path):
    from lerobot_policy_pi_rl.runtime.cli import load_config
    from lerobot_policy_pi_rl.runtime.learner import CheckpointError, build_learner

    out = tmp_path / "run"
    with pytest.raises(CheckpointError, match="no checkpoint"):
        build_learner(load_config(tiny_args(free_port(), out, resume="true")), shutdown_event=threading.Event())
    broken = out / "checkpoints" / "000002"
    (broken / "pretrained_model").mkdir(parents=True)
    (broken / "pretrained_model" / "model.safetensors").write_bytes(b"garbage")
    (out / "checkpoints" / "last").symlink_to("000002")
    with pytest.raises(CheckpointError, match="missing|cannot resume"):
        build_learner(load_config(tiny_args(free_port(), out, resume="true")), shutdown_event=threading.Event())


def test_train_launcher_runs_learner_and_actors_to_completion(tmp_path):
    out = tmp_path / "run"
    proc = run_module("train", tiny_args(free_port(), out, num_updates=2, num_actors=2, n_envs=1,
                                         checkpoint_every_updates=0), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "checkpoints" / "last" / "pretrained_model" / "model.safetensors").exists()
    assert "exit codes: learner 0, actors [0, 0]" in proc.stderr


def test_actor_stopped_while_waiting_for_the_learner_is_a_stop_not_a_connection_failure(tmp_path):
    """The launcher SIGTERMs a slow-starting actor once the learner has finished; that actor must not turn a
    finished run into a failed one. Without a signal, an unreachable learner stays a ConnectionError."""
    from lerobot_policy_pi_rl.runtime.actor import ActorStopped, build_actor
    from lerobot_policy_pi_rl.runtime.cli import load_config

    cfg = load_config(tiny_args(free_port(), tmp_path / "run", n_envs=1, reconnect_timeout_s=1))
    stopped = threading.Event()
    stopped.set()
    with pytest.raises(ActorStopped, match="stopped before the learner"):
        build_actor(cfg, shutdown_event=stopped)
    with pytest.raises(ConnectionError, match=r"no learner at 127\.0\.0\.1:\d+ after 1"):
        build_actor(cfg, shutdown_event=threading.Event())


class _FakeChild:
    """Popen stand-in: `poll()` is None until it exits by itself (`exit_after` polls) or gets a signal."""

    def __init__(self, pid, code=None, exit_after=None, code_on_signal=None):
        self.pid, self.returncode, self._polls = pid, None, 0
        self._code, self._exit_after, self._code_on_signal = code, exit_after, code_on_signal

    def poll(self):
        self._polls += 1
        if self.returncode is None and self._exit_after is not None and self._polls > self._exit_after:
            self.returncode = self._code
        return self.returncode

    def send_signal(self, signum):
        if self.returncode is None:
            self.returncode = self._code_on_signal if self._code_on_signal is not None else -signum

    def wait(self, timeout=None):
        return self.returncode

    def kill(self):
        self.send_signal(9)


@pytest.mark.parametrize(
    "actor_kw, expected",
    [
        (dict(code=0, exit_after=0), 0),  # stopped on the final weights by itself
        (dict(), 0),  # still starting when the learner finished: killed by the launcher's SIGTERM
        (dict(code_on_signal=0), 0),  # caught the SIGTERM and exited cleanly
        (dict(code_on_signal=3), 3),  # crashed while being stopped: still a failure
        (dict(code=1, exit_after=0), 1),  # failed by itself: a failure
    ],
)
def test_launcher_exit_code_after_the_learner_finished(monkeypatch, actor_kw, expected):
    from lerobot_policy_pi_rl.runtime import train

    monkeypatch.setattr(train, "GRACE_S", 0.05)
    monkeypatch.setattr(train.time, "sleep", lambda _s: None)
    learner = _FakeChild(1, code=0, exit_after=0)
    actors = [_FakeChild(2, code=0, exit_after=0), _FakeChild(3, **actor_kw)]
    assert train._supervise(learner, actors, {"signal": None}) == expected
