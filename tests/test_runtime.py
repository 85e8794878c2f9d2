"""PI-RL runtime: the learner loop, CLI errors, actor <-> learner over real gRPC, kill + resume.

CPU only, loopback, free ports, bounded time. The end-to-end tests run the real entry points (as subprocesses, or
as threads of the test process) on the state-only PickCube env with a tiny flow_mlp.
"""

from __future__ import annotations

import json
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

from lerobot.transport.utils import bytes_to_transitions, state_to_bytes  # noqa: E402
from lerobot.utils.transition import Transition  # noqa: E402

from lerobot_policy_pi_rl.rl.data_parallel import SINGLE_PROCESS  # noqa: E402
from lerobot_policy_pi_rl.runtime import schema as S  # noqa: E402
from lerobot_policy_pi_rl.runtime.schema import transitions_to_rollout  # noqa: E402

K, H, A, C = 2, 4, 4, 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------------------------------------------
# The learner loop (stages faked: no model, no server)
# ----------------------------------------------------------------------------------------------------------------


class _FakeAlgorithm:
    """Replays given `UpdateResult`s; versions move as they say."""

    def __init__(self, results, staleness: int = 2):
        self.results = iter(results)
        self.policy_version = 0
        self.staleness = staleness
        self.data_parallel = SINGLE_PROCESS

    def update_rollout(self, rollout):
        result = next(self.results)
        self.policy_version += int(result.version_moved)
        return result

    def get_weights(self):
        return {"policy_version": self.policy_version, "state_dict": {}}

    def fresh(self, versions):
        return versions >= self.policy_version - self.staleness


def _result(taken: int = 4, skipped: int = 0):
    from lerobot.rl.algorithms.configs import TrainingStats
    from lerobot_policy_pi_rl.rl.algorithm import UpdateResult

    extra = {"numerics/steps_taken": float(taken), "numerics/steps_skipped": float(skipped)}
    return UpdateResult(TrainingStats(extra=extra), steps_taken=taken, steps_skipped=skipped,
                        version_moved=taken > 0)


def fake_learner(tmp_path, monkeypatch, results, **cfg_over):
    """A real `PiRLLearner` loop over faked stages: rows come from `make_chunk`, weights go to a list, checkpoints
    to `learner.checkpoints_saved`."""
    from test_schema import make_chunk

    from lerobot_policy_pi_rl.runtime import checkpoint
    from lerobot_policy_pi_rl.runtime.cli import load_config
    from lerobot_policy_pi_rl.runtime.learner import PiRLLearner

    cfg = load_config(tiny_args(free_port(), tmp_path / "run", **cfg_over))

    class Queue(list):
        put = list.append

    transport = type("T", (), {"parameters_queue": Queue()})()
    learner = PiRLLearner(cfg, None, _FakeAlgorithm(results), None, None, transport, threading.Event())
    learner.collect_rollout_rows = lambda: [make_chunk(0, i, session=learner.session) for i in range(4)]
    learner.checkpoints_saved = []
    monkeypatch.setattr(checkpoint, "save", lambda cfg, counters, **_: learner.checkpoints_saved.append(
        counters.updates))
    return learner


def published(learner) -> list[tuple[int, bool]]:
    from lerobot.transport.utils import bytes_to_state_dict
    from lerobot_policy_pi_rl.runtime.transport import TRAINING_DONE_KEY

    return [(int(w["policy_version"]), bool(w[TRAINING_DONE_KEY]))
            for w in map(bytes_to_state_dict, learner.transport.parameters_queue)]


def test_an_update_that_skipped_every_step_keeps_the_version_and_publishes_nothing(tmp_path, monkeypatch):
    learner = fake_learner(tmp_path, monkeypatch, [_result(), _result(taken=0, skipped=4), _result()], num_updates=3)
    assert learner.run() == 0
    assert learner.counters.updates == 3
    assert published(learner) == [(0, False), (1, False), (2, False), (2, True)]


