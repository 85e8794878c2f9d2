"""The benchmark's report, rebuilt from the run directory: `report.md`, `report.json` (the same numbers) and
`learning_curves.png` (one panel per task).

Two kinds of success are shown apart and never mixed:
  evaluation success      the `evaluate` stages: deterministic ODE sampling, fixed episodes, Wilson intervals;
  training-episode success the learner's moving mean over recent training episodes (stochastic sampling, the
                          exploration noise on), from `pi_rl/metrics.jsonl`.
Both count an episode as a success by the same rule (`SUCCESS_DEFINITION`).

An existing report is never overwritten: each writer takes a free index (`report.md`, `report_2.md`, ...; the
JSON and the figure carry the same suffix).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..demo.report import format_success, last_env_steps, read_metrics
from ..runtime.metrics import EPISODE_WINDOW, task_label
from .commands import ENV_TYPE, STAGES, TITLES, Unit, n_envs
from .rundir import Benchmark, UnitRecord, first_unfinished
from .recipe import unit_rl_updates, unit_sft_steps

SUCCESS_DEFINITION = (
    "an episode is a success if MetaWorld's success flag (info['success']) is true at any step; the episode ends "
    "there (and otherwise after the 500-step limit)"
)
# A task counts as improved when PI-RL's evaluation success exceeds SFT's by at least this many points.
IMPROVED_POINTS = 25.0
# Wall-time columns: stage -> column.
TIME_COLUMNS = {"demos": "demos", "sft": "SFT", "eval_sft": "evals", "eval_pi_rl": "evals", "pi_rl": "PI-RL"}


def report_paths(run_dir: Path, index: int) -> tuple[Path, Path, Path]:
    """(markdown, JSON, figure) of report number `index` (1: `report.md`, 2: `report_2.md`, ...)."""
    suffix = "" if index == 1 else f"_{index}"
    run_dir = Path(run_dir)
    return run_dir / f"report{suffix}.md", run_dir / f"report{suffix}.json", run_dir / f"learning_curves{suffix}.png"


def next_free_index(run_dir: Path) -> int:
    index = 1
    while any(p.exists() for p in report_paths(run_dir, index)):
        index += 1
    return index


def task_result(evaluation: dict | None, task: str, unit: Unit) -> dict | None:
    """One task's evaluation (success rate, Wilson interval, counts): its `per_task` entry, or the whole result
    for a single-task evaluation."""
    if evaluation is None:
        return None
    per_task = evaluation.get("per_task") or {}
    if task in per_task:
        result = per_task[task]
    elif unit.tasks == (task,):
        result = evaluation
    else:
        return None
    return {k: result[k] for k in ("success_rate", "success_ci95", "num_successes", "num_episodes")}


def pooled(results: list[dict]) -> dict:
    """All episodes of several tasks as one binomial sample: the success rate and its Wilson interval."""
    from ..scripts.evaluate import wilson_interval

    successes = sum(r["num_successes"] for r in results)
    episodes = sum(r["num_episodes"] for r in results)
    return {"success_rate": successes / episodes if episodes else float("nan"),
            "success_ci95": list(wilson_interval(successes, episodes)),
            "num_successes": successes, "num_episodes": episodes}


def training_curve(rows: list[dict], task: str, unit: Unit) -> list[tuple[float, float, float]]:
    """(env steps, training-episode success, episodes in its window) per update with a finished episode: the task's
    own window in a multi-task run (`rollout/success_rate/<task>/0`: the env builds one suite per MetaWorld task),
    the run's in a single-task one."""
    suffix = "" if len(unit.tasks) == 1 else f"/{task_label(task, 0)}"
    key, count = f"rollout/success_rate{suffix}", f"rollout/window_episodes{suffix}"
    return [(float(r["rollout/interaction_steps"]), float(r[key]), float(r.get(count, float("nan"))))
            for r in rows if r.get(key) is not None]


def first_full_window(curve: list[tuple[float, float, float]]) -> float | None:
    """Training-episode success at the first update whose window holds `EPISODE_WINDOW` episodes (None before
    that): earlier values cover the first episodes to finish, the short ones, and read high."""
    return next((rate for _, rate, episodes in curve if episodes >= EPISODE_WINDOW), None)


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def wall_times(record: UnitRecord) -> dict[str, float]:
    """Seconds per column (demos, SFT, evals, PI-RL) and in total, over the stages that ran."""
    out = {column: 0.0 for column in dict.fromkeys(TIME_COLUMNS.values())}
    for stage, seconds in record.timings_s.items():
        out[TIME_COLUMNS[stage]] += seconds
    out["total"] = sum(record.timings_s.values())
    return out


