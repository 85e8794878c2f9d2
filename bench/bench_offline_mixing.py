"""Online/offline mixing against plain PPO, side by side on the same seeds: for each offline ratio and seed, the env
steps and PPO updates until the training-episode success first holds >= 90 % (and 70 %) for 10 consecutive
updates, the rows the learner dropped as stale, the final evaluation success (Wilson 95 % interval) and the PI-RL
wall time.

    python bench/bench_offline_mixing.py --out outputs/offline_mixing                  # PickCube, the demo's recipe
    python bench/bench_offline_mixing.py --env metaworld --task push-v3 --out outputs/offline_mixing_push
    python bench/bench_offline_mixing.py --out outputs/mix_smoke --seeds 0 --ratios 0 0.5 \\
        --demo_episodes 2 --sft_steps 20 --rl_updates 2 --eval_episodes 4              # a smoke run

Per seed, once, in `<out>/seed_<s>/`: demonstrations, SFT and the SFT evaluation, with the stages of the demo
(PickCube, `python -m lerobot_policy_pi_rl.demo`) or of the benchmark runner (MetaWorld,
`lerobot-pi-rl-benchmark`). Per seed and ratio (a cell), in `<out>/seed_<s>/ratio_<r>/`: PI-RL from that seed's
SFT checkpoint with a share r of every PPO minibatch's rows drawn from that seed's demonstrations
(`--algorithm.offline.*`; ratio 0 is plain PPO), then its evaluation with the same protocol. Cells run one after
another, each learner on a free loopback port.

Resume: the same command skips finished work (a cell is finished when its evaluation JSON is there) and redoes an
unfinished cell from its PI-RL stage. An `--out` started with other budgets, env, task or loss weight is refused;
more seeds or ratios may be added later. A failed cell does not stop the others; the script then exits non-zero.

`comparison.md` and `comparison.json` are written after every cell. An existing comparison is never overwritten:
a later invocation writes `comparison_2.md`, `comparison_2.json`, and so on.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

from lerobot_policy_pi_rl.demo import pipeline
from lerobot_policy_pi_rl.demo.report import (
    REACHED_SUCCESS,
    REACHED_UPDATES,
    env_steps_to_success,
    format_success,
    last_env_steps,
    read_metrics,
)
from lerobot_policy_pi_rl.demo.settings import DemoSettings
from lerobot_policy_pi_rl.demo.stages import STAGES_FILE, StageLog, evaluate, quiet_datasets_env, run_logged_stage
from lerobot_policy_pi_rl.runtime.metrics import EPISODE_WINDOW

SETTINGS_FILE = "bench_offline_mixing.json"
# A lower bar, held the same way (10 consecutive updates, full window): on PickCube plain PPO's training success
# levels off in the high 80s (its evaluation is higher), so 90 % alone can leave every cell without a number.
LOWER_SUCCESS = 0.7
MODEL = Path("checkpoints") / "last" / "pretrained_model"
BUDGETS = ("demo_episodes", "sft_steps", "rl_updates", "eval_episodes")


def ratio_dir(seed_dir: Path, ratio: float) -> Path:
    return seed_dir / f"ratio_{ratio:g}"


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def stage_log(run_dir: Path) -> StageLog:
    """Records stages in `<run_dir>/stages.json` as the demo does (`commands`, `timings_s`), for the MetaWorld
    stages, which come from the benchmark runner without its run directory."""
    path = run_dir / STAGES_FILE
    record = _read_json(path) or {"commands": [], "timings_s": {}}
    return StageLog(commands=record["commands"], timings=record["timings_s"], label="mix",
                    save=lambda: path.write_text(json.dumps(record, indent=2)))


class PickCube:
    """The demo's recipe (flow_mlp, its default variant) and its stage functions."""

    pi_rl_stage = pipeline.PI_RL_STAGE

    def __init__(self, budgets: dict[str, int | None]):
        self.budgets = {k: v for k, v in budgets.items() if v is not None}

    def settings(self, run_dir: Path, seed: int, **extra) -> DemoSettings:
        return DemoSettings(run_dir=run_dir, seed=seed, **self.budgets, **extra)

    def describe(self) -> dict:
        s = self.settings(Path("."), 0)
        return {"env": "pickcube", "task": None, "backbone": s.backbone, "variant": s.variant,
                "actor_lr": s.actor_lr, **{name: getattr(s, name) for name in BUDGETS},
                "eval_seed": s.eval_seed}

    def title(self) -> str:
        return "PickCube, the demo's flow_mlp recipe"

    def prepare(self, seed_dir: Path, seed: int) -> None:
        settings = self.settings(seed_dir, seed)
        demos = pipeline.record(settings)
        evaluate(settings, "sft", pipeline.sft(settings, demos))

    def cell(self, seed_dir: Path, cell_dir: Path, seed: int, ratio: float, loss_weight: float) -> None:
        from lerobot_policy_pi_rl.runtime.transport import free_loopback_port

        settings = self.settings(cell_dir, seed, offline_ratio=ratio, offline_loss_weight=loss_weight,
                                 learner_port=free_loopback_port())
        rl_dir = pipeline.pi_rl(settings, seed_dir / "sft" / MODEL, seed_dir / "demos")
        evaluate(settings, "pi_rl", rl_dir / MODEL)


