"""`make demo`: few-shot SFT -> PI-RL on the state-only PickCube env, on a CPU, with an evaluation report.

Stages (each one a real command of this package or of LeRobot, run as a subprocess and quoted in the report):
  1. record a few scripted demonstrations as a local LeRobotDataset;
  2. SFT of a `pi_rl` flow_mlp policy with LeRobot's own `lerobot-train`;
  3. evaluate the SFT policy (deterministic ODE sampling, fixed seeds);
  4. PI-RL fine-tuning with `lerobot-pi-rl-train` (a learner and actor processes over gRPC);
  5. evaluate the fine-tuned policy with the same protocol;
  6. write `report.md` + `learning_curve.png` under the run directory.
Optionally (`--with_sac`), LeRobot's SAC on the same env, demonstrations and env-step budget, on the same plot.

Every stage's command and wall time go to `<run_dir>/stages.json` as it ends, and the report is written as soon
as the PI-RL evaluation is done (again after SAC), so a failed or interrupted later stage loses nothing.
`python -m lerobot_policy_pi_rl.demo --report_only --run_dir <run_dir>` re-renders the report from the run
directory, e.g. after `python -m lerobot_policy_pi_rl.sac_baseline --run_dir <run_dir> --demos <run_dir>/demos
--env_steps N` added a SAC baseline separately.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

VARIANTS = ("flow_sde", "flow_noise")
# Actor learning rate per variant. The chunk-level log-prob sums C x A elements: Flow-SDE scores one step with
# stds 0.14-0.43, and 1e-5 keeps approx_kl around 0.03-0.06 per update (1e-4 gave ~5 and collapsed the policy).
# Flow-Noise scores all K steps plus the prior with stds near 0.1, so the same weight change moves its log-prob
# several times more: at 1e-5 approx_kl was 0.3-0.5 with half the ratios clipped; 3e-6 scales it back.
ACTOR_LR = {"flow_sde": 1e-5, "flow_noise": 3e-6}
# PPO updates per variant (~4.3 s each on 2 cores). Flow-Noise's success kept rising to the end: 93 % and 86 % after
# 130 updates in two runs (training-episode success 0.85 and 0.80 over the last 10), 91-95 % in five runs after 180.
# Flow-SDE learns faster early but plateaus (training success ~0.85-0.89 from update 40 on; 84-94 % at 130, 88 %
# at 200).
RL_UPDATES = {"flow_sde": 130, "flow_noise": 180}


@dataclass
class DemoSettings:
    """The embedded default recipe, within 20 minutes on a 2-core CPU (measured 16.1 and 17.1 min for Flow-Noise)."""

    # Flow-Noise: measured 33 % -> 91-95 % in five runs here (180 updates); Flow-SDE 44 % -> 84 %, 88 % and 94 %
    # (130 updates). The policy's own default stays Flow-SDE (cheaper for VLAs).
    variant: str = "flow_noise"
    run_dir: Path = Path("outputs/demo")
    seed: int = 0
    # Demonstrations: few clean scripted episodes. Measured: 20 episodes (369 frames) and 800 SFT steps give a
    # partly competent policy (~30 % success); noisy demonstrations (action noise 0.5) gave 0 %.
    demo_episodes: int = 20
    demo_action_noise: float = 0.0
    # SFT (lerobot-train).
    sft_steps: int = 800
    sft_batch_size: int = 64
    # Evaluation protocol (shared by SFT, RL and SAC).
    eval_episodes: int = 100
    eval_seed: int = 100_000
    # Evaluation processes (same episodes and seeds as one process; see `scripts/evaluate.py --workers`).
    eval_workers: int = 2
    # PI-RL. The demo spends what the 20-minute budget leaves on updates. None: the variant's default
    # (`RL_UPDATES`).
    rl_updates: int | None = None
    rollout_chunks: int = 256
    n_envs: int = 4
    # Two actor processes keep both cores busy while the learner waits for a rollout.
    num_actors: int = 2
    # None: the variant's default (`ACTOR_LR`).
    actor_lr: float | None = None
    critic_lr: float = 1e-3
    update_epochs: int = 4
    minibatch_size: int = 64
    # Off by default: from one SFT checkpoint at the same budget, runs without them reached 82 % and 85 %, runs
    # with warm-up 3 and annealing 0.5 -> 0.2 over 60 updates 88 % and 63 %: run-to-run spread, no measured gain.
    critic_warmup_updates: int = 0
    noise_level: float = 0.5
    noise_level_final: float = 0.5
    noise_anneal_updates: int = 0
    # SAC baseline (off by default: it roughly doubles the wall time).
    with_sac: bool = False
    commands: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("MUJOCO_GL", "osmesa")
    env.setdefault("PYOPENGL_PLATFORM", "osmesa")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _bin(name: str) -> str:
    """A console script of this virtualenv (next to the running interpreter), else from PATH."""
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


STAGES_FILE = "stages.json"


def save_stages(settings: DemoSettings) -> None:
    """Write the commands and stage wall times run so far to `<run_dir>/stages.json` (after every stage), so the
    report can be rebuilt (`--report_only`) when a later stage fails or is interrupted."""
    record = {
        "variant": settings.variant, "seed": settings.seed, "eval_episodes": settings.eval_episodes,
        "eval_seed": settings.eval_seed, "commands": settings.commands, "timings_s": settings.timings,
    }
    (settings.run_dir / STAGES_FILE).write_text(json.dumps(record, indent=2))


def load_stages(run_dir: Path) -> DemoSettings:
    """The `DemoSettings` (variant, seed, evaluation protocol, commands, timings) a run directory recorded."""
    path = Path(run_dir) / STAGES_FILE
    if not path.is_file():
        raise SystemExit(f"[demo] {path} not found: is {run_dir} a demo run directory?")
    record = json.loads(path.read_text())
    return DemoSettings(
        variant=record["variant"], run_dir=Path(run_dir), seed=record["seed"], eval_episodes=record["eval_episodes"],
        eval_seed=record["eval_seed"], commands=list(record["commands"]), timings=dict(record["timings_s"]),
    )


def run_stage(settings: DemoSettings, name: str, argv: list[str]) -> None:
    """Run one stage as a subprocess, streaming its output, and record the command and its wall time."""
    printable = " ".join(shlex.quote(a) for a in argv)
    settings.commands.append(printable)
    print(f"\n=== [demo] {name}\n$ {printable}", flush=True)
    start = time.perf_counter()
    try:
        result = subprocess.run(argv, env=_env(), check=False)
    finally:
        settings.timings[name] = time.perf_counter() - start
        save_stages(settings)
    elapsed = settings.timings[name]
    if result.returncode != 0:
        raise SystemExit(f"[demo] stage '{name}' failed with exit code {result.returncode} after {elapsed:.0f}s")
    print(f"=== [demo] {name}: done in {elapsed:.0f}s", flush=True)


def record(settings: DemoSettings) -> Path:
    out = settings.run_dir / "demos"
    run_stage(
        settings,
        "record demonstrations",
        [
            sys.executable, "-m", "lerobot_policy_pi_rl.scripts.record_demos",
            "--output_dir", str(out),
            "--num_episodes", str(settings.demo_episodes),
            "--action_noise", str(settings.demo_action_noise),
            "--seed", str(settings.seed),
        ],
    )
    return out


def sft(settings: DemoSettings, demos: Path) -> Path:
    out = settings.run_dir / "sft"
    run_stage(
        settings,
        "SFT (lerobot-train)",
        [
            _bin("lerobot-train"),
            "--policy.type=pi_rl",
            "--policy.backbone.type=flow_mlp",
            f"--policy.variant.type={settings.variant}",
            "--policy.device=cpu",
            "--policy.push_to_hub=false",
            "--dataset.repo_id=local/pickcube",
            f"--dataset.root={demos}",
            f"--steps={settings.sft_steps}",
            f"--batch_size={settings.sft_batch_size}",
            f"--save_freq={settings.sft_steps}",
            "--log_freq=200",
            "--num_workers=0",
            f"--seed={settings.seed}",
            "--wandb.enable=false",
            f"--output_dir={out}",
        ],
    )
    return out / "checkpoints" / "last" / "pretrained_model"


def evaluate(settings: DemoSettings, name: str, policy_path: Path) -> dict:
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
        ],
    )
    return json.loads(out.read_text())


def pi_rl(settings: DemoSettings, sft_model: Path) -> Path:
    out = settings.run_dir / "pi_rl"
    run_stage(
        settings,
        "PI-RL (lerobot-pi-rl-train: learner + actors over gRPC)",
        [
            _bin("lerobot-pi-rl-train"),
            f"--policy.path={sft_model}",
            "--policy.device=cpu",
            f"--policy.variant.type={settings.variant}",
            *(
                [
                    f"--policy.variant.noise_level={settings.noise_level}",
                    f"--policy.variant.noise_level_final={settings.noise_level_final}",
                    f"--policy.variant.noise_anneal_updates={settings.noise_anneal_updates}",
                ]
                if settings.variant == "flow_sde"
                else []
            ),
            "--env.type=pi_rl_pickcube",
            "--algorithm.type=pi_rl",
            f"--algorithm.rollout_chunks={settings.rollout_chunks}",
            f"--algorithm.actor_lr={settings.actor_lr or ACTOR_LR[settings.variant]}",
            f"--algorithm.critic_lr={settings.critic_lr}",
            f"--algorithm.update_epochs={settings.update_epochs}",
            f"--algorithm.critic_warmup_updates={settings.critic_warmup_updates}",
            f"--algorithm.minibatch_size={settings.minibatch_size}",
            f"--num_updates={settings.rl_updates or RL_UPDATES[settings.variant]}",
            f"--n_envs={settings.n_envs}",
            f"--num_actors={settings.num_actors}",
            "--checkpoint_every_updates=10",
            f"--seed={settings.seed}",
            "--wandb.enable=false",
            f"--output_dir={out}",
        ],
    )
    return out


def _read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_learning_curves(curves: dict[str, list[dict]], evals: dict[str, dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, rows in curves.items():
        rows = [r for r in rows if r.get("rollout/success_rate") is not None]
        if not rows:
            continue
        steps = [r["rollout/interaction_steps"] for r in rows]
        wall = [r["wall_time_s"] / 60 for r in rows]
        success = [r["rollout/success_rate"] for r in rows]
        axes[0].plot(steps, success, marker=".", label=f"{name} (training episodes)")
        axes[1].plot(wall, success, marker=".", label=f"{name} (training episodes)")
    styles = {"sft": ("gray", "--"), "pi_rl": ("tab:blue", ":"), "sac": ("tab:red", ":")}
    for name, result in evals.items():
        color, ls = styles.get(name, ("black", "-."))
        for ax in axes:
            ax.axhline(result["success_rate"], color=color, linestyle=ls,
                       label=f"{name} eval {100 * result['success_rate']:.0f}% ({result['num_episodes']} ep)")
    axes[0].set_xlabel("environment steps")
    axes[1].set_xlabel("wall time (min)")
    for ax in axes:
        ax.set_ylabel("success rate")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle("PickCube (state-only): few-shot SFT -> PI-RL")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _fmt(result: dict) -> str:
    lo, hi = result["success_ci95"]
    return f"{100 * result['success_rate']:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}]"


def write_report(settings: DemoSettings, evals: dict[str, dict], curves: dict[str, list[dict]], total_s: float) -> Path:
    plot = settings.run_dir / "learning_curve.png"
    plot_learning_curves(curves, evals, plot)
    rl_rows = curves.get("pi_rl", [])
    rl_steps = int(rl_rows[-1]["rollout/interaction_steps"]) if rl_rows else 0
    lines = [
        "# PI-RL demo report",
        "",
        f"Variant `{settings.variant}`, state-only PickCube (gym_hil), flow_mlp backbone, seed {settings.seed}.",
        "Success: the task's success flag is reached at any step of the episode (cube lifted 0.1 m).",
        f"Evaluation: deterministic ODE sampling, {settings.eval_episodes} episodes, env seeds "
        f"{settings.eval_seed}..{settings.eval_seed + settings.eval_episodes - 1}, 95 % Wilson intervals.",
        "",
        "| policy | success (95 % CI) | mean return | mean length | training env steps |",
        "|---|---|---|---|---|",
    ]
    steps = {"sft": "-", "pi_rl": str(rl_steps)}
    if "sac" in curves and curves["sac"]:
        steps["sac"] = str(int(curves["sac"][-1]["rollout/interaction_steps"]))
    for name, result in evals.items():
        lines.append(
            f"| {name} | {_fmt(result)} | {result['mean_return']:.3f} | {result['mean_length']:.1f} | "
            f"{steps.get(name, '-')} |"
        )
    if "sac" in evals and steps.get("sac", "-") != "-" and int(steps["sac"]) < rl_steps:
        lines += ["", f"SAC ran {int(steps['sac'])} env steps, fewer than PI-RL's {rl_steps}: compare the curves at "
                      "equal env steps."]
    lines += ["", "![learning curve](learning_curve.png)", "", "## Wall time", ""]
    lines += [f"- {name}: {secs:.0f} s" for name, secs in settings.timings.items()]
    sac_s = sum(secs for name, secs in settings.timings.items() if "sac" in name.lower())
    lines += [f"- total: {total_s:.0f} s"]
    if sac_s:
        lines += [f"- total without the SAC baseline: {total_s - sac_s:.0f} s"]
    lines += ["", "## Commands", "", "```bash"]
    lines += settings.commands
    lines += ["```", ""]
    report = settings.run_dir / "report.md"
    report.write_text("\n".join(lines))
    (settings.run_dir / "report.json").write_text(
        json.dumps(
            {
                "variant": settings.variant,
                "evals": {k: {kk: v[kk] for kk in ("success_rate", "success_ci95", "mean_return", "mean_length",
                                                   "num_episodes")} for k, v in evals.items()},
                "pi_rl_env_steps": rl_steps,
                "timings_s": settings.timings,
                "total_s": total_s,
                "commands": settings.commands,
            },
            indent=2,
        )
    )
    return report


def parse_args(argv: list[str] | None = None) -> DemoSettings:
    defaults = DemoSettings()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", choices=VARIANTS, default=os.environ.get("VARIANT", defaults.variant))
    p.add_argument("--run_dir", type=Path, default=None, help="default: outputs/demo_<variant>_<timestamp>")
    p.add_argument("--overwrite", action="store_true", help="delete an existing run directory first")
    p.add_argument("--with_sac", action="store_true", help="also run LeRobot's SAC baseline")
    for name in ("seed", "demo_episodes", "sft_steps", "eval_episodes", "eval_workers",
                 "rollout_chunks", "n_envs", "num_actors", "critic_warmup_updates", "noise_anneal_updates"):
        p.add_argument(f"--{name}", type=int, default=getattr(defaults, name))
    for name in ("demo_action_noise", "critic_lr", "noise_level", "noise_level_final"):
        p.add_argument(f"--{name}", type=float, default=getattr(defaults, name))
    p.add_argument("--rl_updates", type=int, default=None,
                   help=f"default per variant: {', '.join(f'{k} {v}' for k, v in RL_UPDATES.items())}")
    p.add_argument("--actor_lr", type=float, default=None,
                   help=f"default per variant: {', '.join(f'{k} {v:g}' for k, v in ACTOR_LR.items())}")
    args = p.parse_args(argv)
    if args.rl_updates is not None and args.rl_updates < 1:
        p.error(f"--rl_updates={args.rl_updates} must be >= 1")
    settings = DemoSettings(**{k: v for k, v in vars(args).items() if k not in ("run_dir", "overwrite")})
    # A fresh directory per run by default, so a second `make demo` never overwrites the first one's report.
    settings.run_dir = args.run_dir or Path("outputs") / f"demo_{args.variant}_{time.strftime('%Y%m%d-%H%M%S')}"
    if settings.run_dir.exists():
        if not args.overwrite:
            raise SystemExit(
                f"[demo] {settings.run_dir} already exists: pass --overwrite (DEMO_ARGS=--overwrite with make) "
                "or choose another --run_dir"
            )
        shutil.rmtree(settings.run_dir)
    return settings


def rebuild_report(run_dir: Path) -> Path:
    """Re-render `report.md` / `learning_curve.png` of a run directory from what its stages wrote
    (`stages.json`, `eval_*.json`, `*/metrics.jsonl`), e.g. after a SAC baseline was added with
    `python -m lerobot_policy_pi_rl.sac_baseline --run_dir <run_dir> ...`."""
    settings = load_stages(run_dir)
    evals = {name: json.loads(path.read_text()) for name in ("sft", "pi_rl", "sac")
             if (path := run_dir / f"eval_{name}.json").is_file()}
    if "pi_rl" not in evals:
        raise SystemExit(f"[demo] {run_dir / 'eval_pi_rl.json'} not found: the PI-RL stages did not finish")
    curves = {name: rows for name in ("pi_rl", "sac") if (rows := _read_metrics(run_dir / name / "metrics.jsonl"))}
    return write_report(settings, evals, curves, sum(settings.timings.values()))


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if "--report_only" in argv:
        p = argparse.ArgumentParser(description="Re-render the report of an existing demo run directory.")
        p.add_argument("--report_only", action="store_true")
        p.add_argument("--run_dir", type=Path, required=True)
        report = rebuild_report(p.parse_args(argv).run_dir)
        print(f"[demo] report: {report}")
        return 0
    settings = parse_args(argv)
    settings.run_dir.mkdir(parents=True)
    start = time.perf_counter()
    print(f"[demo] run directory: {settings.run_dir} (variant {settings.variant})", flush=True)
    demos = record(settings)
    sft_model = sft(settings, demos)
    evals = {"sft": evaluate(settings, "sft", sft_model)}
    rl_dir = pi_rl(settings, sft_model)
    evals["pi_rl"] = evaluate(settings, "pi_rl", rl_dir / "checkpoints" / "last" / "pretrained_model")
    curves = {"pi_rl": _read_metrics(rl_dir / "metrics.jsonl")}
    # The PI-RL report first: a failing or interrupted SAC stage must not cost it.
    write_report(settings, evals, curves, time.perf_counter() - start)
    if settings.with_sac:
        from .sac_baseline import run_sac_baseline

        sac_dir, sac_eval = run_sac_baseline(settings, demos, run_stage, rl_env_steps=_last_steps(curves["pi_rl"]))
        evals["sac"] = sac_eval
        curves["sac"] = _read_metrics(sac_dir / "metrics.jsonl")
    total = time.perf_counter() - start
    report = write_report(settings, evals, curves, total)
    latest = settings.run_dir.parent / f"demo_{settings.variant}_latest"
    if latest.is_symlink() or not latest.exists():
        latest.unlink(missing_ok=True)
        latest.symlink_to(settings.run_dir.resolve(), target_is_directory=True)
    print(f"\n[demo] SFT success {_fmt(evals['sft'])} -> PI-RL success {_fmt(evals['pi_rl'])}")
    print(f"[demo] total wall time {total / 60:.1f} min; report: {report}")
    return 0


def _last_steps(rows: list[dict]) -> int:
    return int(rows[-1]["rollout/interaction_steps"]) if rows else 0


if __name__ == "__main__":
    raise SystemExit(main())