def test_consecutive_updates_with_skipped_steps_stop_the_learner_naming_the_counter(tmp_path, monkeypatch):
    from lerobot_policy_pi_rl.runtime.learner import SkippedStepsError

    # Skips that do not repeat N times in a row are tolerated.
    flaky = [_result(taken=3, skipped=1), _result(taken=3, skipped=1), _result(), _result(taken=0, skipped=4),
             _result(taken=3, skipped=1)]
    learner = fake_learner(tmp_path / "a", monkeypatch, flaky, num_updates=5, max_consecutive_skipped_updates=3)
    assert learner.run() == 0
    stuck = [_result(), _result(taken=3, skipped=1), _result(taken=0, skipped=4), _result(taken=2, skipped=2),
             _result()]
    learner = fake_learner(tmp_path / "b", monkeypatch, stuck, num_updates=5, max_consecutive_skipped_updates=3)
    with pytest.raises(SkippedStepsError, match=r"numerics/steps_skipped.*max_consecutive_skipped_updates=3"):
        learner.run()
    assert learner.counters.updates == 4
    # 0 disables the stop.
    learner = fake_learner(tmp_path / "c", monkeypatch, stuck, num_updates=5, max_consecutive_skipped_updates=0)
    assert learner.run() == 0


@pytest.mark.parametrize(("num_updates", "every", "saved"), [(4, 2, [2, 4]), (3, 2, [2, 3]), (2, 0, [2])])
def test_the_final_checkpoint_is_written_once(tmp_path, monkeypatch, num_updates, every, saved):
    learner = fake_learner(tmp_path, monkeypatch, [_result()] * num_updates, num_updates=num_updates,
                           checkpoint_every_updates=every)
    assert learner.run() == 0
    assert learner.checkpoints_saved == saved


def test_rows_that_aged_past_the_staleness_bound_are_dropped_and_counted(tmp_path, monkeypatch):
    from test_schema import make_chunk

    learner = fake_learner(tmp_path, monkeypatch, [], num_updates=1)
    learner.algorithm.policy_version = 5
    rows = [make_chunk(0, i, version=v) for i, v in enumerate([2, 3, 5])]
    assert [int(tr["complementary_info"][S.POLICY_VERSION.key]) for tr in learner.keep_fresh(rows)] == [3, 5]
    assert learner.drops.stale == 1


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
     ({"torch_threads": -1}, "torch_threads"),
     ({"max_consecutive_skipped_updates": -1}, "max_consecutive_skipped_updates")],
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
        assert set(S.REQUIRED_KEYS) <= set(info)
        assert info[S.CHAIN.key].shape == (K + 1, H, A) and info[S.CHAIN.key].dtype == torch.float32
        assert info[S.LOG_PROB.key].shape == () and info[S.VALUE.key].shape == ()
        assert 1 <= tr["action"].shape[0] <= C and tr["action"].shape[1] == A
        assert tr["state"]["observation.state"].shape == (1, 18)
        assert tr["next_state"]["observation.environment_state"].shape == (1, 3)
        assert int(info[S.LEARNER_SESSION.key]) == 7
    versions = [int(tr["complementary_info"][S.POLICY_VERSION.key]) for tr in rows]
    assert versions == sorted(versions) and versions[-1] >= 1, versions
    assert {int(tr["complementary_info"][S.STREAM_ID.key]) for tr in rows} == {0, 1}
    applied = [int(v) for v in re.findall(r"applied weights version (\d+)", log)]
    assert applied[:1] == [0] and applied == sorted(applied) and len(applied) >= 2, applied
    rollout = transitions_to_rollout(rows)
    assert len(rollout) == 12
    # A running episode's next decision starts from the observation its previous transition ended in.
    by_stream: dict[int, list[Transition]] = {}
    for tr in rows:
        by_stream.setdefault(int(tr["complementary_info"][S.STREAM_ID.key]), []).append(tr)
    for stream_rows in by_stream.values():
        for prev, nxt in zip(stream_rows, stream_rows[1:]):
            if not (prev["done"] or prev["truncated"]):
                for key, value in prev["next_state"].items():
                    torch.testing.assert_close(nxt["state"][key], value)
    # The actor's wall time per stage, for reports.
    split = json.loads((tmp_path / "run" / "time_split" / "actor0.json").read_text())
    assert {"env", "sampling", "processors", "transport", "other", "total"} <= set(split["seconds"])
    assert min(split["seconds"][k] for k in ("env", "sampling", "processors")) > 0
    assert sum(v for k, v in split["seconds"].items() if k != "total") == pytest.approx(split["seconds"]["total"])
    assert split["env_steps"] == sum(tr["action"].shape[0] for tr in rows)