class MetaWorld:
    """One MetaWorld task with the benchmark runner's recipe (scaled by the budgets) and stage commands."""

    def __init__(self, task: str, budgets: dict[str, int | None]):
        from lerobot_policy_pi_rl.benchmark.commands import TITLES
        from lerobot_policy_pi_rl.benchmark.recipe import BenchmarkRecipe, check_tasks

        (self.task,) = check_tasks([task])
        self.recipe = BenchmarkRecipe().scaled(**budgets)
        self.pi_rl_stage = TITLES["pi_rl"]

    def describe(self) -> dict:
        return {"env": "metaworld", "task": self.task, **self.recipe.to_json()}

    def title(self) -> str:
        return f"MetaWorld {self.task}, the benchmark runner's recipe"

    def unit(self, directory: Path):
        from lerobot_policy_pi_rl.benchmark.commands import Unit

        return Unit(self.task, (self.task,), directory)

    def prepare(self, seed_dir: Path, seed: int) -> None:
        from lerobot_policy_pi_rl.benchmark.commands import TITLES, stage_command

        seed_dir.mkdir(parents=True, exist_ok=True)
        log = stage_log(seed_dir)
        for stage in ("demos", "sft", "eval_sft"):
            run_logged_stage(log, TITLES[stage], stage_command(stage, self.recipe, self.unit(seed_dir), seed),
                             env=quiet_datasets_env() if stage == "demos" else None)

    def cell(self, seed_dir: Path, cell_dir: Path, seed: int, ratio: float, loss_weight: float) -> None:
        from lerobot_policy_pi_rl.benchmark.commands import TITLES, eval_command, pi_rl_command, sft_command

        seed_unit, cell_unit = self.unit(seed_dir), self.unit(cell_dir)
        # The seed's SFT checkpoint, this cell's output directory.
        argv = [f"--output_dir={cell_unit.output('pi_rl')}" if a.startswith("--output_dir=") else a
                for a in pi_rl_command(self.recipe, seed_unit, seed)]
        repo_id = next(a.split("=", 1)[1] for a in sft_command(self.recipe, seed_unit, seed)
                       if a.startswith("--dataset.repo_id="))
        argv += pipeline.offline_flags(ratio, loss_weight, repo_id=repo_id, root=seed_unit.output("demos"))
        log = stage_log(cell_dir)
        run_logged_stage(log, TITLES["pi_rl"], argv)
        run_logged_stage(log, TITLES["eval_pi_rl"], eval_command(self.recipe, cell_unit, "eval_pi_rl"))


# ----------------------------------------------------------------------------------------------------------------
# The comparison
# ----------------------------------------------------------------------------------------------------------------


