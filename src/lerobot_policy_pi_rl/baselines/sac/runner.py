"""LeRobot's SAC (`gaussian_actor` + SAC algorithm, unchanged) on the demo's state-only PickCube, as a baseline.

    python -m lerobot_policy_pi_rl.baselines.sac --run_dir <demo run dir> --demos <run dir>/demos --env_steps N

Same env (`pi_rl_pickcube`), same demonstrations (the offline half of SAC's replay mix, `--dataset.root`), same
env-step budget as the PI-RL run (`policy.online_steps = env_steps`), same evaluation protocol
(`scripts/evaluate.py`: 100 episodes on the same seeds). Launched with this package's
`lerobot-pi-rl-train --algorithm.type=sac`: LeRobot's stock SAC learner plus this package's SAC actor loop
(`baselines/sac/actor.py`; LeRobot's own actor can only build `gym_manipulator` envs), over LeRobot's gRPC
transport. Given a demo run directory, its stages (training, evaluation) are recorded there like the demo's own,
so `python -m lerobot_policy_pi_rl.demo --report_only --run_dir <run dir>` puts SAC in the report.

What is set beyond LeRobot's defaults, and why:
  * `policy.dataset_stats`: min/max of the demonstrations' observations; the action bounds are the env's action
    space (LeRobot's gaussian_actor defaults are 2-D/3-D placeholders that do not match this env);
  * `algorithm.temperature_init=0.01`: LeRobot's HIL-SERL sim recipes start the entropy temperature there; the
    default 1.0 swamps a sparse 0/1 reward;
  * `batch_size=256` (LeRobot's HIL-SERL value; the pipeline default 8 is a supervised-training default);
  * `save_freq` (`default_save_freq`): the stock learner only checkpoints every `save_freq` optimization steps
    and never stops by itself, so "final checkpoint" means the newest one when the actor's step budget is
    spent (up to `save_freq` optimization steps before the end).
Learning curve: `<run>/sac/metrics.jsonl`, one line per training episode, written by the SAC actor.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

from ...demo.settings import DemoSettings
from ...demo.stages import STAGES_FILE, console_script, evaluate, load_stages, run_stage
from ...envs.pickcube import ACTION_DIM

# Env action bounds: [dx, dy, dz] in [-1, 1], gripper rate command in [0, 2] (see envs/pickcube.py).
ACTION_MIN = [-1.0, -1.0, -1.0, 0.0]
ACTION_MAX = [1.0, 1.0, 1.0, 2.0]
assert len(ACTION_MIN) == ACTION_DIM

BATCH_SIZE = 256
TEMPERATURE_INIT = 0.01
ONLINE_STEP_BEFORE_LEARNING = 100


def default_save_freq(env_steps: int) -> int:
    """About 8 checkpoints per run at the stock learner's pace on a 2-core CPU (see docs/measurements.md)."""
    return max(100, env_steps // 30)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sac_dataset_stats(demos_dir: str | Path) -> dict[str, dict[str, list[float]]]:
    """MIN_MAX stats for gaussian_actor: observations from the demonstrations, actions from the env bounds."""
    stats = json.loads((Path(demos_dir) / "meta" / "stats.json").read_text())
    out = {
        key: {"min": [float(v) for v in stats[key]["min"]], "max": [float(v) for v in stats[key]["max"]]}
        for key in ("observation.state", "observation.environment_state")
    }
    out["action"] = {"min": ACTION_MIN, "max": ACTION_MAX}
    return out


def sac_train_argv(
    *,
    output_dir: str | Path,
    demos_dir: str | Path,
    env_steps: int,
    seed: int,
    port: int,
    launcher: str,
    batch_size: int = BATCH_SIZE,
    save_freq: int | None = None,
    online_step_before_learning: int = ONLINE_STEP_BEFORE_LEARNING,
    extra: list[str] | None = None,
) -> list[str]:
    """The `lerobot-pi-rl-train` command line of one SAC run on `pi_rl_pickcube`."""
    return [
        launcher,
        "--policy.type=gaussian_actor",
        "--policy.device=cpu",
        "--policy.push_to_hub=false",
        f"--policy.online_steps={env_steps}",
        f"--policy.online_step_before_learning={online_step_before_learning}",
        f"--policy.dataset_stats={json.dumps(sac_dataset_stats(demos_dir), separators=(',', ':'))}",
        "--policy.actor_learner_config.learner_host=127.0.0.1",
        f"--policy.actor_learner_config.learner_port={port}",
        "--algorithm.type=sac",
        f"--algorithm.temperature_init={TEMPERATURE_INIT}",
        "--env.type=pi_rl_pickcube",
        "--dataset.repo_id=local/pickcube",
        f"--dataset.root={demos_dir}",
        f"--batch_size={batch_size}",
        f"--save_freq={save_freq or default_save_freq(env_steps)}",
        "--log_freq=100",
        f"--seed={seed}",
        "--num_actors=1",
        "--n_envs=1",
        "--wandb.enable=false",
        f"--output_dir={output_dir}",
        *(extra or []),
    ]


def run_sac_baseline(settings: DemoSettings, demos_dir: Path, env_steps: int) -> tuple[Path, dict]:
    """Train SAC for `env_steps` env steps, then evaluate its newest checkpoint; returns (run dir, eval)."""
    if env_steps < 1:
        raise ValueError(f"env_steps={env_steps}: the SAC baseline needs an env-step budget >= 1 (PI-RL's)")
    out = Path(settings.run_dir) / "sac"
    argv = sac_train_argv(
        output_dir=out,
        demos_dir=demos_dir,
        env_steps=env_steps,
        seed=settings.seed,
        port=free_port(),
        launcher=console_script("lerobot-pi-rl-train"),
    )
    run_stage(settings, "SAC baseline (lerobot-pi-rl-train --algorithm.type=sac: LeRobot's SAC learner)", argv)
    model = out / "checkpoints" / "last" / "pretrained_model"
    if not model.is_dir():
        raise SystemExit(f"[sac] the SAC run wrote no checkpoint ({model}): raise its env-step budget or "
                         "lower save_freq")
    return out, evaluate(settings, "sac", model)


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m lerobot_policy_pi_rl.baselines.sac", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run_dir", type=Path, required=True)
    p.add_argument("--demos", type=Path, required=True, help="LeRobotDataset root of the demonstrations")
    p.add_argument("--env_steps", type=int, required=True, help="env-step budget (the PI-RL run's)")
    p.add_argument("--seed", type=int, default=DemoSettings.seed, help="when --run_dir is not a demo run directory")
    p.add_argument("--eval_episodes", type=int, default=DemoSettings.eval_episodes, help="idem")
    p.add_argument("--eval_seed", type=int, default=DemoSettings.eval_seed, help="idem")
    p.add_argument("--eval_workers", type=int, default=DemoSettings.eval_workers, help="idem")
    args = p.parse_args(argv)
    if args.env_steps < 1:
        p.error(f"--env_steps={args.env_steps} must be >= 1")
    if (args.run_dir / STAGES_FILE).is_file():
        # A demo run directory: its seed and evaluation protocol, and the SAC stages appended to its record.
        settings = load_stages(args.run_dir)
    else:
        settings = DemoSettings(run_dir=args.run_dir, seed=args.seed, eval_episodes=args.eval_episodes,
                                eval_seed=args.eval_seed, eval_workers=args.eval_workers)
    settings.with_sac = True
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    run_dir, result = run_sac_baseline(settings, args.demos, args.env_steps)
    summary = {k: result[k] for k in ("success_rate", "success_ci95", "mean_return", "mean_length", "num_episodes")}
    print(json.dumps({"sac_run_dir": str(run_dir), **summary, "timings_s": settings.timings}))
    return 0
