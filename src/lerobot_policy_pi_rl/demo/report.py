"""The demo's report: `report.md` (evaluations with 95 % intervals, wall times, commands), `report.json` and
`learning_curve.png`, from the evaluations and training curves, or rebuilt from a run directory."""

from __future__ import annotations

import json
from pathlib import Path

from .settings import DemoSettings
from .stages import load_stages

# Runs whose training curves (`<run_dir>/<name>/metrics.jsonl`) and evaluations (`eval_<name>.json`) a report shows.
TRAINED = ("pi_rl", "sac")
EVALUATED = ("sft", *TRAINED)
# "Reached" for training-episode success: the learner's `rollout/success_rate` (its mean over the last
# `EPISODE_WINDOW` training episodes) at least this high ...
REACHED_SUCCESS = 0.9
# ... at this many consecutive updates.
REACHED_UPDATES = 10


def read_metrics(path: Path) -> list[dict]:
    """The rows of a `metrics.jsonl` (one per update or episode); none when the file is missing."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def last_env_steps(rows: list[dict]) -> int:
    """Env steps a training run took, from its last metrics row (0 for no rows)."""
    return int(rows[-1]["rollout/interaction_steps"]) if rows else 0


def env_steps_to_success(rows: list[dict], *, success: float = REACHED_SUCCESS,
                         updates: int = REACHED_UPDATES) -> int | None:
    """Env steps until the training-episode success first held: `rollout/interaction_steps` at the FIRST update of
    the first run of `updates` consecutive metrics rows whose `rollout/success_rate` is >= `success`; None if no
    such run (also with fewer than `updates` rows). A row breaks a run when it has no success rate (no finished
    episode yet) or its window is not full yet (`rollout/window_episodes` below `EPISODE_WINDOW`: the first
    episodes to finish are the short, successful ones, so early windows read high); rows written before the
    learner logged the window's size count as full."""
    from ..runtime.metrics import EPISODE_WINDOW

    if updates < 1:
        raise ValueError(f"updates={updates} must be >= 1")
    start = None
    streak = 0
    for row in rows:
        rate = row.get("rollout/success_rate")
        full = row.get("rollout/window_episodes", EPISODE_WINDOW) >= EPISODE_WINDOW
        if rate is None or rate < success or not full:
            streak = 0
            continue
        if streak == 0:
            start = int(row["rollout/interaction_steps"])
        streak += 1
        if streak == updates:
            return start
    return None


def describe_env_steps_to_success(rows: list[dict]) -> str:
    """The report's line on `env_steps_to_success` (training episodes, not the evaluation)."""
    steps = env_steps_to_success(rows)
    found = f"not reached in {last_env_steps(rows)} env steps" if steps is None else str(steps)
    from ..runtime.metrics import EPISODE_WINDOW

    return (f"Env steps to {100 * REACHED_SUCCESS:.0f} % training-episode success: {found} (the learner's "
            f"`rollout/success_rate`, its mean over the last {EPISODE_WINDOW} training episodes, not the evaluation; "
            f"the env steps at the first of {REACHED_UPDATES} consecutive updates at >= {100 * REACHED_SUCCESS:.0f} "
            "% with a full window).")


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


def format_success(result: dict) -> str:
    lo, hi = result["success_ci95"]
    return f"{100 * result['success_rate']:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}]"


def observation_description(settings: DemoSettings) -> str:
    options = settings.recipe.env_options
    if not options:
        return "state-only: arm state and cube position"
    parts = ["instruction", "arm state" + (" with the cube position" if options.get("state_includes_cube") else "")]
    camera = options.get("camera", "none")
    if camera == "blank":
        parts.append(f"a blank {options.get('camera_size')} px camera frame")
    elif camera != "none":
        parts.append(f"the {camera} camera at {options.get('camera_size')} px")
    return ", ".join(parts)


def rl_time_split(rl_dir: Path, metrics: list[dict]) -> list[str]:
    """Report lines: each actor's wall time per stage (`time_split/actor*.json`) and the learner's update time."""
    from ..runtime.metrics import TimeSplit

    lines = []
    for path in sorted((rl_dir / "time_split").glob("actor*.json")):
        record = json.loads(path.read_text())
        seconds = record["seconds"]
        env_steps = max(int(record.get("env_steps", 0)), 1)
        lines.append(f"- {path.stem}: {TimeSplit.format(seconds)}; "
                     f"{1000 * seconds.get('env', 0.0) / env_steps:.1f} ms env and "
                     f"{1000 * seconds.get('sampling', 0.0) / env_steps:.1f} ms sampling per env step")
    updates = [row["perf/update_s"] for row in metrics if "perf/update_s" in row]
    collect = [row["perf/collect_s"] for row in metrics if "perf/collect_s" in row]
    if updates:
        lines.append(f"- learner: {sum(updates):.0f} s in {len(updates)} PPO updates ({sum(updates) / len(updates):.1f} s "
                     f"each), {sum(collect):.0f} s waiting for rollouts")
    return lines


