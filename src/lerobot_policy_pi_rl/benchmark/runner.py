"""`lerobot-pi-rl-benchmark`: demonstrations -> SFT -> evaluation -> PI-RL -> evaluation on MetaWorld tasks with one
recipe for every task, and one report.

    lerobot-pi-rl-benchmark --task_set dev --run_dir outputs/bench_dev
    lerobot-pi-rl-benchmark --tasks push-v3,pick-place-v3 --run_dir outputs/bench_two --seed 1
    lerobot-pi-rl-benchmark --task_set mt10 --multitask --run_dir outputs/bench_mt10
    lerobot-pi-rl-benchmark --report_only --run_dir outputs/bench_dev

Single-task mode trains one policy per task under `<run_dir>/tasks/<task>/`; `--multitask` trains ONE policy on
all the tasks (their demonstrations in one dataset, the task's one-hot in the state) under `<run_dir>/multitask/`
and evaluates it per task. `--demo_episodes`, `--sft_steps`, `--rl_updates` and `--eval_episodes` scale the
whole recipe (every task alike) for smoke runs; the report says the run is not the benchmark recipe.

Resume: the same command on the same run directory skips finished tasks and finished stages (a stage is finished
when it exited successfully and its output is still there) and redoes a task from its first unfinished stage; a
run directory started with another recipe, seed or task list is refused. A failed task does not stop the others;
the command then exits non-zero and says how to resume.

The report (`report.md`, `report.json`, `learning_curves.png`) is written after every task and at the end. An
existing report is never overwritten: a resumed run, or `--report_only`, writes the next free name
(`report_2.md`, ...).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ..demo.stages import StageLog, quiet_datasets_env, run_logged_stage
from .commands import STAGES, TITLES, Unit, stage_command
from .recipe import SCALE_FIELDS, TASK_SETS, BenchmarkRecipe, check_tasks, task_set
from .report import next_free_index, one_line_result, write_report
from .rundir import Benchmark, UnitRecord, first_unfinished, open_run_dir

PROG = "lerobot-pi-rl-benchmark"

StageRunner = Callable[..., None]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def run_unit(bench: Benchmark, unit: Unit, record: UnitRecord, first: int, label: Callable[[], str],
             run: StageRunner = run_logged_stage) -> None:
    """Run the unit's stages from index `first` on, recording each one as it ends and marking it finished after it
    succeeded. A stage's leftover output from an earlier attempt is removed first (the recording and training
    commands refuse an existing output directory)."""
    todo = STAGES[first:]
    record.forget(todo)
    record.save(unit)
    for stage in todo:
        _remove(unit.output(stage))

        def save(stage: str = stage) -> None:
            record.commands[stage] = log.commands[-1]
            record.timings_s[stage] = log.timings[TITLES[stage]]
            record.save(unit)

        log = StageLog(commands=[], timings={}, save=save, label=label())
        run(log, TITLES[stage], stage_command(stage, bench.recipe, unit, bench.seed),
            env=quiet_datasets_env() if stage == "demos" else None)
        record.finished.append(stage)
        record.save(unit)


def run_benchmark(bench: Benchmark, run: StageRunner = run_logged_stage) -> int:
    """Every unit in order (finished ones skipped), the report after each one that finished and at the end; the
    exit code (1 when a unit failed)."""
    open_run_dir(bench)
    start = time.perf_counter()
    # Chosen once and written at once (so that a `--report_only` meanwhile takes the next name): this invocation
    # updates its own report and never touches an earlier one.
    index = next_free_index(bench.run_dir)
    write_report(bench.run_dir, index)
    all_units = bench.units()
    failed: list[str] = []
    print(f"[bench] run directory {bench.run_dir}: {len(bench.tasks)} task(s), "
          f"{'one multi-task policy' if bench.multitask else 'one policy per task'}, seed {bench.seed}"
          + (f"; recipe changed: {', '.join(bench.recipe_changes())}" if bench.recipe_changes() else ""), flush=True)
    for i, unit in enumerate(all_units, start=1):
        tag = f"{i}/{len(all_units)} {unit.name}"
        record = UnitRecord.load(unit)
        first = first_unfinished(unit, record)
        if first is None:
            print(f"[bench] {tag}: finished earlier, skipped", flush=True)
            continue
        if first > 0 or record.commands:
            print(f"[bench] {tag}: resuming at stage '{TITLES[STAGES[first]]}'", flush=True)
        try:
            run_unit(bench, unit, record, first,
                     label=lambda tag=tag: f"bench {tag} | {(time.perf_counter() - start) / 60:.1f} min", run=run)
        except SystemExit as err:
            print(err, file=sys.stderr, flush=True)
            failed.append(unit.name)
            continue
        report = write_report(bench.run_dir, index)
        print(f"[bench] {tag} done after {(time.perf_counter() - start) / 60:.1f} min: "
              f"{one_line_result(unit)}; report {report}", flush=True)
    report = write_report(bench.run_dir, index)
    print(f"[bench] report: {report}", flush=True)
    if failed:
        print(f"[bench] did not finish: {', '.join(failed)}. Rerun the same command to resume them from the stage "
              "that failed.", file=sys.stderr, flush=True)
        return 1
    return 0


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    defaults = BenchmarkRecipe()
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    tasks = p.add_mutually_exclusive_group()
    tasks.add_argument("--tasks", help="comma-separated MetaWorld v3 task names, e.g. push-v3,pick-place-v3")
    tasks.add_argument("--task_set", choices=TASK_SETS,
                       help="dev: push, pick-place, door-open, drawer-open, button-press-topdown (v3); "
                            "mt10: MetaWorld's MT10 tasks")
    p.add_argument("--multitask", action="store_true", help="train one policy on all the tasks (one-hot task id)")
    p.add_argument("--run_dir", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0, help="seed of the demonstrations, SFT and PI-RL")
    for name in SCALE_FIELDS:
        p.add_argument(f"--{name}", type=int, default=None,
                       help=f"change the recipe's {name} (default {getattr(defaults, name)}) for every task; the "
                            "report labels the run as not the benchmark recipe")
    p.add_argument("--report_only", action="store_true", help="re-render the report of --run_dir (next free name)")
    return p.parse_args(argv), p


def build(args: argparse.Namespace, p: argparse.ArgumentParser) -> Benchmark:
    """The benchmark the command line asks for; bad input is a usage error naming it."""
    if not (args.tasks or args.task_set):
        p.error("give --tasks or --task_set")
    names = task_set(args.task_set) if args.task_set else [t.strip() for t in args.tasks.split(",") if t.strip()]
    try:
        recipe = BenchmarkRecipe().scaled(**{name: getattr(args, name) for name in SCALE_FIELDS})
        tasks = check_tasks(list(names))
    except ValueError as err:
        p.error(str(err))
    return Benchmark(run_dir=args.run_dir, recipe=recipe, tasks=tasks, multitask=args.multitask, seed=args.seed)


def main(argv: list[str] | None = None) -> int:
    args, p = parse_args(argv)
    if args.report_only:
        given = [f"--{n}" for n in ("tasks", "task_set", *SCALE_FIELDS) if getattr(args, n) is not None]
        given += ["--multitask"] if args.multitask else []
        if given:
            p.error(f"--report_only re-renders what the run directory recorded; drop {' '.join(given)}")
        Benchmark.load(args.run_dir)  # a clear error for a directory that is not a benchmark run
        print(f"[bench] report: {write_report(args.run_dir, next_free_index(args.run_dir))}")
        return 0
    return run_benchmark(build(args, p))
