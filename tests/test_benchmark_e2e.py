"""The whole benchmark path with real stages and tiny budgets: MetaWorld's scripted experts -> `lerobot-train` ->
evaluation -> `lerobot-pi-rl-train` (learner + actors over gRPC) -> evaluation -> report, for one task and for one
multi-task policy, then a resume that redoes nothing and keeps the first report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lerobot_policy_pi_rl.demo.stages import stage_env

pytestmark = pytest.mark.slow

TINY = ["--demo_episodes", "2", "--sft_steps", "20", "--rl_updates", "2", "--eval_episodes", "4"]


def _benchmark(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lerobot_policy_pi_rl.benchmark", *args, *TINY],
        env=stage_env(), capture_output=True, text=True, timeout=600, check=False,
    )


def _check_task(report: dict, unit_dir: Path, task: str) -> None:
    row = report["per_task"][task]
    for stage, key in (("eval_sft", "sft"), ("eval_pi_rl", "pi_rl")):
        evaluation = json.loads((unit_dir / f"{stage}.json").read_text())
        measured = evaluation["per_task"][task]
        assert measured["num_episodes"] == 4
        # The report quotes the evaluation's own numbers for the task, with its Wilson interval.
        assert row[key]["success_rate"] == measured["success_rate"]
        assert row[key]["success_ci95"] == pytest.approx(measured["success_ci95"])
    assert row["change_points"] == pytest.approx(100 * (row["pi_rl"]["success_rate"] - row["sft"]["success_rate"]))


def test_one_task_end_to_end_then_resume_keeps_the_report(tmp_path):
    run_dir = tmp_path / "bench"
    done = _benchmark("--tasks", "push-v3", "--run_dir", str(run_dir))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    unit_dir = run_dir / "tasks" / "push-v3"
    report = json.loads((run_dir / "report.json").read_text())
    assert report["mode"] == "single-task" and report["tasks"] == ["push-v3"]
    assert report["default_recipe"] is False and set(report["recipe_changes"]) == {
        "demo_episodes", "sft_steps", "rl_updates", "eval_episodes"}
    _check_task(report, unit_dir, "push-v3")
    # Two PPO updates of 256 chunk steps of 5 env steps each (at least: envs finish their chunks).
    assert report["aggregate"]["pi_rl_env_steps"] >= 2 * 256 * 5
    assert report["units"]["push-v3"]["finished"] is True
    markdown = (run_dir / "report.md").read_text()
    assert "push-v3" in markdown and "Wilson" in markdown and "lerobot-pi-rl-train" in markdown
    assert (run_dir / "learning_curves.png").stat().st_size > 0

    first_report = (run_dir / "report.md").read_bytes()
    again = _benchmark("--tasks", "push-v3", "--run_dir", str(run_dir))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "finished earlier, skipped" in again.stdout
    assert "lerobot-train" not in again.stdout  # no stage ran again
    assert (run_dir / "report.md").read_bytes() == first_report
    assert json.loads((run_dir / "report_2.json").read_text())["per_task"] == report["per_task"]


def test_one_policy_over_two_tasks_is_evaluated_per_task(tmp_path):
    run_dir = tmp_path / "bench_mt"
    done = _benchmark("--tasks", "push-v3,drawer-open-v3", "--multitask", "--run_dir", str(run_dir))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    unit_dir = run_dir / "multitask"
    report = json.loads((run_dir / "report.json").read_text())
    assert report["mode"] == "multi-task"
    for task in ("push-v3", "drawer-open-v3"):
        _check_task(report, unit_dir, task)
    # One policy: the task's one-hot rides in the state (39 + 50 values) everywhere.
    config = json.loads((unit_dir / "pi_rl" / "checkpoints" / "last" / "pretrained_model" / "config.json").read_text())
    assert config["input_features"]["observation.state"]["shape"] == [89]
    recording = json.loads((unit_dir / "demos" / "recording_report.json").read_text())
    assert sorted(recording["per_task"]) == ["drawer-open-v3", "push-v3"]
    # Training-episode success per task, from the learner's own per-task windows.
    for task in ("push-v3", "drawer-open-v3"):
        assert report["per_task"][task]["training_episode_success"]["updates_with_episodes"] > 0, report["per_task"][task]