def seed_result(seed_dir: Path) -> dict | None:
    """The SFT evaluation of a seed, None until it is there."""
    evaluation = _read_json(seed_dir / "eval_sft.json")
    return evaluation if evaluation and "success_rate" in evaluation else None


def update_at(rows: list[dict], env_steps: int | None) -> int | None:
    """The PPO update of the metrics row whose `rollout/interaction_steps` is `env_steps` (where
    `env_steps_to_success` found a streak's start); None for None."""
    if env_steps is None:
        return None
    return next(int(row.get("update", i + 1)) for i, row in enumerate(rows)
                if int(row["rollout/interaction_steps"]) == env_steps)


def cell_result(cell_dir: Path, pi_rl_stage: str) -> dict:
    """One cell's numbers (`finished`: its evaluation is there). Env steps count every step the actors took,
    rows the learner dropped as stale included; updates count PPO updates, each on the same number of fresh rows."""
    evaluation = _read_json(cell_dir / "eval_pi_rl.json") or {}
    rows = read_metrics(cell_dir / "pi_rl" / "metrics.jsonl")
    timings = (_read_json(cell_dir / STAGES_FILE) or {}).get("timings_s", {})
    finished = "success_rate" in evaluation
    to_success, to_lower = env_steps_to_success(rows), env_steps_to_success(rows, success=LOWER_SUCCESS)
    return {
        "finished": finished,
        "env_steps_to_success": to_success,
        "env_steps_to_lower": to_lower,
        "updates_to_success": update_at(rows, to_success),
        "updates_to_lower": update_at(rows, to_lower),
        "stale_rows_dropped": int(rows[-1].get("rollout/dropped_stale", 0)) if rows else None,
        "pi_rl_env_steps": last_env_steps(rows),
        "pi_rl_updates": len(rows),
        "success_rate": evaluation.get("success_rate"),
        "success_ci95": evaluation.get("success_ci95"),
        "num_episodes": evaluation.get("num_episodes"),
        "pi_rl_wall_s": timings.get(pi_rl_stage),
    }


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def per_ratio(cells: list[dict], ratios: list[float], seeds: list[int]) -> list[dict]:
    """Per ratio, over `seeds`: how many cells finished and reached 90 % (and the lower bar), the mean env steps to
    each (only when every seed's cell finished and reached it: a mean over the seeds that did would flatter a ratio
    that failed on some), the speed-up against ratio 0 (its mean env steps over this ratio's; > 1: fewer env
    steps), the mean final success and the mean PI-RL wall time of the finished cells."""
    rows = []
    for ratio in ratios:
        mine = [c for c in cells if c["ratio"] == ratio and c["seed"] in seeds and c["finished"]]
        walls = [c["pi_rl_wall_s"] for c in mine if c["pi_rl_wall_s"] is not None]
        row = {"ratio": ratio, "seeds": len(seeds), "finished": len(mine)}
        for suffix, key in (("", "env_steps_to_success"), ("_lower", "env_steps_to_lower")):
            steps = [c[key] for c in mine if c.get(key) is not None]
            row[f"reached{suffix}"] = len(steps)
            row[f"mean_{key}"] = _mean(steps) if len(steps) == len(seeds) else None
        for key in ("updates_to_success", "updates_to_lower"):
            updates = [c[key] for c in mine if c.get(key) is not None]
            row[f"mean_{key}"] = _mean(updates) if len(updates) == len(seeds) else None
        row.update(mean_success_rate=_mean([c["success_rate"] for c in mine]), mean_pi_rl_wall_s=_mean(walls))
        rows.append(row)
    for suffix, key in (("", "env_steps_to_success"), ("_lower", "env_steps_to_lower")):
        baseline = next((r[f"mean_{key}"] for r in rows if r["ratio"] == 0), None)
        for row in rows:
            mean = row[f"mean_{key}"]
            row[f"speedup{suffix}_vs_ratio_0"] = baseline / mean if baseline is not None and mean else None
    return rows