def collect(run_dir: Path) -> tuple[dict, dict[str, list[tuple[float, float]]]]:
    """The report's numbers (what `report.json` holds) and each task's training curve, from the run directory."""
    bench = Benchmark.load(run_dir)
    recipe = bench.recipe
    per_task: dict[str, dict] = {}
    curves: dict[str, list[tuple[float, float]]] = {}
    units_out: dict[str, dict] = {}
    for unit in bench.units():
        record = UnitRecord.load(unit)
        first = first_unfinished(unit, record)
        rows = read_metrics(unit.output("pi_rl") / "metrics.jsonl")
        evals = {stage: _read_json(unit.output(stage)) if stage in record.finished else None
                 for stage in ("eval_sft", "eval_pi_rl")}
        rl_finished = "pi_rl" in record.finished
        units_out[unit.name] = {
            "tasks": list(unit.tasks),
            "finished": first is None,
            "next_stage": None if first is None else TITLES[STAGES[first]],
            "pi_rl_env_steps": last_env_steps(rows) if rl_finished else None,
            "n_envs_per_actor": n_envs(recipe, unit),
            "sft_steps": unit_sft_steps(recipe, len(unit.tasks)),
            "rl_updates": unit_rl_updates(recipe, len(unit.tasks)),
            "wall_time_s": wall_times(record),
            "commands": {stage: record.commands[stage] for stage in STAGES if stage in record.commands},
            "finished_stages": [s for s in STAGES if s in record.finished],
        }
        for task in unit.tasks:
            sft = task_result(evals["eval_sft"], task, unit)
            rl = task_result(evals["eval_pi_rl"], task, unit)
            curve = training_curve(rows, task, unit) if rl_finished else []
            curves[task] = curve
            per_task[task] = {
                "unit": unit.name,
                "sft": sft,
                "pi_rl": rl,
                "change_points": 100 * (rl["success_rate"] - sft["success_rate"]) if sft and rl else None,
                "training_episode_success": {
                    "first_full_window": first_full_window(curve),
                    "last": curve[-1][1] if curve else None,
                    "updates_with_episodes": len(curve),
                },
            }
    both = [row for row in per_task.values() if row["change_points"] is not None]
    # Env steps and wall time of the tasks in the aggregate (single-task mode; a multi-task policy's are its own).
    counted = [units_out[name] for name in dict.fromkeys(row["unit"] for row in both)]
    aggregate = {
        "tasks": len(per_task),
        "tasks_evaluated": len(both),
        "sft_mean_success": _mean([r["sft"]["success_rate"] for r in both]),
        "pi_rl_mean_success": _mean([r["pi_rl"]["success_rate"] for r in both]),
        "mean_change_points": _mean([r["change_points"] for r in both]),
        "sft_pooled": pooled([r["sft"] for r in both]) if both else None,
        "pi_rl_pooled": pooled([r["pi_rl"] for r in both]) if both else None,
        "improved_points_threshold": IMPROVED_POINTS,
        # A float tolerance, so that e.g. 40 % -> 65 % counts as +25 points.
        "tasks_improved": sum(r["change_points"] >= IMPROVED_POINTS - 1e-9 for r in both),
        "pi_rl_env_steps": sum(u["pi_rl_env_steps"] or 0 for u in counted),
        "wall_time_s": sum(u["wall_time_s"]["total"] for u in counted),
    }
    summary = {
        "env": f"MetaWorld v3, state-only (--env.type={ENV_TYPE})",
        "mode": "multi-task" if bench.multitask else "single-task",
        "tasks": list(bench.tasks),
        "seed": bench.seed,
        "recipe": recipe.to_json(),
        "default_recipe": not bench.recipe_changes(),
        "recipe_changes": {k: {"default": d, "used": u} for k, (d, u) in bench.recipe_changes().items()},
        "evaluation": {
            "episodes_per_task": recipe.eval_episodes,
            "seed": recipe.eval_seed,
            "workers": recipe.eval_workers,
            "sampling": "deterministic ODE (no exploration noise)",
            "episode_length": 500,
            "interval": "95 % Wilson score",
        },
        "success_definition": SUCCESS_DEFINITION,
        "training_episode_success": (
            f"moving mean over the last {EPISODE_WINDOW} training episodes (per task), each cut at "
            f"{recipe.train_episode_length} steps (evaluation: 500), stochastic sampling with "
            "exploration noise; not an evaluation"
        ),
        "per_task": per_task,
        "aggregate": aggregate,
        # Every stage that ran in this run directory, finished or not.
        "wall_time_s": sum(u["wall_time_s"]["total"] for u in units_out.values()),
        "units": units_out,
    }
    return summary, curves


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def _points(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f}"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f}"