def wandb_history(output_dir: Path) -> list[dict]:
    """The history rows an offline W&B run wrote under `output_dir` (what `wandb sync` would upload)."""
    import json

    from wandb.proto import wandb_internal_pb2
    from wandb.sdk.internal import datastore

    (run_file,) = output_dir.glob("wandb/offline-run-*/run-*.wandb")
    store = datastore.DataStore()
    store.open_for_scan(str(run_file))
    rows = []
    while (data := store.scan_data()) is not None:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def run_in_threads(args: list[str], prepare_learner=None, prepare_actor=None):
    """A learner and one actor from the same CLI args, in threads of this process (free port); both must exit 0.
    `prepare_learner(learner)` / `prepare_actor(actor)` run before each starts. Returns the learner."""
    from lerobot_policy_pi_rl.runtime.actor import build_actor
    from lerobot_policy_pi_rl.runtime.cli import load_config
    from lerobot_policy_pi_rl.runtime.learner import build_learner

    codes: dict[str, int] = {}
    learner = build_learner(load_config(args), shutdown_event=threading.Event())
    if prepare_learner is not None:
        prepare_learner(learner)
    learner_thread = threading.Thread(target=lambda: codes.update(learner=learner.run()), daemon=True)
    learner_thread.start()
    actor = build_actor(load_config(args), shutdown_event=threading.Event())
    if prepare_actor is not None:
        prepare_actor(actor)
    actor_thread = threading.Thread(target=lambda: codes.update(actor=actor.run()), daemon=True)
    actor_thread.start()
    try:
        learner_thread.join(timeout=240)
        actor_thread.join(timeout=60)
    finally:
        learner.close()
        actor.close()
    assert codes == {"learner": 0, "actor": 0}
    return learner


