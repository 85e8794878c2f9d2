"""Fault injection: malformed actor messages, broken and interrupted checkpoints, a learner SIGKILLed ten times in
a row, an actor killed in the middle of a send. The learner must keep running, count and log every rejection, and
resume from the last complete checkpoint exactly.

CPU only, loopback, free ports. The kill loop forks learners from a forkserver that imported the package once (a
fresh interpreter costs seconds per restart on a small machine).
"""

from __future__ import annotations

import copy
import json
import logging
import multiprocessing
import os
import random
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lerobot.optim.optimizers import load_optimizer_state_dict  # noqa: E402
from lerobot.transport import services_pb2  # noqa: E402
from lerobot.transport.utils import send_bytes_in_chunks, transitions_to_bytes  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from lerobot_policy_pi_rl.runtime import checkpoint  # noqa: E402
from lerobot_policy_pi_rl.runtime import schema as S  # noqa: E402
from lerobot_policy_pi_rl.runtime.checkpoint import CheckpointError  # noqa: E402
from lerobot_policy_pi_rl.runtime.cli import load_config  # noqa: E402
from lerobot_policy_pi_rl.runtime.metrics import REJECTION_KINDS, Counters  # noqa: E402
from test_runtime import free_port, tiny_args  # noqa: E402
from test_schema import C, make_chunk  # noqa: E402

# ----------------------------------------------------------------------------------------------------------------
# Malformed actor messages
# ----------------------------------------------------------------------------------------------------------------

VERSION = 6  # the learner's policy version in these tests (staleness 2: versions 4..6 are fresh)


def _with(rows, edit):
    rows = [copy.deepcopy(tr) for tr in rows]
    edit(rows[-1])
    return rows


def _info(key, value):
    return lambda tr: tr["complementary_info"].__setitem__(key, value)


def policy_rows(policy, n: int, *, version: int, session: int, stream: int = 0, seed: int = 0) -> list:
    """`n` chunk transitions as an actor of `policy` sends them (chains sampled by its current weights, so that
    the learner's check that it re-scores them as sampled passes), without an env; RNG from `seed` only."""
    g = torch.Generator().manual_seed(seed)
    obs = {"observation.state": torch.randn(n, 18, generator=g),
           "observation.environment_state": torch.randn(n, 3, generator=g)}
    sample = policy.sample_chain(obs, generator=g)
    rows = []
    for i in range(n):
        outcome = S.ChunkOutcome(next_observation={}, executed=sample.action_chunk[i, :C],
                                 reward=float(torch.rand((), generator=g)), terminated=False, truncated=False,
                                 success=False, intervention=False)
        rows.append(S.chunk_transition(
            observation={k: v[i : i + 1] for k, v in obs.items()},
            next_observation={k: v[i : i + 1] + 0.1 for k, v in obs.items()},
            sample=sample, row=i, outcome=outcome, origin=S.ChunkOrigin(version, session, stream, i)))
    return rows