def collect(out: Path, env, seeds: list[int], ratios: list[float], loss_weight: float, command: str) -> dict:
    cells = []
    sft = {}
    for seed in seeds:
        seed_dir = out / f"seed_{seed}"
        sft[str(seed)] = seed_result(seed_dir)
        cells += [{"ratio": ratio, "seed": seed, **cell_result(ratio_dir(seed_dir, ratio), env.pi_rl_stage)}
                  for ratio in ratios]
    return {
        "title": env.title(),
        "settings": {**env.describe(), "offline_loss_weight": loss_weight},
        "seeds": seeds,
        "ratios": ratios,
        "reached": {"success": REACHED_SUCCESS, "lower_success": LOWER_SUCCESS,
                    "consecutive_updates": REACHED_UPDATES},
        "command": command,
        "sft": sft,
        "cells": cells,
        "per_ratio": per_ratio(cells, ratios, seeds),
    }


def _steps(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f} min"


def _success(cell: dict) -> str:
    if not cell["finished"]:
        return "not finished"
    return f"{format_success(cell)} ({cell['num_episodes']} ep)"


def render_markdown(summary: dict) -> str:
    settings = summary["settings"]
    pct, low = f"{100 * REACHED_SUCCESS:.0f} %", f"{100 * LOWER_SUCCESS:.0f} %"
    budgets = ", ".join(f"{name} {settings[name]}" for name in BUDGETS)
    lines = [
        f"# Online/offline mixing vs plain PPO: {summary['title']}",
        "",
        f"Variant `{settings['variant']}`, {budgets}, offline loss weight {settings['offline_loss_weight']:g}; "
        f"seeds {', '.join(map(str, summary['seeds']))}. Ratio r: a share r of every PPO minibatch's rows are the "
        "seed's own demonstrations (the SFT dataset), with their flow-matching loss; ratio 0 is plain PPO. Every "
        "ratio starts from the same SFT checkpoint per seed.",
        f"Env steps to {pct}: training-episode success (the learner's `rollout/success_rate`, its mean over the "
        f"last {EPISODE_WINDOW} training episodes; not the evaluation) >= {pct} at {REACHED_UPDATES} consecutive PPO "
        f"updates with a full window; the env steps at the first of them. `-`: not reached. The same with {low}: a "
        "lower bar, for a speed-up figure where 90 % is not held. Env steps count every step the actors took, "
        "including rows the learner dropped as stale: actors keep stepping while the learner updates, so a slower "
        "update (the offline rows add work) costs env steps that train nothing. Updates to a bar count PPO updates "
        "(each on the same number of fresh rows) and do not depend on the learner's speed.",
        f"Final success: evaluation of the PI-RL policy, deterministic ODE sampling, {settings['eval_episodes']} "
        f"episodes from env seed {settings['eval_seed']}, 95 % Wilson interval.",
        "",
        f"| ratio | seed | SFT success | env steps to {pct} | env steps to {low} | updates to {pct} | "
        f"updates to {low} | PI-RL env steps | stale rows dropped | final success (95 % CI) | PI-RL wall time |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in summary["cells"]:
        sft = summary["sft"].get(str(cell["seed"]))
        lines.append(
            f"| {cell['ratio']:g} | {cell['seed']} | {format_success(sft) if sft else '-'} | "
            f"{_steps(cell['env_steps_to_success'])} | {_steps(cell.get('env_steps_to_lower'))} | "
            f"{_steps(cell.get('updates_to_success'))} | {_steps(cell.get('updates_to_lower'))} | "
            f"{_steps(cell['pi_rl_env_steps']) if cell['finished'] else '-'} | "
            f"{_steps(cell.get('stale_rows_dropped')) if cell['finished'] else '-'}"
            f" | {_success(cell)} | {_minutes(cell['pi_rl_wall_s']) if cell['finished'] else '-'} |"
        )
    lines += [
        "",
        f"Per ratio (mean env steps to {pct} only when every seed reached it; speed-up: ratio 0's mean over this "
        "ratio's, > 1 means fewer env steps):",
        "",
        f"| ratio | finished | reached {pct} | mean env steps to {pct} | speed-up vs ratio 0 | reached {low} | "
        f"mean env steps to {low} | speed-up to {low} | mean updates to {pct} | mean updates to {low} | "
        "mean final success | mean PI-RL wall time |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary["per_ratio"]:
        speedup, speedup_low = ("-" if row[key] is None else f"{row[key]:.2f}x"
                                for key in ("speedup_vs_ratio_0", "speedup_lower_vs_ratio_0"))
        success = "-" if row["mean_success_rate"] is None else f"{100 * row['mean_success_rate']:.1f} %"
        lines.append(
            f"| {row['ratio']:g} | {row['finished']}/{row['seeds']} | {row['reached']}/{row['seeds']} | "
            f"{_steps(row['mean_env_steps_to_success'])} | {speedup} | {row['reached_lower']}/{row['seeds']} | "
            f"{_steps(row['mean_env_steps_to_lower'])} | {speedup_low} | "
            f"{_steps(row.get('mean_updates_to_success'))} | {_steps(row.get('mean_updates_to_lower'))} | {success} | "
            f"{_minutes(row['mean_pi_rl_wall_s'])} |"
        )
    lines += ["", "```bash", summary["command"], "```", ""]
    return "\n".join(lines)


def comparison_paths(out: Path, index: int) -> tuple[Path, Path]:
    suffix = "" if index == 1 else f"_{index}"
    return out / f"comparison{suffix}.md", out / f"comparison{suffix}.json"


def next_free_index(out: Path) -> int:
    index = 1
    while any(p.exists() for p in comparison_paths(out, index)):
        index += 1
    return index


def write_comparison(out: Path, index: int, summary: dict) -> Path:
    markdown, data = comparison_paths(out, index)
    data.write_text(json.dumps(summary, indent=2))
    markdown.write_text(render_markdown(summary))
    return markdown


# ----------------------------------------------------------------------------------------------------------------
# Running it
# ----------------------------------------------------------------------------------------------------------------


def open_out(out: Path, settings: dict) -> None:
    """Start `out` (write its settings) or check that an existing one was started with the same settings."""
    path = out / SETTINGS_FILE
    if path.is_file():
        recorded = json.loads(path.read_text())
        diff = {k: (recorded.get(k), settings.get(k)) for k in sorted(set(recorded) | set(settings))
                if recorded.get(k) != settings.get(k)}
        if diff:
            listed = "; ".join(f"{k}: recorded {old!r}, now {new!r}" for k, (old, new) in diff.items())
            raise SystemExit(f"[mix] {out} was started with other settings ({listed}): resume with the recorded "
                             "values, or choose another --out")
        return
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"[mix] {out} exists and is not a comparison directory (no {SETTINGS_FILE}): choose another "
                         "--out")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2))


