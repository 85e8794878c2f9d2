"""The orchestration guide (docs/scaling.md) runs as written: the Slurm batch script it ships, and the commands of
its multi-machine layout.

`examples/slurm/pi_rl.sbatch` runs here under fake `srun` and `scontrol` (written into the test's folder, first on
PATH): a job step starts its `--ntasks` tasks on this machine with `SLURM_PROCID` set and node placement ignored,
every node is `localhost`, `scontrol requeue` is recorded. The job is a tiny flow_mlp PickCube run: 2 gloo learner
ranks, 2 actors, TLS with a certificate made here for a name other than the host the actors dial, and a token.
It is stopped by its time-limit signal after a checkpoint, requeued, and started again: the second start resumes,
with one actor held back until the learner has finished (the script then stops it). A job whose actors fail at
start-up stops its learner and fails instead of waiting for rollouts.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from test_runtime import ENV, free_port
from test_transport_security import self_signed

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "slurm" / "pi_rl.sbatch"
JOB_ID = "4242"
SERVER_NAME = "pi-rl-learner"
# Bounds for a slow, shared CPU (a free 2-core machine needs a fraction of them): a job's waits all come out of one
# budget below pytest's per-test timeout, so a stuck job fails with its logs. Actors retry for longer than that:
# only the script's own rules end a job here.
BUDGET_S = 600
RECONNECT_S = 900

FAKE_SRUN = '''#!{python}
"""srun inside an allocation, on one machine: the step's tasks are local processes; placement is ignored."""
import os, signal, socket, subprocess, sys, time

WITH_VALUE = {{"--nodes", "--ntasks", "--ntasks-per-node", "--nodelist", "--exclude", "--cpus-per-task", "--gres",
              "--gpus-per-task"}}
args, ntasks = sys.argv[1:], 1
while args and args[0].startswith("-"):
    option, eq, value = args.pop(0).partition("=")
    if option not in WITH_VALUE:
        sys.exit(f"fake srun: unknown option {{option}}")
    if not eq:
        value = args.pop(0)
    if option == "--ntasks":
        ntasks = int(value)
with open(os.environ["FAKE_SLURM_LOG"], "a") as log:
    log.write("srun " + " ".join(sys.argv[1:len(sys.argv) - len(args)]) + "\\n")
# Test control, not Slurm: FAKE_SRUN_HOLD="<task>:<file>:<port>" starts that task of a multi-task step only once
# <file> exists and nothing listens on <port> (a late node: the learner that wrote <file> has exited).
held, hold_file, hold_port = (os.environ.get("FAKE_SRUN_HOLD") or "-1::0").split(":")
held = int(held) if ntasks > 1 else -1
stopped = []

def start(i):
    return subprocess.Popen(args, env={{**os.environ, "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i),
                                        "SLURM_NTASKS": str(ntasks)}})

def forward(sig, _frame):
    stopped.append(sig)
    for task in tasks:
        if task.poll() is None:
            task.send_signal(sig)