def bad_messages(rows: list) -> dict[str, tuple[bytes, str]]:
    """One message per kind of bad input, from valid `rows` (at least 40): name -> (bytes, what the learner does:
    `message:<kind>` rejects the whole message, `row:<counter>` drops the bad row (the last of two) and keeps the
    good one)."""
    two = rows[:2]
    session = int(two[0]["complementary_info"][S.LEARNER_SESSION.key])

    def nan_obs(tr):
        tr["state"]["observation.state"][0, 3] = float("nan")

    def nan_chain(tr):
        tr["complementary_info"][S.CHAIN.key][1, 2, 0] = float("nan")

    def wide_obs(tr):
        tr["state"]["observation.state"] = torch.zeros(1, 20)

    def extra_top(tr):
        tr["note"] = "hello"

    def message(edit) -> bytes:
        return transitions_to_bytes(_with(two, edit))

    valid = transitions_to_bytes(two)
    return {
        "missing field": (message(lambda tr: tr["complementary_info"].pop(S.VALUE.key)), "message:missing_field"),
        "extra field": (message(_info("pi_rl.bonus", torch.tensor(1.0))), "message:extra_field"),
        "extra transition key": (message(extra_top), "message:extra_field"),
        "chain of another shape": (message(_info(S.CHAIN.key, torch.zeros(4, 4, 4))), "message:wrong_shape"),
        "observation of another shape": (message(wide_obs), "message:wrong_shape"),
        "float64 log-prob": (message(_info(S.LOG_PROB.key, torch.tensor(-1.0).double())), "message:wrong_dtype"),
        "reward as text": (message(lambda tr: tr.__setitem__("reward", "1.0")), "message:wrong_dtype"),
        "NaN observation": (message(nan_obs), "row:nonfinite"),
        "inf reward": (message(lambda tr: tr.__setitem__("reward", float("inf"))), "row:nonfinite"),
        "NaN chain": (message(nan_chain), "row:nonfinite"),
        "-inf log-prob": (message(_info(S.LOG_PROB.key, torch.tensor(float("-inf")))), "row:nonfinite"),
        "oversized": (transitions_to_bytes(rows[:40]), "message:oversized"),
        "another learner session": (message(_info(S.LEARNER_SESSION.key, torch.tensor(session + 1))),
                                    "row:foreign_session"),
        "future policy version": (message(_info(S.POLICY_VERSION.key, torch.tensor(VERSION + 3))),
                                  "row:future_version"),
        "ancient policy version": (message(_info(S.POLICY_VERSION.key, torch.tensor(1))), "row:stale"),
        "garbage bytes": (bytes(random.Random(0).getrandbits(8) for _ in range(3000)), "message:undecodable"),
        "truncated message": (valid[: len(valid) // 2], "message:undecodable"),
        "not a list": (transitions_to_bytes({"state": torch.zeros(3)}), "message:not_transitions"),
    }


MAX_MESSAGE_BYTES = 64 * 1024


def build_real_learner(tmp_path, **over):
    from lerobot_policy_pi_rl.runtime.learner import build_learner

    cfg = load_config(tiny_args(free_port(), tmp_path / "run", **over))
    learner = build_learner(cfg, shutdown_event=threading.Event())
    learner.algorithm.load_state_dict({"policy_version": torch.tensor(VERSION), "num_updates": torch.tensor(0),
                                       "optimization_step": torch.tensor(0)})
    return learner


def grpc_send(port: int, message: bytes) -> None:
    from lerobot_policy_pi_rl.runtime.transport import new_client

    stub, channel = new_client("127.0.0.1", port)
    try:
        stub.SendTransitions(send_bytes_in_chunks(message, services_pb2.Transition), timeout=20)
    finally:
        channel.close()


def test_malformed_messages_are_each_rejected_with_one_log_line_and_a_counter_while_training_goes_on(
        tmp_path, caplog):
    """Every kind of bad input twice, some through a real gRPC send and the rest straight into the learner's
    transition queue, then good rows: the learner counts each kind, logs it once, and trains on the good rows."""
    assert len(REJECTION_KINDS) >= 7
    learner = build_real_learner(tmp_path, num_updates=1, checkpoint_every_updates=0,
                                 max_message_bytes=MAX_MESSAGE_BYTES)
    port = learner.cfg.policy.actor_learner_config.learner_port
    rows = policy_rows(learner.policy, 56, version=VERSION, session=learner.session)
    bad = bad_messages(rows[:40])
    assert len({kind for _, kind in bad.values()}) >= 10
    assert len(bad["oversized"][0]) > MAX_MESSAGE_BYTES > max(len(m) for name, (m, _) in bad.items()
                                                              if name != "oversized")
    over_grpc = {"garbage bytes", "oversized", "another learner session", "NaN observation", "missing field"}
    rollouts = []
    update = learner.algorithm.update_rollout
    learner.algorithm.update_rollout = lambda rollout: rollouts.append(rollout) or update(rollout)
    try:
        with caplog.at_level(logging.WARNING, logger="lerobot_policy_pi_rl"):
            for _ in range(2):
                for name, (message, _) in bad.items():
                    if name in over_grpc:
                        grpc_send(port, message)  # returns once the server has queued it
                    else:
                        learner.transport.transition_queue.put(message)
            # Good rows last, over gRPC: 16 make the rollout.
            for i in range(4):
                grpc_send(port, transitions_to_bytes(rows[40 + 4 * i : 44 + 4 * i]))
            assert learner.run() == 0
    finally:
        learner.close()

    drops = learner.drops
    expected_messages = {kind.split(":")[1]: 0 for _, kind in bad.values() if kind.startswith("message:")}
    for _, kind in bad.values():
        if kind.startswith("message:"):
            expected_messages[kind.split(":")[1]] += 2
    assert {k: v for k, v in drops.rejected_messages.items() if v} == expected_messages
    assert drops.nonfinite == 8 and drops.by_field == {"state.observation.state": 2, "reward": 2,
                                                       S.CHAIN.key: 2, S.LOG_PROB.key: 2}
    assert (drops.foreign_session, drops.future_version, drops.stale) == (2, 2, 2)
    # The good rows of the row-dropping messages and the 16 sent last: one update on the first 16.
    assert learner.counters.updates == 1 and learner.algorithm.policy_version == VERSION + 1
    (rollout,) = rollouts
    assert len(rollout) == 16
    assert bool(torch.isfinite(rollout.chain).all() and torch.isfinite(rollout.reward).all())
    assert rollout.policy_version.tolist() == [VERSION] * 16

    # One log line per kind of rejection (per distinct problem for messages), however often it came.
    lines = [r.getMessage() for r in caplog.records if "[LEARNER] rejecting" in r.getMessage()
             or "[LEARNER] dropping" in r.getMessage()]
    for kind in expected_messages:
        assert sum(f"counted under rollout/rejected_messages/{kind}," in line for line in lines) == (
            2 if kind in ("extra_field", "wrong_shape", "wrong_dtype") else 1), (kind, lines)
    for counter, n in (("nonfinite", 4), ("foreign_session", 1), ("future_version", 1)):
        assert sum(f"rollout/dropped_{counter}," in line for line in lines) == n, (counter, lines)
    assert any("pi_rl.bonus" in line for line in lines) and any("(4, 4, 4)" in line for line in lines)

    # The counters reach metrics.jsonl under stable names.
    (row,) = [json.loads(line) for line in (Path(learner.cfg.output_dir) / "metrics.jsonl").read_text().splitlines()]
    for kind in REJECTION_KINDS:
        assert row[f"rollout/rejected_messages/{kind}"] == expected_messages.get(kind, 0), kind
    assert row["rollout/dropped_future_version"] == 2 and row["rollout/dropped_nonfinite"] == 8


@pytest.mark.parametrize(
    ("edit", "kind", "named"),
    [
        (lambda tr: tr.pop("reward"), "missing_field", "reward"),
        (lambda tr: tr.__setitem__("done", torch.tensor(True)), "wrong_dtype", "done must be a bool"),
        (lambda tr: tr.__setitem__("action", torch.zeros(C + 1, 4)), "wrong_shape", "action must have shape"),
        (lambda tr: tr.__setitem__("action", torch.zeros(C, 4, dtype=torch.long)), "wrong_dtype", "action"),
        (lambda tr: tr["next_state"].pop("observation.environment_state"), "missing_field",
         "next_state.observation.environment_state"),
        (lambda tr: tr.__setitem__("complementary_info", [1, 2]), "missing_field", S.CHAIN.key),
    ],
)
def test_every_malformed_transition_is_rejected_by_kind_with_the_value_named(edit, kind, named):
    shapes = S.RowShapes(fields={S.CHAIN.key: (3, 4, 4), S.STOCHASTIC.key: (2,), S.LOG_PROB.key: ()},
                         observations={"observation.state": (1, 18), "observation.environment_state": (1, 3)},
                         visual=(), action_dim=4, max_executed=C)
    tr = make_chunk()
    S.check_fields(tr, shapes)
    edit(tr)
    with pytest.raises(S.NotAPiRLTransition) as err:
        S.check_fields(tr, shapes)
    assert err.value.kind == kind and named in str(err.value)


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints: broken files, interrupted writes
# ----------------------------------------------------------------------------------------------------------------


def _saved_run(tmp_path, updates: int):
    """A checkpoint of a tiny policy after `updates` updates (non-trivial optimizer moments); returns the config,
    parts and the checkpoint directory."""
    from lerobot.utils.random_utils import set_seed
    from test_checkpoint import build_parts, take_optimizer_steps

    cfg = load_config(tiny_args(free_port(), tmp_path / "run", num_updates=10))
    set_seed(0)
    parts = build_parts(cfg)
    take_optimizer_steps(parts[0], parts[1])
    ckpt = _save(cfg, parts, updates)
    return cfg, parts, ckpt


def _save(cfg, parts, updates: int) -> Path:
    policy, algorithm, pre, post = parts
    return checkpoint.save(cfg, policy=policy, algorithm=algorithm, preprocessor=pre, postprocessor=post,
                           counters=Counters(updates=updates, interaction_steps=10 * updates))


def _resume(cfg):
    from test_checkpoint import build_parts

    policy, algorithm, _, _ = build_parts(cfg)
    return checkpoint.resume(cfg, policy=policy, algorithm=algorithm), policy


DAMAGED = ["pretrained_model/model.safetensors", "pretrained_model/train_config.json",
           "algorithm/model.safetensors", "training_state/training_step.json", "training_state/rng_state.safetensors",
           "training_state/actor/optimizer_state.safetensors", "training_state/critic/optimizer_param_groups.json"]


@pytest.mark.parametrize("damage", ["truncate", "corrupt"])
def test_a_truncated_or_corrupted_checkpoint_file_is_an_error_naming_the_file(tmp_path, damage):
    cfg, _, ckpt = _saved_run(tmp_path, updates=2)
    pristine = tmp_path / "pristine"
    shutil.copytree(ckpt, pristine)
    for rel in DAMAGED:
        shutil.rmtree(ckpt)
        shutil.copytree(pristine, ckpt)
        path = ckpt / rel
        assert path.is_file(), rel
        data = bytearray(path.read_bytes())
        if damage == "truncate":
            path.write_bytes(data[: len(data) // 2])
        else:
            data[len(data) // 2] ^= 0x5A  # one byte in the middle: same size
            path.write_bytes(bytes(data))
        with pytest.raises(CheckpointError, match=rel.replace(".", r"\.")):
            _resume(cfg)
    # A checkpoint written before manifests existed: truncated files still fail loudly, by name.
    for rel in ("pretrained_model/model.safetensors", "training_state/training_step.json",
                "pretrained_model/train_config.json", "training_state/rng_state.safetensors"):
        shutil.rmtree(ckpt)
        shutil.copytree(pristine, ckpt)
        (ckpt / checkpoint.MANIFEST).unlink()
        (ckpt / rel).write_bytes((ckpt / rel).read_bytes()[:40])
        with pytest.raises(CheckpointError, match=rel.replace(".", r"\.")):
            _resume(cfg)
    shutil.rmtree(ckpt)
    shutil.copytree(pristine, ckpt)
    assert _resume(cfg)[0].updates == 2  # the undamaged copy resumes


@pytest.mark.parametrize("fail_in", ["algorithm state", "manifest", "link swap"])
def test_a_checkpoint_write_that_fails_half_way_leaves_last_on_the_previous_complete_one(tmp_path, monkeypatch,
                                                                                         fail_in):
    cfg, parts, ckpt2 = _saved_run(tmp_path, updates=2)
    weights2 = {k: v.clone() for k, v in parts[0].state_dict().items()}
    with torch.no_grad():
        for p in parts[0].parameters():
            p.add_(1.0)  # the weights checkpoint 4 would hold

    def boom(*_args, **_kw):
        raise OSError("disk full (injected)")

    target = {"algorithm state": (parts[1], "save_pretrained"), "manifest": (checkpoint, "_write_manifest"),
              "link swap": (checkpoint, "_point_last_at")}[fail_in]
    with monkeypatch.context() as m:
        m.setattr(*target, boom)
        with pytest.raises(OSError, match="injected"):
            _save(cfg, parts, 4)
    last = checkpoint.last_checkpoint(cfg.output_dir)
    assert last.resolve() == ckpt2
    counters, policy = _resume(cfg)
    assert counters.updates == 2 and counters.interaction_steps == 20
    for k, v in policy.state_dict().items():
        assert torch.equal(v, weights2[k]), k
    assert not list(last.parent.glob(".*.partial"))  # resume cleared the half-written directory
    # The next save of that step completes over whatever was left.
    assert _save(cfg, parts, 4) == last.resolve() and _resume(cfg)[0].updates == 4


# ----------------------------------------------------------------------------------------------------------------
# The learner SIGKILLed ten times in a row
# ----------------------------------------------------------------------------------------------------------------


def _learner_child(cfg, state_path: str, write_marker: str | None) -> None:
    """A real learner (`build_learner`, `run`) that, on resume, first dumps what it restored. With `write_marker`,
    every checkpoint write pauses half way (files written, manifest not yet) after touching the marker, so that the
    test can kill it there."""
    from lerobot_policy_pi_rl.runtime.learner import build_learner

    torch.set_num_threads(1)
    learner = build_learner(cfg, shutdown_event=threading.Event())
    if cfg.resume:
        restored = {
            "counters": vars(learner.counters),
            "version": learner.algorithm.policy_version,
            "weights": learner.policy.state_dict(),
            "optimizers": {name: opt.state_dict() for name, opt in learner.algorithm.get_optimizers().items()},
        }
        torch.save(restored, state_path + ".tmp")
        os.replace(state_path + ".tmp", state_path)
    if write_marker:
        write_manifest = checkpoint._write_manifest

        def paused(root):
            Path(write_marker).touch()
            time.sleep(1.0)
            write_manifest(root)

        checkpoint._write_manifest = paused
    code = learner.run()
    learner.close()
    sys.exit(code)


def _assert_restored_exactly(state: dict, ckpt: Path) -> None:
    """What a resumed learner holds is bit-identical to the checkpoint files."""
    step = json.loads((ckpt / "training_state" / "training_step.json").read_text())
    assert state["counters"] == {"updates": step["step"], "interaction_steps": step["interaction_step"],
                                 "chunks_received": step["chunks_received"], "episodes": step["episodes"]}
    assert state["version"] == step["policy_version"]
    saved = load_file(str(ckpt / "pretrained_model" / "model.safetensors"))
    assert saved and set(saved) <= set(state["weights"])
    for k, v in saved.items():
        assert torch.equal(state["weights"][k], v), k
    for name, opt_state in state["optimizers"].items():
        on_disk = load_optimizer_state_dict(ckpt / "training_state" / name)["state"]
        assert len(opt_state["state"]) == len(on_disk) > 0, name
        for index, moments in opt_state["state"].items():
            for key in ("exp_avg", "exp_avg_sq", "step"):
                assert torch.equal(moments[key], on_disk[str(index)][key].reshape(moments[key].shape)), (name, key)


def test_learner_sigkilled_ten_times_resumes_each_time_from_the_last_complete_checkpoint(tmp_path):
    """Ten SIGKILLs of the learner at seeded random moments, every third one in the middle of a checkpoint write,
    with a real actor process that carries on through all of them. After each kill, the restarted learner
    (`--resume=true`) holds exactly the checkpoint `last` pointed at when it was killed, `last` was complete, and it
    never moves backwards; finally the run completes and the actor exits on the learner's last weights."""
    import subprocess

    from test_runtime import ENV

    rng = random.Random(17)
    out = tmp_path / "run"
    port = free_port()

    def args(num_updates: int = 10_000, **over) -> list[str]:
        return tiny_args(port, out, num_updates=num_updates, checkpoint_every_updates=1, console_log_every_updates=50,
                         reconnect_timeout_s=60, torch_threads=1, **{"algorithm.rollout_chunks": 8}, **over)

    ctx = multiprocessing.get_context("forkserver")
    # The forkserver imports once what a learner start imports (parsing a config pulls in LeRobot's robots and
    # teleoperators), and the config is parsed once here (seconds each): a restart then takes well under a second.
    base_cfg = load_config(args())
    roots = {"lerobot", "lerobot_policy_pi_rl", "draccus", "grpc", "placo", "pinocchio", "torchcodec", "Xlib"}
    ctx.set_forkserver_preload(["test_fault_injection", *sorted(m for m in sys.modules if m.split(".")[0] in roots)])

    last = checkpoint.last_checkpoint(out)
    state_path, marker = tmp_path / "restored.pt", tmp_path / "writing"
    previous_step, mid_write_kills, restored_from = -1, 0, []
    actor = subprocess.Popen([sys.executable, "-m", "lerobot_policy_pi_rl.runtime.actor", *args()], env=ENV,
                             stdout=open(tmp_path / "actor.log", "w"), stderr=subprocess.STDOUT)
    child = None
    try:
        for kill in range(11):  # ten kills, then a last restart that runs to the end
            resume = kill > 0
            expected = last.resolve() if resume else None
            state_path.unlink(missing_ok=True)
            marker.unlink(missing_ok=True)
            mid_write = kill % 3 == 2
            final = kill == 10
            run_cfg = copy.deepcopy(base_cfg)
            run_cfg.resume = resume  # `--resume=true`
            run_cfg.num_updates = previous_step + 2 if final else run_cfg.num_updates
            child = ctx.Process(target=_learner_child, args=(run_cfg, str(state_path),
                                                             str(marker) if mid_write else None))
            child.start()
            if resume:
                _wait(lambda: state_path.exists(), 60, "the restored state", child)
                _assert_restored_exactly(torch.load(state_path, weights_only=False), expected)
                restored_from.append(int(expected.name))
            if final:
                child.join(timeout=120)
                assert child.exitcode == 0
                break
            if mid_write:
                _wait(lambda: marker.exists(), 60, "a checkpoint write", child)
                time.sleep(rng.uniform(0.0, 0.3))
                assert list(last.parent.glob(".*.partial")), "not killed in the middle of a write"
                mid_write_kills += 1
            else:
                _wait(lambda: last.exists() and int(last.resolve().name) > previous_step, 60, "a new checkpoint",
                      child)
                time.sleep(rng.uniform(0.0, 0.5))
            assert actor.poll() is None, "the actor must carry on through learner crashes"
            os.kill(child.pid, signal.SIGKILL)
            child.join(timeout=10)
            assert child.exitcode == -signal.SIGKILL
            # `last` is whole (every file of its manifest intact) and never older than before.
            checkpoint._verify_manifest(last.resolve())
            step = int(last.resolve().name)
            assert step >= previous_step
            previous_step = step
        assert actor.wait(timeout=60) == 0, (tmp_path / "actor.log").read_text()[-3000:]
    finally:
        for proc in (child, actor):
            if proc is not None and (proc.is_alive() if hasattr(proc, "is_alive") else proc.poll() is None):
                proc.kill()
    assert mid_write_kills == 3 and len(restored_from) == 10
    final = json.loads((last / "training_state" / "training_step.json").read_text())
    assert final["step"] == previous_step + 2 and final["policy_version"] == previous_step + 2
    assert final["chunks_received"] > 0 and final["interaction_step"] > 0
    actor_log = (tmp_path / "actor.log").read_text()
    assert actor_log.count("reconnecting") >= 10 and "(training done)" in actor_log


def _wait(predicate, timeout: float, what: str, proc=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and not proc.is_alive():
            raise AssertionError(f"the process exited with {proc.exitcode} while waiting for {what}")
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


# ----------------------------------------------------------------------------------------------------------------
# An actor killed in the middle of a send
# ----------------------------------------------------------------------------------------------------------------


def _sending_actor(port: int, whole: bytes, partial: bytes, marker: str) -> None:
    """Send `whole`, then the first half of `partial`'s gRPC chunks, and hang there (until killed)."""
    from lerobot.transport import utils as transport_utils

    from lerobot_policy_pi_rl.runtime.transport import new_client

    transport_utils.CHUNK_SIZE = 1024  # many chunks per message: a send can be cut in the middle
    stub, _channel = new_client("127.0.0.1", port)
    stub.SendTransitions(send_bytes_in_chunks(whole, services_pb2.Transition), timeout=30)
    chunks = list(send_bytes_in_chunks(partial, services_pb2.Transition))
    assert len(chunks) >= 4

    def cut():
        yield from chunks[: len(chunks) // 2]
        Path(marker).touch()
        time.sleep(600)

    stub.SendTransitions(cut(), timeout=600)


def test_an_actor_killed_mid_send_costs_only_its_in_flight_message(tmp_path):
    from queue import Empty

    learner = build_real_learner(tmp_path, num_updates=1)
    port = learner.cfg.policy.actor_learner_config.learner_port
    queue = learner.transport.transition_queue
    ctx = multiprocessing.get_context("forkserver")

    def message(stream: int) -> bytes:
        return transitions_to_bytes([make_chunk(stream, j, version=VERSION, session=learner.session)
                                     for j in range(3)])

    marker = tmp_path / "in_flight"
    actor = ctx.Process(target=_sending_actor, args=(port, message(0), message(1), str(marker)))
    try:
        actor.start()
        learner.receive(queue.get(timeout=60))
        _wait(lambda: marker.exists(), 60, "the send in flight", actor)
        before = (learner.counters.chunks_received, learner.counters.interaction_steps)
        os.kill(actor.pid, signal.SIGKILL)
        actor.join(timeout=10)
        with pytest.raises(Empty):
            queue.get(timeout=1.0)  # the half-sent message never reaches the learner
        assert before == (3, 3 * C)
        # The restarted actor's messages arrive whole; nothing was counted as malformed.
        grpc_send(port, message(2))
        assert len(learner.receive(queue.get(timeout=30))) == 3
        assert learner.counters.chunks_received == 6
        assert not any(learner.drops.rejected_messages.values()) and learner.drops.rejected == 0
    finally:
        if actor.is_alive():
            actor.kill()
        learner.close()