def prepare_seed(env, seed_dir: Path, seed: int, ratios: list[float], pi_rl_stage: str) -> None:
    """Demonstrations, SFT and its evaluation for `seed`, unless already there (the cells need all three: the
    demonstrations are their offline rows)."""
    if (seed_result(seed_dir) is not None and (seed_dir / "sft" / MODEL / "config.json").is_file()
            and (seed_dir / "demos" / "meta" / "info.json").is_file()):
        return
    trained = [r for r in ratios if cell_result(ratio_dir(seed_dir, r), pi_rl_stage)["finished"]]
    if trained:
        raise SystemExit(f"[mix] {seed_dir}: the SFT stages are incomplete but cells trained from them exist "
                         f"(ratios {', '.join(f'{r:g}' for r in trained)}); remove {seed_dir} to redo the seed")
    for leftover in ("demos", "sft", "eval_sft.json", STAGES_FILE):
        _remove(seed_dir / leftover)
    seed_dir.mkdir(parents=True, exist_ok=True)
    env.prepare(seed_dir, seed)


def run(env, out: Path, seeds: list[int], ratios: list[float], loss_weight: float, command: str) -> int:
    open_out(out, {**env.describe(), "offline_loss_weight": loss_weight})
    # Chosen once and written at once: this invocation updates its own comparison and never an earlier one.
    index = next_free_index(out)
    report = write_comparison(out, index, collect(out, env, seeds, ratios, loss_weight, command))
    start = time.perf_counter()
    failed: list[str] = []
    total = len(seeds) * len(ratios)
    done = 0
    for seed in seeds:
        seed_dir = out / f"seed_{seed}"
        try:
            prepare_seed(env, seed_dir, seed, ratios, env.pi_rl_stage)
        except SystemExit as err:
            print(err, file=sys.stderr, flush=True)
            failed += [f"seed {seed} ratio {r:g}" for r in ratios]
            done += len(ratios)
            continue
        for ratio in ratios:
            done += 1
            tag = f"cell {done}/{total} (seed {seed}, ratio {ratio:g})"
            cell_dir = ratio_dir(seed_dir, ratio)
            if cell_result(cell_dir, env.pi_rl_stage)["finished"]:
                print(f"[mix] {tag}: finished earlier, skipped", flush=True)
                continue
            print(f"[mix] {tag}: PI-RL, then its evaluation | {(time.perf_counter() - start) / 60:.1f} min so far",
                  flush=True)
            _remove(cell_dir)
            cell_dir.mkdir(parents=True)
            try:
                env.cell(seed_dir, cell_dir, seed, ratio, loss_weight)
            except SystemExit as err:
                print(err, file=sys.stderr, flush=True)
                failed.append(f"seed {seed} ratio {ratio:g}")
                continue
            result = cell_result(cell_dir, env.pi_rl_stage)
            report = write_comparison(out, index, collect(out, env, seeds, ratios, loss_weight, command))
            reached = result["env_steps_to_success"]
            print(f"[mix] {tag} done: env steps to {100 * REACHED_SUCCESS:.0f} % "
                  f"{'not reached in ' + str(result['pi_rl_env_steps']) if reached is None else reached}, final "
                  f"success {format_success(result)}, PI-RL {_minutes(result['pi_rl_wall_s'])}; {report}", flush=True)
    report = write_comparison(out, index, collect(out, env, seeds, ratios, loss_weight, command))
    print(f"[mix] comparison: {report}", flush=True)
    if failed:
        print(f"[mix] did not finish: {', '.join(failed)}. Rerun the same command to resume.", file=sys.stderr,
              flush=True)
        return 1
    return 0