def listening(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0

tasks = []
signal.signal(signal.SIGTERM, forward)
signal.signal(signal.SIGINT, forward)
tasks.extend(start(i) for i in range(ntasks) if i != held)
if held >= 0:
    while not stopped and not (os.path.exists(hold_file) and not listening(int(hold_port))):
        time.sleep(0.2)
    if not stopped:
        with open(os.environ["FAKE_SLURM_LOG"], "a") as log:
            log.write(f"late task {{held}}\\n")
        tasks.append(start(held))
codes = [task.wait() for task in tasks]
sys.exit(next((c if c > 0 else 128 - c for c in codes if c), 0))
'''

FAKE_SCONTROL = '''#!{python}
"""scontrol: `show hostnames` of a comma-separated node list; `requeue` is recorded."""
import os, sys

if sys.argv[1:3] == ["show", "hostnames"]:
    print("\\n".join(sys.argv[3].split(",")))
elif sys.argv[1:2] == ["requeue"]:
    with open(os.environ["FAKE_SLURM_LOG"], "a") as log:
        log.write("requeue " + " ".join(sys.argv[2:]) + "\\n")
else:
    sys.exit(f"fake scontrol: unsupported {{sys.argv[1:]}}")
'''

# The tiny run of tests/test_runtime.py as a train config: what `CONFIG` points a real job at.
TINY_CONFIG = {
    "policy": {"type": "pi_rl", "device": "cpu", "chunk_size": 4, "n_action_steps": 4, "num_denoise_steps": 2,
               "backbone": {"type": "flow_mlp", "hidden_dim": 32, "num_layers": 2, "token_dim": 16},
               "value_head": {"hidden_dims": [32]}},
    "env": {"type": "pi_rl_pickcube"},
    "algorithm": {"type": "pi_rl", "rollout_chunks": 16, "minibatch_size": 16, "update_epochs": 1},
    "seed": 0,
}


def fake_slurm(folder: Path) -> Path:
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text.format(python=sys.executable))
        (bin_dir / name).chmod(0o755)
    return bin_dir


def kill_job(job: subprocess.Popen) -> None:
    """The job and every process it started (torchrun puts its ranks in sessions of their own)."""
    import psutil

    if job.poll() is not None:
        return
    tree = [job.pid, *(child.pid for child in psutil.Process(job.pid).children(recursive=True))]
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    job.wait()


class Budget:
    """One deadline for every wait of a test; a wait that runs out fails with the job's output and logs."""

    def __init__(self, folder: Path, seconds: float = BUDGET_S):
        self.folder, self.deadline = folder, time.monotonic() + seconds

    def left(self) -> float:
        return max(self.deadline - time.monotonic(), 0.0)

    def fail(self, what: str) -> None:
        tails = []
        for path in sorted(self.folder.glob("job*.out")) + sorted(self.folder.glob("*/logs/*")):
            tails.append(f"--- {path.relative_to(self.folder)}\n{path.read_text(errors='replace')[-1500:]}")
        raise AssertionError(f"{what}\n" + "\n".join(tails))

    def until(self, predicate, what: str, job: subprocess.Popen) -> None:
        while self.left() > 0:
            if predicate():
                return
            if job.poll() is not None:
                self.fail(f"the job exited with {job.returncode} while waiting for {what}")
            time.sleep(0.1)
        self.fail(f"timed out waiting for {what}")

    def exit_code(self, job: subprocess.Popen, what: str) -> int:
        try:
            return job.wait(timeout=self.left())
        except subprocess.TimeoutExpired:
            self.fail(f"{what} still running when the test's budget ran out")
            raise


def slurm_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    """The job's environment: the tiny run, its TLS material and token, fake Slurm first on PATH."""
    cert, key = self_signed(tmp_path / "tls", dns=[SERVER_NAME], ips=[])
    token = tmp_path / "tls" / "token"
    token.write_text(os.urandom(16).hex() + "\n")
    config = tmp_path / "run.json"
    config.write_text(json.dumps(TINY_CONFIG))
    return {
        **ENV, "PATH": f"{fake_slurm(tmp_path)}{os.pathsep}{ENV['PATH']}", "FAKE_SLURM_LOG": str(tmp_path / "slurm.log"),
        "OMP_NUM_THREADS": "1", "SLURM_JOB_ID": JOB_ID, "SLURM_JOB_NODELIST": "localhost,localhost",
        "PYTHON": sys.executable, "CONFIG": str(config), "OUTPUT_DIR": str(tmp_path / "run"),
        "NUM_UPDATES": "4", "CHECKPOINT_EVERY": "2", "EXTRA_ARGS": f"--reconnect_timeout_s={RECONNECT_S}",
        "LEARNER_RANKS": "2", "LEARNER_CPUS": "2", "LEARNER_DEVICE": "cpu", "LEARNER_GRES": "",
        "LEARNER_PORT": str(free_port()), "ACTORS_PER_NODE": "2", "N_ENVS": "2", "ACTOR_CPUS": "1",
        "ACTOR_DEVICE": "cpu", "ACTOR_GPUS_PER_TASK": "", "TLS_CERT": str(cert), "TLS_KEY": str(key),
        "TLS_SERVER_NAME": SERVER_NAME, "TOKEN_FILE": str(token), **settings,
    }


def submit(tmp_path: Path, env: dict[str, str], restart: int, jobs: list[subprocess.Popen],
           **extra: str) -> subprocess.Popen:
    job = subprocess.Popen(["bash", str(SCRIPT)], cwd=tmp_path,
                           env={**env, "SLURM_RESTART_COUNT": str(restart), **extra},
                           stdout=open(tmp_path / f"job{restart}.out", "w"), stderr=subprocess.STDOUT,
                           start_new_session=True)
    jobs.append(job)
    return job


def test_slurm_script_trains_is_requeued_at_its_time_limit_and_resumes(tmp_path):
    env = slurm_env(tmp_path, ACTOR_GRACE_S="10")
    out, log, budget = tmp_path / "run", tmp_path / "slurm.log", Budget(tmp_path)
    jobs: list[subprocess.Popen] = []
    learner_log = out / "logs" / f"learner_{TINY_CONFIG['env']['type']}_pi_rl.log"
    final = out / "checkpoints" / "000004" / "training_state" / "training_step.json"
    try:
        # First start: train until the checkpoint of update 2, then the time-limit signal (sbatch --signal=B:USR1).
        job = submit(tmp_path, env, 0, jobs)
        last = out / "checkpoints" / "last"
        budget.until(lambda: last.exists() and (last / "training_state" / "training_step.json").exists(),
                     "the first checkpoint", job)
        job.send_signal(signal.SIGUSR1)
        if budget.exit_code(job, "the first start") != 0:
            budget.fail("the first start failed")
        saved = json.loads((last / "training_state" / "training_step.json").read_text())
        assert saved["step"] == 2, f"the job was stopped at update {saved['step']}, not between updates 2 and 4"
        first_run = learner_log.read_text()
        first_actors = {i: (out / "logs" / f"actor{i}_pi_rl_pickcube_pi_rl.log").read_text() for i in (0, 1)}
        metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert metrics and metrics[-1]["rollout/chunks_received"] >= 2 * TINY_CONFIG["algorithm"]["rollout_chunks"]
        assert f"requeue {JOB_ID}" in log.read_text()

        # The requeued job: same script, same settings, resumes from the checkpoint and finishes. Actor 1's node is
        # late: it starts only once the learner has finished and gone, dials it in vain, and the script stops it
        # ACTOR_GRACE_S later (without that rule the job would wait out the actor's reconnect_timeout_s).
        started = time.monotonic()
        job = submit(tmp_path, env, 1, jobs, FAKE_SRUN_HOLD=f"1:{final}:{env['LEARNER_PORT']}")
        if budget.exit_code(job, "the requeued start") != 0:
            budget.fail("the requeued start failed")
        took = time.monotonic() - started
    finally:
        for job in jobs:
            kill_job(job)
    first, second = (tmp_path / "job0.out").read_text(), (tmp_path / "job1.out").read_text()
    assert "resume=false" in first and "resume=true" in second, second[-2000:]
    assert "late task 1" in log.read_text()
    assert "actors still running 10s after the learner finished: stopping them" in second, second[-2000:]
    assert "exit codes: learner 0, actors 0" in second, second[-2000:]
    assert took < RECONNECT_S
    resumed = learner_log.read_text()[len(first_run):]
    assert "rank 0 of 2 data-parallel learner ranks" in first_run and "TLS, token required" in first_run
    assert re.search(r"resumed from .*000002: update 2, version 2", resumed), resumed[-3000:]
    assert "update 3/4" in resumed and "update 4/4" in resumed and "update 1/4" not in resumed
    saved = json.loads(final.read_text())
    assert saved["step"] == 4 and saved["policy_version"] == 4
    # Task i of the actor step is actor i (SLURM_PROCID): both ran in the first start, each with its own log.
    for index in (0, 1):
        assert "torch threads" in first_actors[index], first_actors[index][-2000:]
    # In the requeued job actor 0 trained alone and stopped when told; actor 1 started after the learner was gone.
    actor0 = (out / "logs" / "actor0_pi_rl_pickcube_pi_rl.log").read_text()[len(first_actors[0]):]
    sent = re.search(r"\[ACTOR\] done: (\d+) chunks", actor0)
    assert sent and int(sent.group(1)) >= 2 * TINY_CONFIG["algorithm"]["rollout_chunks"], actor0[-2000:]
    assert "(training done)" in actor0, actor0[-2000:]
    # Placement, per job (the two steps start concurrently, in either order): the learner step on the first node,
    # the actor step of two tasks on the others.
    steps = [line for line in log.read_text().splitlines() if line.startswith("srun")]
    learner_steps = [line for line in steps if "--nodelist=localhost" in line]
    actor_steps = [line for line in steps if "--exclude=localhost" in line]
    assert len(steps) == 4 and len(learner_steps) == len(actor_steps) == 2, steps
    assert all("--ntasks=1" in line for line in learner_steps), learner_steps
    assert all("--ntasks=2" in line for line in actor_steps), actor_steps


def test_slurm_script_stops_the_learner_and_fails_when_every_actor_fails(tmp_path):
    """Actors that cannot start (here: a device their node does not have) end their step at once; the learner would
    wait for rollouts until the time limit. The script stops it and the job fails, with the actors' code."""
    env = slurm_env(tmp_path, LEARNER_RANKS="1", LEARNER_CPUS="1", ACTOR_DEVICE="no-such-device",
                    NUM_UPDATES="1000")
    budget, jobs = Budget(tmp_path), []
    try:
        job = submit(tmp_path, env, 0, jobs)
        code = budget.exit_code(job, "a job whose actors failed")
    finally:
        for job in jobs:
            kill_job(job)
    text = (tmp_path / "job0.out").read_text()
    assert code == 2, text[-2000:]
    assert "actor step exited with 2 while the learner was training: stopping the learner" in text, text[-2000:]
    actors_out = (tmp_path / "run" / "logs" / "actors_step.out").read_text()
    assert "invalid configuration: Unknown device no-such-device" in actors_out, actors_out[-2000:]


# ---------------------------------------------------------------------------------------------------------------
# The layout's commands parse against the real CLI
# ---------------------------------------------------------------------------------------------------------------

LAYOUT_HEADING = "## One learner node and many actor machines"
ENTRY_POINTS = {"lerobot_policy_pi_rl.runtime.learner": "learner", "lerobot-pi-rl-learner": "learner",
                "lerobot_policy_pi_rl.runtime.actor": "actor", "lerobot-pi-rl-actor": "actor"}


def layout_commands() -> list[tuple[str, list[str]]]:
    """(role, its --flags) of every learner and actor command in the layout section's code blocks."""
    text = (ROOT / "docs" / "scaling.md").read_text()
    section = text.split(LAYOUT_HEADING, 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            # An actor's index computed by the shell (`$((4 * m + k))`) stands for any valid one; `&` backgrounds.
            words = [w for w in shlex.split(re.sub(r"\$\(\([^)]*\)\)", "1", line), comments=True) if w != "&"]
            role = next((ENTRY_POINTS[w] for w in words if w in ENTRY_POINTS), None)
            if role is not None:
                start = max(i for i, w in enumerate(words) if w in ENTRY_POINTS) + 1
                commands.append((role, words[start:]))
    return commands


def test_the_layout_commands_parse_against_the_cli(monkeypatch):
    from lerobot_policy_pi_rl.runtime.cli import load_config

    commands = layout_commands()
    roles = [role for role, _ in commands]
    assert roles.count("learner") >= 2 and roles.count("actor") >= 1, commands  # torchrun and accelerate
    monkeypatch.chdir(ROOT)  # the docs' paths are relative to the repository
    monkeypatch.setattr(sys, "argv", [sys.argv[0]])  # the loader rewrites it, as LeRobot's parser reads it
    for role, flags in commands:
        assert all(f.startswith("--") for f in flags), flags
        cfg = load_config(flags)
        host = cfg.policy.actor_learner_config.learner_host
        assert cfg.security.tls_enabled and cfg.security.token_enabled, flags
        if role == "learner":
            assert host == "0.0.0.0" and cfg.security.tls_key_path is not None, flags
        else:
            assert host != "0.0.0.0" and cfg.security.tls_key_path is None and cfg.num_actors > 1, flags