def render_markdown(summary: dict, name: str, earlier: list[str], figure: str) -> str:
    recipe, protocol, agg = summary["recipe"], summary["evaluation"], summary["aggregate"]
    multitask = summary["mode"] == "multi-task"
    lines = [f"# PI-RL benchmark: {summary['env']}", ""]
    if earlier:
        lines += [f"This is `{name}`; the run directory already held {', '.join(f'`{e}`' for e in earlier)} "
                  "(kept, not overwritten).", ""]
    if multitask:
        lines.append(f"Multi-task mode: ONE policy trained on all {len(summary['tasks'])} tasks (their demonstrations"
                     " in one dataset, the task's one-hot appended to the state), evaluated per task.")
    else:
        lines.append(f"Single-task mode: one policy per task, {len(summary['tasks'])} task(s).")
    lines += [f"Seed {summary['seed']} (demonstrations, SFT, PI-RL).", "", "## Recipe (the same for every task)", ""]
    if summary["default_recipe"]:
        lines.append("The benchmark's default recipe, unchanged.")
    else:
        changed = ", ".join(f"`{k}` {v['default']} -> {v['used']}" for k, v in summary["recipe_changes"].items())
        lines.append(f"**Not the benchmark recipe**: changed on the command line, for every task: {changed}. These "
                     "numbers are not comparable with the default recipe's.")
    lines += ["", "| field | value |", "|---|---|"]
    lines += [f"| `{k}` | {'policy default' if v is None else v} |" for k, v in recipe.items()]
    if multitask:
        unit = next(iter(summary["units"].values()))
        lines += ["", f"Budgets are per task: this {len(summary['tasks'])}-task policy trains {unit['sft_steps']} SFT "
                      f"steps and {unit['rl_updates']} PI-RL updates ({len(summary['tasks'])} times the recipe's), "
                      "so each task gets a single-task policy's share."]
        if unit["n_envs_per_actor"] != recipe["n_envs"]:
            lines += ["", f"Envs per actor in this multi-task run: {unit['n_envs_per_actor']} (the recipe's "
                          f"{recipe['n_envs']} rounded up to a multiple of the {len(summary['tasks'])} tasks)."]
    lines += [
        "", "## Evaluation protocol", "",
        f"- Success, the only definition used (evaluation and training episodes): {summary['success_definition']}.",
        f"- Evaluation success: {protocol['sampling']}, {protocol['episodes_per_task']} episodes per task from env "
        f"seed {protocol['seed']} on (the same episodes for the SFT and the PI-RL policy), each of up to "
        f"{protocol.get('episode_length', 500)} steps (MetaWorld's limit), "
        f"{protocol['interval']} intervals.",
        f"- Training-episode success (its own section below): {summary['training_episode_success']}.",
        "", "## Evaluation success per task", "",
    ]
    lines += [
        "| task | SFT success [95 % CI] | PI-RL success [95 % CI] | change (points) | PI-RL env steps | "
        "wall time (min): demos / SFT / evals / PI-RL / total |",
        "|---|---|---|---|---|---|",
    ]
    for task, row in summary["per_task"].items():
        unit = summary["units"][row["unit"]]
        steps = "shared" if multitask else (unit["pi_rl_env_steps"] if unit["pi_rl_env_steps"] is not None else "-")
        wall = "shared" if multitask else " / ".join(_minutes(s) for s in unit["wall_time_s"].values())
        lines.append(f"| {task} | {_success(row['sft'])} | {_success(row['pi_rl'])} | "
                     f"{_points(row['change_points'])} | {steps} | {wall} |")
    if agg["tasks_evaluated"]:
        lines.append(
            f"| **all {agg['tasks_evaluated']} evaluated tasks** | mean {_pct(agg['sft_mean_success'])}; pooled "
            f"{_success(agg['sft_pooled'])} | mean {_pct(agg['pi_rl_mean_success'])}; pooled "
            f"{_success(agg['pi_rl_pooled'])} | {_points(agg['mean_change_points'])} (mean) | "
            + ("shared | shared |" if multitask else
               f"{agg['pi_rl_env_steps']} (sum) | {_minutes(agg['wall_time_s'])} (sum) |")
        )
    if agg["tasks_evaluated"]:
        lines += [
            "",
            f"Tasks improved by >= {agg['improved_points_threshold']:.0f} points: {agg['tasks_improved']} of "
            f"{agg['tasks_evaluated']}" + (f" (of {agg['tasks']} tasks; the others are not finished)."
                                           if agg["tasks_evaluated"] < agg["tasks"] else "."),
            "Mean: over tasks; pooled: all episodes of all tasks as one sample, with its Wilson interval.",
        ]
    else:
        lines += ["", "No task has both evaluations yet."]
    if multitask:
        unit = next(iter(summary["units"].values()))
        times = unit["wall_time_s"]
        lines += ["", f"The one multi-task policy: {unit['pi_rl_env_steps'] or '-'} PI-RL env steps over all tasks; "
                      f"wall time (min) demos {_minutes(times['demos'])}, SFT {_minutes(times['SFT'])}, evals "
                      f"{_minutes(times['evals'])}, PI-RL {_minutes(times['PI-RL'])}, total {_minutes(times['total'])}."]
    unfinished = {name: u["next_stage"] for name, u in summary["units"].items() if not u["finished"]}
    if unfinished:
        lines += ["", "Not finished (rerun the same command to resume): "
                  + "; ".join(f"{name} (next stage: {stage})" for name, stage in unfinished.items()) + "."]
    lines += ["", f"Wall time of every stage run in this run directory: {_minutes(summary['wall_time_s'])} min."]
    lines += [
        "", f"![learning curves]({figure})", "",
        "## Training-episode success (stochastic sampling; not evaluation)", "",
        f"The learner's {summary['training_episode_success']}: do not compare it with the evaluation table above.",
        "",
        f"| task | at the first update with {EPISODE_WINDOW} episodes in the window | after the last update | "
        "updates with episodes |",
        "|---|---|---|---|",
    ]
    for task, row in summary["per_task"].items():
        training = row["training_episode_success"]
        lines.append(f"| {task} | {_pct(training['first_full_window'])} | {_pct(training['last'])} | "
                     f"{training['updates_with_episodes']} |")
    lines += ["", "## Commands", ""]
    for name, unit in summary["units"].items():
        lines += [f"### {name}", "", "```bash"]
        lines += [unit["commands"][stage] + ("" if stage in unit["finished_stages"] else "  # did not finish")
                  for stage in STAGES if stage in unit["commands"]]
        lines += ["```", ""]
    return "\n".join(lines)