def _ratio(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"ratio {text} must be in [0, 1) (0: plain PPO)")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench_offline_mixing.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("outputs/offline_mixing"))
    p.add_argument("--env", choices=("pickcube", "metaworld"), default="pickcube")
    p.add_argument("--task", default=None, help="the MetaWorld task (with --env metaworld), e.g. push-v3")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--ratios", type=_ratio, nargs="+", default=[0.0, 0.25, 0.5],
                   help="offline ratios in [0, 1); include 0 for the speed-up column")
    p.add_argument("--loss_weight", type=float, default=1.0, help="weight of the offline flow-matching loss")
    for name in BUDGETS:
        p.add_argument(f"--{name}", type=int, default=None, help="default: the recipe's")
    args = p.parse_args(argv)
    for name in BUDGETS:
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name}={getattr(args, name)} must be >= 1")
    if not args.loss_weight >= 0:
        p.error(f"--loss_weight={args.loss_weight} must be >= 0")
    for flag in ("seeds", "ratios"):
        values = getattr(args, flag)
        if len(set(values)) != len(values):
            p.error(f"--{flag} {' '.join(map(str, values))} repeats a value")
    if (args.env == "metaworld") != (args.task is not None):
        p.error(f"--task={args.task!r} goes with --env metaworld (and only with it); --env={args.env!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    budgets = {name: getattr(args, name) for name in BUDGETS}
    try:
        env = MetaWorld(args.task, budgets) if args.env == "metaworld" else PickCube(budgets)
    except ValueError as err:
        raise SystemExit(f"[mix] {err}") from err
    command = shlex.join(["python", "bench/bench_offline_mixing.py", *argv])
    return run(env, args.out, list(args.seeds), list(args.ratios), args.loss_weight, command)


if __name__ == "__main__":
    sys.exit(main())
