"""One demo stage: a subprocess whose command and wall time are recorded in `<run_dir>/stages.json` as it ends.

Shared by the demo's pipeline, by the baselines that add stages to a demo run directory and (through `StageLog`,
which records elsewhere) by the benchmark runner; the evaluation stage lives here because every policy (SFT,
PI-RL, a baseline) goes through the same protocol.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..runtime.console import console_level
from .settings import DemoSettings, env_flags

STAGES_FILE = "stages.json"


def stage_env(defaults: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a stage: headless MuJoCo, offline hub, unbuffered output, plus the stage's own
    `defaults`; a variable already set in this process's environment wins."""
    env = dict(os.environ)
    base = {"MUJOCO_GL": "osmesa", "PYOPENGL_PLATFORM": "osmesa", "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}
    for key, value in {**base, **(defaults or {})}.items():
        env.setdefault(key, value)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def quiet_datasets_env() -> dict[str, str]:
    """Below DEBUG, no `datasets` progress bars: for a stage that saves many small tables (recording saves one
    per episode, each bar next to the script's own line per episode). Not for stages that load a LeRobotDataset:
    LeRobot re-enables the bars after loading one, which warns when this variable is set."""
    return {"HF_DATASETS_DISABLE_PROGRESS_BARS": "1"} if console_level() > logging.DEBUG else {}


def console_script(name: str) -> str:
    """A console script of this virtualenv (next to the running interpreter), else from PATH."""
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


def ppo_flags(*, rollout_chunks: int, actor_lr: float, critic_lr: float, update_epochs: int,
              critic_warmup_updates: int, minibatch_size: int) -> list[str]:
    """`lerobot-pi-rl-train`'s PPO hyperparameters as flags: the one list every pipeline that builds a PI-RL command
    (the demo, the benchmark) passes, in one order."""
    return [
        f"--algorithm.rollout_chunks={rollout_chunks}",
        f"--algorithm.actor_lr={actor_lr}",
        f"--algorithm.critic_lr={critic_lr}",
        f"--algorithm.update_epochs={update_epochs}",
        f"--algorithm.critic_warmup_updates={critic_warmup_updates}",
        f"--algorithm.minibatch_size={minibatch_size}",
    ]


def save_stages(settings: DemoSettings) -> None:
    """Write the commands and stage wall times run so far to `<run_dir>/stages.json` (after every stage), so the
    report can be rebuilt (`--report_only`) when a later stage fails or is interrupted."""
    record = {
        "backbone": settings.backbone, "variant": settings.variant, "advantage": settings.advantage,
        "seed": settings.seed, "offline_ratio": settings.offline_ratio,
        "offline_loss_weight": settings.offline_loss_weight,
        "eval_episodes": settings.eval_episodes,
        "eval_seed": settings.eval_seed, "eval_workers": settings.eval_workers, "commands": settings.commands,
        "timings_s": settings.timings,
    }
    (settings.run_dir / STAGES_FILE).write_text(json.dumps(record, indent=2))


def load_stages(run_dir: Path) -> DemoSettings:
    """The `DemoSettings` (variant, seed, evaluation protocol, commands, timings) a run directory recorded."""
    path = Path(run_dir) / STAGES_FILE
    if not path.is_file():
        raise SystemExit(f"[demo] {path} not found: is {run_dir} a demo run directory?")
    record = json.loads(path.read_text())
    return DemoSettings(
        backbone=record.get("backbone", DemoSettings.backbone), variant=record["variant"], advantage=record.get("advantage", DemoSettings.advantage), run_dir=Path(run_dir),
        seed=record["seed"], eval_episodes=record["eval_episodes"],
        offline_ratio=record.get("offline_ratio", DemoSettings.offline_ratio),
        offline_loss_weight=record.get("offline_loss_weight", DemoSettings.offline_loss_weight),
        eval_seed=record["eval_seed"], eval_workers=record.get("eval_workers", DemoSettings.eval_workers),
        commands=list(record["commands"]), timings=dict(record["timings_s"]),
    )


@dataclass
class StageLog:
    """Where `run_logged_stage` records a stage: the command is appended to `commands`, the wall time set in
    `timings[name]`, then `save()` runs (also when the stage failed); `label` tags the console lines."""

    commands: list[str]
    timings: dict[str, float]
    save: Callable[[], None]
    label: str = "demo"


def _command(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


def _run(label: str, name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
    """Announce the stage and run it, its output streaming to the console; its exit code."""
    print(f"\n=== [{label}] {name}\n$ {_command(argv)}", flush=True)
    return subprocess.run(argv, env=stage_env(env), check=False).returncode


def _finish(label: str, name: str, returncode: int, elapsed: float) -> None:
    if returncode != 0:
        raise SystemExit(f"[{label}] stage '{name}' failed with exit code {returncode} after {elapsed:.0f}s")
    print(f"=== [{label}] {name}: done in {elapsed:.0f}s", flush=True)


def run_logged_stage(log: StageLog, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
    """Run one stage as a subprocess, streaming its output, and record its command and wall time in `log`; a
    failed stage raises `SystemExit` after it is recorded. `env`: environment defaults of this stage (see
    `stage_env`)."""
    log.commands.append(_command(argv))
    start = time.perf_counter()
    try:
        returncode = _run(log.label, name, argv, env)
    finally:
        log.timings[name] = time.perf_counter() - start
        log.save()
    _finish(log.label, name, returncode, log.timings[name])


def run_stage(settings: DemoSettings, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
    """Run one demo stage (see `run_logged_stage`), recorded in `<run_dir>/stages.json`."""
    run_logged_stage(StageLog(settings.commands, settings.timings, lambda: save_stages(settings)), name, argv, env)


def run_recording_stage(settings: DemoSettings, name: str, argv: list[str]) -> None:
    """Run a command that records its own stages in `settings.run_dir` (a baseline's runner given the run
    directory). Afterwards `settings` holds the commands and wall times that command recorded (the real ones,
    not the wrapper's), also when it failed."""
    save_stages(settings)
    start = time.perf_counter()
    try:
        returncode = _run("demo", name, argv)
    finally:
        recorded = load_stages(settings.run_dir)
        settings.commands, settings.timings = recorded.commands, recorded.timings
    _finish("demo", name, returncode, time.perf_counter() - start)


def evaluate(settings: DemoSettings, name: str, policy_path: Path) -> dict:
    """The evaluation stage: `scripts/evaluate.py` on the demo's protocol; its result (also `eval_<name>.json`)."""
    out = settings.run_dir / f"eval_{name}.json"
    run_stage(
        settings,
        f"evaluate {name}",
        [
            sys.executable, "-m", "lerobot_policy_pi_rl.scripts.evaluate",
            "--policy_path", str(policy_path),
            "--num_episodes", str(settings.eval_episodes),
            "--seed", str(settings.eval_seed),
            "--workers", str(settings.eval_workers),
            "--output", str(out),
            *env_flags(settings.recipe.env_options, prefix="--"),
        ],
    )
    return json.loads(out.read_text())