def write_report(settings: DemoSettings, evals: dict[str, dict], curves: dict[str, list[dict]], total_s: float) -> Path:
    plot = settings.run_dir / "learning_curve.png"
    plot_learning_curves(curves, evals, plot)
    rl_steps = last_env_steps(curves.get("pi_rl", []))
    lines = [
        "# PI-RL demo report",
        "",
        f"Backbone `{settings.backbone}`, variant `{settings.variant}`, advantages `{settings.advantage}`, PickCube "
        f"(gym_hil; {observation_description(settings)}), seed {settings.seed}.",
        "Success: the task's success flag is reached at any step of the episode (cube lifted 0.1 m).",
        f"Evaluation: deterministic ODE sampling, {settings.eval_episodes} episodes, env seeds "
        f"{settings.eval_seed}..{settings.eval_seed + settings.eval_episodes - 1}, 95 % Wilson intervals.",
        *([f"Online/offline mixing: {100 * settings.offline_ratio:g} % of each PPO minibatch's rows are the SFT "
           f"demonstrations (flow-matching loss, weight {settings.offline_loss_weight:g})."]
          if settings.offline_ratio else []),
        "",
        "| policy | success (95 % CI) | mean return | mean length | training env steps |",
        "|---|---|---|---|---|",
    ]
    steps = {"sft": "-", "pi_rl": str(rl_steps)}
    if curves.get("sac"):
        steps["sac"] = str(last_env_steps(curves["sac"]))
    for name, result in evals.items():
        lines.append(
            f"| {name} | {format_success(result)} | {result['mean_return']:.3f} | {result['mean_length']:.1f} | "
            f"{steps.get(name, '-')} |"
        )
    if "sac" in evals and steps.get("sac", "-") != "-" and int(steps["sac"]) < rl_steps:
        lines += ["", f"SAC ran {int(steps['sac'])} env steps, fewer than PI-RL's {rl_steps}: compare the curves at "
                      "equal env steps."]
    if curves.get("pi_rl"):
        lines += ["", describe_env_steps_to_success(curves["pi_rl"])]
    lines += ["", "![learning curve](learning_curve.png)", "", "## Wall time", ""]
    lines += [f"- {name}: {secs:.0f} s" for name, secs in settings.timings.items()]
    sac_s = sum(secs for name, secs in settings.timings.items() if "sac" in name.lower())
    lines += [f"- total: {total_s:.0f} s"]
    if sac_s:
        lines += [f"- total without the SAC baseline: {total_s - sac_s:.0f} s"]
    split = rl_time_split(settings.run_dir / "pi_rl", curves.get("pi_rl", []))
    if split:
        lines += ["", "### Where the PI-RL stage's time goes", ""]
        lines += split
    lines += ["", "## Commands", "", "```bash"]
    lines += settings.commands
    lines += ["```", ""]
    report = settings.run_dir / "report.md"
    report.write_text("\n".join(lines))
    (settings.run_dir / "report.json").write_text(
        json.dumps(
            {
                "backbone": settings.backbone,
                "variant": settings.variant,
                "evals": {k: {kk: v[kk] for kk in ("success_rate", "success_ci95", "mean_return", "mean_length",
                                                   "num_episodes")} for k, v in evals.items()},
                "pi_rl_env_steps": rl_steps,
                "pi_rl_env_steps_to_success": env_steps_to_success(curves.get("pi_rl", [])),
                "offline_ratio": settings.offline_ratio,
                "offline_loss_weight": settings.offline_loss_weight,
                "timings_s": settings.timings,
                "total_s": total_s,
                "commands": settings.commands,
            },
            indent=2,
        )
    )
    return report


def read_evals(run_dir: Path) -> dict[str, dict]:
    """The `eval_<name>.json` results a run directory holds, in report order."""
    return {name: json.loads(path.read_text()) for name in EVALUATED
            if (path := Path(run_dir) / f"eval_{name}.json").is_file()}


def rebuild_report(run_dir: Path) -> Path:
    """Re-render `report.md` / `learning_curve.png` of a run directory from what its stages wrote
    (`stages.json`, `eval_*.json`, `*/metrics.jsonl`), e.g. after a SAC baseline was added with
    `python -m lerobot_policy_pi_rl.baselines.sac --run_dir <run_dir> ...`."""
    settings = load_stages(run_dir)
    evals = read_evals(run_dir)
    if "pi_rl" not in evals:
        raise SystemExit(f"[demo] {run_dir / 'eval_pi_rl.json'} not found: the PI-RL stages did not finish")
    curves = {name: rows for name in TRAINED if (rows := read_metrics(run_dir / name / "metrics.jsonl"))}
    return write_report(settings, evals, curves, sum(settings.timings.values()))