def _success(result: dict | None) -> str:
    return "-" if result is None else f"{format_success(result)} ({result['num_successes']}/{result['num_episodes']})"


def plot_learning_curves(summary: dict, curves: dict[str, list[tuple[float, float]]], out: Path) -> None:
    """One panel per task: training-episode success against env steps (a line) and the evaluations as points
    with their interval bars (SFT at 0 env steps, PI-RL at the run's last)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(summary["per_task"])
    cols = min(len(tasks), 5)
    rows = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(3.6 * cols, 7.0), 3.2 * rows), squeeze=False)
    multitask = summary["mode"] == "multi-task"
    for ax, task in zip(axes.flat, tasks, strict=False):
        row = summary["per_task"][task]
        curve = curves.get(task, [])
        if curve:
            ax.plot([s for s, _, _ in curve], [v for _, v, _ in curve], color="tab:blue", lw=1.2,
                    label="training episodes (stochastic)")
        end = summary["units"][row["unit"]]["pi_rl_env_steps"] or (curve[-1][0] if curve else 0)
        for name, x, color in (("sft", 0, "gray"), ("pi_rl", end, "tab:red")):
            result = row[name]
            if result is None:
                continue
            lo, hi = result["success_ci95"]
            rate = result["success_rate"]
            ax.errorbar([x], [rate], yerr=[[rate - lo], [hi - rate]], fmt="o", color=color, capsize=4,
                        label=f"{'SFT' if name == 'sft' else 'PI-RL'} evaluation (95 % CI)")
        ax.set_title(task, fontsize=10)
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("PI-RL env steps" + (" (all tasks)" if multitask else ""))
        ax.set_ylabel("success rate")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    fig.suptitle("Training-episode success (line, stochastic) and evaluation success (points, deterministic ODE)",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    fig.savefig(out, dpi=100)
    plt.close(fig)


def write_report(run_dir: Path, index: int) -> Path:
    """Write report number `index` of the run directory (its markdown, JSON and figure); the markdown's path.
    `index` must be free or this process's own earlier write (see `next_free_index`)."""
    md, js, png = report_paths(run_dir, index)
    earlier = [report_paths(run_dir, i)[0].name for i in range(1, index) if report_paths(run_dir, i)[0].exists()]
    summary, curves = collect(run_dir)
    summary = {"report": md.name, "earlier_reports": earlier, **summary}
    plot_learning_curves(summary, curves, png)
    md.write_text(render_markdown(summary, md.name, earlier, png.name))
    js.write_text(json.dumps(summary, indent=2))
    return md


def one_line_result(unit: Unit) -> str:
    """`SFT 40.0 % -> PI-RL 75.0 %` per task of the unit, for the console."""
    parts = []
    for task in unit.tasks:
        sft = task_result(_read_json(unit.output("eval_sft")), task, unit)
        rl = task_result(_read_json(unit.output("eval_pi_rl")), task, unit)
        parts.append(f"{task + ': ' if len(unit.tasks) > 1 else ''}SFT {_pct(sft and sft['success_rate'])} -> "
                     f"PI-RL {_pct(rl and rl['success_rate'])}")
    return "; ".join(parts)