def test_learner_and_actor_in_one_process_with_global_clipping_and_wandb_offline(tmp_path, monkeypatch):
    """Threads and a free port: the global gradient-norm clip runs end to end, and LeRobot's own W&B logger
    (offline) receives the learner's metrics under their stable names (LeRobot prefixes `train/`)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "run"
    args = tiny_args(free_port(), out, num_updates=2, checkpoint_every_updates=2, **{
        "algorithm.grad_clip_scope": "global", "wandb.enable": "true", "wandb.project": "pi_rl_test",
        "wandb.mode": "offline", "wandb.disable_artifact": "true"})
    learner = run_in_threads(args)
    assert learner.cfg.algorithm.grad_clip_scope == "global"

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in rows] == [1, 2]
    for r in rows:
        assert r["numerics/steps_taken"] > 0 and r["numerics/steps_skipped"] == 0
        assert r["grad/global"] > 0 and {"grad/actor", "grad/critic"} <= set(r)
    assert (out / "checkpoints" / "000002" / "pretrained_model" / "model.safetensors").exists()

    logged = set().union(*wandb_history(out))
    for name in ("loss/policy", "loss/value", "grad/global", "ppo/approx_kl", "ppo/clip_fraction",
                 "numerics/steps_taken", "rollout/rows", "rollout/interaction_steps", "rollout/dropped_nonfinite",
                 "perf/update_s", "perf/rows_per_s", "policy/version"):
        assert f"train/{name}" in logged, name


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
    from lerobot.optim.optimizers import load_optimizer_state_dict
    from lerobot.utils.random_utils import serialize_rng_state
    from lerobot_policy_pi_rl.runtime.learner import build_learner
    from safetensors.torch import load_file

    port, out = free_port(), tmp_path / "run"
    # The kill comes right after the first checkpoint, but a fast machine may write more before it lands: the resume
    # is checked against whichever checkpoint `last` holds then, with updates left to run after it.
    n = 8
    args = tiny_args(port, out, num_updates=n, checkpoint_every_updates=2, reconnect_timeout_s=90)
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
        # `last` is swapped only after a checkpoint is whole (written aside, then renamed): checkpoint 2 is complete.
        learner.send_signal(signal.SIGKILL)
        learner.wait(timeout=10)
        killed_at = int((out / "checkpoints" / "last").resolve().name)
        assert 2 <= killed_at < n, f"the learner reached checkpoint {killed_at} of {n} before the kill"
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
    k = killed_at
    assert re.search(rf"resumed from .*{k:06d}: update {k}, version {k}", log2), log2[-3000:]
    assert f"update {k + 1}/{n}" in log2 and f"update {n}/{n}" in log2 and f"update {k}/{n}" not in log2
    assert "update 1/" not in log2
    import json

    step_n = json.loads((out / "checkpoints" / f"{n:06d}" / "training_state" / "training_step.json").read_text())
    assert step_n["step"] == n and step_n["policy_version"] == n and step_n["interaction_step"] > 0
    actor_log = (logs / "actor.log").read_text()
    assert "reconnecting" in actor_log
    assert "(training done)" in actor_log

    # In process: a resumed learner holds exactly the checkpoint's parameters, optimizer moments and RNG states.
    cfg = load_config(tiny_args(free_port(), out, num_updates=n, resume="true"))
    resumed = build_learner(cfg, shutdown_event=threading.Event())
    try:
        last = out / "checkpoints" / "last"
        saved = load_file(str(last / "pretrained_model" / "model.safetensors"))
        own = resumed.policy.state_dict()
        assert set(saved) <= set(own)
        for k, v in saved.items():
            assert torch.equal(own[k], v), k
        assert resumed.algorithm.policy_version == n and resumed.counters.updates == n
        for name, opt in resumed.algorithm.get_optimizers().items():
            state = opt.state_dict()["state"]
            on_disk = load_optimizer_state_dict(last / "training_state" / name)["state"]
            assert len(state) == len(on_disk) > 0, name
            for index, moments in state.items():
                for key in ("exp_avg", "exp_avg_sq", "step"):
                    assert torch.equal(moments[key], on_disk[str(index)][key].reshape(moments[key].shape)), (
                        name, index, key)
        rng_on_disk = load_file(str(last / "training_state" / "rng_state.safetensors"))
        rng_now = serialize_rng_state()
        assert rng_now.keys() == rng_on_disk.keys()
        for key, value in rng_on_disk.items():
            assert torch.equal(rng_now[key], value), key
    finally:
        resumed.shutdown_event.set()
        resumed.transport.server.stop(0)


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


def test_grpo_end_to_end_groups_envs_and_scores_whole_groups(tmp_path):
    """`--algorithm.advantage.type=grpo` through the real actor and learner (threads, free port): env pairs reset
    to the same state, rows carry group ids, and every rollout holds whole groups of `group_size` episodes whose
    episodes start from the same observation."""

    out = tmp_path / "run"
    args = tiny_args(free_port(), out, num_updates=2, checkpoint_every_updates=0, n_envs=4, **{
        "algorithm.advantage.type": "grpo", "algorithm.advantage.group_size": 2,
        "algorithm.advantage.drop_uniform_groups": "false", "env.episode_length": 8})
    rollouts = []

    def record_rollouts(learner):
        update = learner.algorithm.update_rollout
        learner.algorithm.update_rollout = lambda rollout: rollouts.append(rollout) or update(rollout)

    run_in_threads(args, prepare_learner=record_rollouts)
    assert len(rollouts) == 2
    for rollout in rollouts:
        assert len(rollout) >= 16 and bool((rollout.group_id >= 0).all())
        groups = rollout.group_id.unique()
        for gid in groups.tolist():
            rows = torch.nonzero(rollout.group_id == gid).flatten()
            assert int(rollout.done[rows].sum()) == 2, f"group {gid} is not two whole episodes"
            # The two episodes of a group: different envs, the same first observation.
            first = [int(rows[rollout.stream_id[rows] == s][0]) for s in rollout.stream_id[rows].unique().tolist()]
            assert len(first) == 2
            obs = rollout.observations["observation.environment_state"]
            assert torch.equal(obs[first[0]], obs[first[1]])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in rows] == [1, 2] and all(r["rollout/dropped_ungrouped"] == 0 for r in rows)
