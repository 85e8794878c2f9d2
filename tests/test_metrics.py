"""Learner metrics: stable names, the metrics.jsonl writer, the per-update console line."""

from __future__ import annotations

import json

from lerobot.rl.algorithms.configs import TrainingStats

from lerobot_policy_pi_rl.runtime.metrics import (
    Counters,
    DropCounts,
    EpisodeWindow,
    MetricsFile,
    console_line,
    training_log,
    update_log,
)


def stats() -> TrainingStats:
    return TrainingStats(
        losses={"policy": -0.5, "value": 2.0, "entropy": 1.0, "total": 1.5},
        grad_norms={"actor": 0.75, "critic": 3.0},
        extra={"ppo/approx_kl": 0.01, "ppo/clip_fraction": 0.125, "numerics/steps_skipped": 0.0},
    )


def test_training_stats_are_logged_under_stable_namespaces():
    log = training_log(stats())
    assert log == {
        "loss/policy": -0.5, "loss/value": 2.0, "loss/entropy": 1.0, "loss/total": 1.5,
        "grad/actor": 0.75, "grad/critic": 3.0,
        "ppo/approx_kl": 0.01, "ppo/clip_fraction": 0.125, "numerics/steps_skipped": 0.0,
    }


def test_episode_window_keeps_the_last_100_episodes():
    window = EpisodeWindow()
    assert window.as_log_dict()["rollout/success_rate"] != window.as_log_dict()["rollout/success_rate"]  # NaN
    assert window.as_log_dict()["rollout/window_episodes"] == 0.0
    for i in range(150):
        if i == 40:
            assert window.as_log_dict()["rollout/window_episodes"] == 40.0
        window.add({"Episodic reward": float(i), "Success": float(i % 2), "Episode length": 10,
                    "Intervention rate": 0.0})
    log = window.as_log_dict()
    assert log["rollout/episode_return"] == sum(range(50, 150)) / 100
    assert log["rollout/success_rate"] == 0.5 and log["rollout/episode_length"] == 10.0
    assert log["rollout/window_episodes"] == 100.0


def test_update_log_and_console_line():
    drops = DropCounts(nonfinite=2, stale=3, foreign_session=1, rejected=4)
    log = update_log(stats=stats(), episodes=EpisodeWindow(), drops=drops,
                     counters=Counters(updates=3, interaction_steps=1200, chunks_received=300), rows=256,
                     policy_version=3, collect_s=1.5, total_s=2.0)
    assert log["rollout/rows"] == 256 and log["rollout/interaction_steps"] == 1200
    assert log["rollout/dropped_nonfinite"] == 2 and log["rollout/dropped_stale"] == 3
    assert log["perf/update_s"] == 0.5 and log["perf/rows_per_s"] == 128 and log["policy/version"] == 3
    line = console_line(log, update=3, num_updates=4, drops=drops)
    assert line.startswith("[LEARNER] update 3/4 | version 3 | rows 256 (dropped: stale 3, nan 2, foreign 5)")
    assert "loss/policy -0.5000" in line and "approx_kl 0.0100" in line and "collect 1.50s update 0.50s" in line


def test_metrics_file_appends_strict_json_lines_without_nan(tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"
    metrics = MetricsFile(path)
    metrics.append({"update": 1, "rollout/success_rate": float("nan"), "loss/policy": 0.25})
    metrics.append({"update": 2, "rollout/success_rate": 0.5})
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == [{"update": 1, "loss/policy": 0.25}, {"update": 2, "rollout/success_rate": 0.5}]


def test_episode_window_reports_each_task_of_a_multi_task_suite():
    window = EpisodeWindow()
    for task, success in [("push-v3/0", 1.0), ("push-v3/0", 0.0), ("drawer-open-v3/0", 1.0)]:
        window.add({"Episodic reward": success, "Success": success, "Episode length": 10, "Task": task})
    log = window.as_log_dict()
    assert log["rollout/success_rate"] == 2 / 3
    assert log["rollout/success_rate/push-v3/0"] == 0.5 and log["rollout/success_rate/drawer-open-v3/0"] == 1.0
    assert log["rollout/window_episodes/push-v3/0"] == 2.0 and log["rollout/window_episodes"] == 3.0
    assert log["rollout/episode_return/drawer-open-v3/0"] == 1.0
    single = EpisodeWindow()
    single.add({"Success": 1.0, "Task": "pick up the cube"})
    assert not any(k.count("/") > 1 for k in single.as_log_dict())  # one task: no per-task copies
