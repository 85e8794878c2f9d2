"""A benchmark run directory: what it is (`benchmark.json`: recipe, tasks, mode, seed) and how far each unit got
(`<unit>/stages.json`: each stage's command and wall time, and the stages that finished).

    <run_dir>/benchmark.json
    <run_dir>/tasks/<task>/{stages.json, demos/, sft/, eval_sft.json, pi_rl/, eval_pi_rl.json}   (single-task)
    <run_dir>/multitask/{...the same...}                                                         (multi-task)
    <run_dir>/report.md, report.json, learning_curves.png (then report_2.md, ...)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from .commands import MODEL, STAGES, Unit, units
from .recipe import BenchmarkRecipe

IDENTITY_FILE = "benchmark.json"
UNIT_FILE = "stages.json"


@dataclass(frozen=True)
class Benchmark:
    """What a run directory is: the recipe, the tasks, the mode and the seed. A resumed run must match it."""

    run_dir: Path
    recipe: BenchmarkRecipe
    tasks: tuple[str, ...]
    multitask: bool = False
    seed: int = 0

    def units(self) -> list[Unit]:
        return units(self.run_dir, self.tasks, multitask=self.multitask)

    def recipe_changes(self) -> dict[str, tuple[object, object]]:
        """Field -> (default value, value used) where this run's recipe is not the default one."""
        return BenchmarkRecipe().differences(self.recipe)

    def to_json(self) -> dict:
        return {"recipe": self.recipe.to_json(), "tasks": list(self.tasks), "multitask": self.multitask,
                "seed": self.seed,
                "recipe_changes": {k: {"default": d, "used": u} for k, (d, u) in self.recipe_changes().items()}}

    @classmethod
    def load(cls, run_dir: Path) -> Benchmark:
        path = Path(run_dir) / IDENTITY_FILE
        if not path.is_file():
            raise SystemExit(f"[bench] {path} not found: is {run_dir} a benchmark run directory?")
        record = json.loads(path.read_text())
        return cls(run_dir=Path(run_dir), recipe=BenchmarkRecipe.from_json(record["recipe"]),
                   tasks=tuple(record["tasks"]), multitask=bool(record["multitask"]), seed=int(record["seed"]))

    def differences(self, other: Benchmark) -> dict[str, tuple[object, object]]:
        """Field -> (this value, the other's) over the recipe fields, the tasks, the mode and the seed."""
        diff = self.recipe.differences(other.recipe)
        for name in ("tasks", "multitask", "seed"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine != theirs:
                diff[name] = (list(mine) if name == "tasks" else mine, list(theirs) if name == "tasks" else theirs)
        return diff


def open_run_dir(bench: Benchmark) -> None:
    """Start a run directory (write `benchmark.json`) or check that an existing one was run with the same recipe,
    tasks, mode and seed."""
    path = bench.run_dir / IDENTITY_FILE
    if path.is_file():
        diff = Benchmark.load(bench.run_dir).differences(bench)
        if diff:
            listed = "; ".join(f"{name}: recorded {old!r}, now {new!r}" for name, (old, new) in diff.items())
            raise SystemExit(
                f"[bench] {bench.run_dir} was started with a different recipe or task list ({listed}). Resume with "
                "the recorded values, or choose another --run_dir."
            )
        return
    if bench.run_dir.exists() and any(bench.run_dir.iterdir()):
        raise SystemExit(f"[bench] {bench.run_dir} exists and is not a benchmark run directory (no {IDENTITY_FILE}):"
                         " choose another --run_dir")
    bench.run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(bench.to_json(), indent=2))


@dataclass
class UnitRecord:
    """`<unit>/stages.json`: each stage's command and wall time (its latest attempt) and the stages that finished
    (exited successfully), in order."""

    commands: dict[str, str] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    finished: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, unit: Unit) -> UnitRecord:
        path = unit.directory / UNIT_FILE
        if not path.is_file():
            return cls()
        record = json.loads(path.read_text())
        return cls(**{f.name: record[f.name] for f in fields(cls)})

    def save(self, unit: Unit) -> None:
        unit.directory.mkdir(parents=True, exist_ok=True)
        (unit.directory / UNIT_FILE).write_text(
            json.dumps({f.name: getattr(self, f.name) for f in fields(self)}, indent=2))

    def forget(self, stages: tuple[str, ...]) -> None:
        for stage in stages:
            self.commands.pop(stage, None)
            self.timings_s.pop(stage, None)
        self.finished = [s for s in self.finished if s not in stages]


def output_complete(unit: Unit, stage: str) -> bool:
    """Whether the output a finished stage wrote is still there (a trained model, a readable evaluation)."""
    out = unit.output(stage)
    if stage in ("sft", "pi_rl"):
        return (out / MODEL / "config.json").is_file()
    if stage.startswith("eval_"):
        try:
            return "success_rate" in json.loads(out.read_text())
        except (OSError, ValueError):
            return False
    return out.is_dir()


def first_unfinished(unit: Unit, record: UnitRecord) -> int | None:
    """Index of the first stage to (re)do, None when all are finished; every later stage is redone after it."""
    for i, stage in enumerate(STAGES):
        if stage not in record.finished or not output_complete(unit, stage):
            return i
    return None
