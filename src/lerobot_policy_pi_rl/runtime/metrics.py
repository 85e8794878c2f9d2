"""Training metrics of the RL runtime: what the learner aggregates, logs and writes per update.

Every metric lives under a stable namespace, the same in `metrics.jsonl`, W&B (where LeRobot's logger prefixes
`train/`) and the docs: `loss/...`, `grad/...`, `ppo/...`, `flow/...`, `samples/...`, `numerics/...`,
`rollout/...`, `perf/...`, `policy/version`.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter, deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from lerobot.rl.algorithms.configs import TrainingStats


# The training-episode metrics (`rollout/success_rate`, ...) are moving means over this many recent episodes.
EPISODE_WINDOW = 100


@dataclass
class EpisodeWindow:
    """Recent episode summaries from the actors' interaction messages (console and W&B): over all tasks, and per
    task (`Task` in the message) when episodes come from more than one task."""

    returns: deque = field(default_factory=lambda: deque(maxlen=EPISODE_WINDOW))
    successes: deque = field(default_factory=lambda: deque(maxlen=EPISODE_WINDOW))
    lengths: deque = field(default_factory=lambda: deque(maxlen=EPISODE_WINDOW))
    interventions: deque = field(default_factory=lambda: deque(maxlen=EPISODE_WINDOW))
    #: Task label -> its own window (multi-task suites).
    per_task: dict[str, EpisodeWindow] = field(default_factory=dict)

    def add(self, message: dict) -> None:
        self.returns.append(float(message.get("Episodic reward", 0.0)))
        self.successes.append(float(message.get("Success", 0.0)))
        self.lengths.append(float(message.get("Episode length", 0.0)))
        self.interventions.append(float(message.get("Intervention rate", 0.0)))
        task = message.get("Task")
        if isinstance(task, str) and task:
            self.per_task.setdefault(task, EpisodeWindow()).add({k: v for k, v in message.items() if k != "Task"})

    def as_log_dict(self) -> dict[str, float]:
        def mean(d: deque) -> float:
            return sum(d) / len(d) if d else float("nan")

        log = {
            "rollout/episode_return": mean(self.returns),
            "rollout/success_rate": mean(self.successes),
            "rollout/episode_length": mean(self.lengths),
            "rollout/intervention_rate": mean(self.interventions),
            # How many episodes the means cover: the first episodes to finish are the short ones, often the
            # successes, so a window that is not full yet reads high.
            "rollout/window_episodes": float(len(self.successes)),
        }
        if len(self.per_task) > 1:
            for task, window in sorted(self.per_task.items()):
                log[f"rollout/success_rate/{task}"] = mean(window.successes)
                log[f"rollout/window_episodes/{task}"] = float(len(window.successes))
                log[f"rollout/episode_return/{task}"] = mean(window.returns)
        return log



def task_label(suite: str, task_id: int) -> str:
    """The name a multi-task run's stream carries into the per-task metrics (`rollout/success_rate/<label>`):
    LeRobot's `make_env` suite and task id, e.g. `libero_10/3`, or `push-v3/0` for a MetaWorld task."""
    return f"{suite}/{task_id}"


class TimeSplit:
    """Wall time of a loop per named stage (`with split("env"): ...`); what no stage covers is `other`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.started = time.perf_counter()

    @contextmanager
    def __call__(self, stage: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0

    def summary(self) -> dict[str, float]:
        total = time.perf_counter() - self.started
        return {**self.seconds, "other": max(total - sum(self.seconds.values()), 0.0), "total": total}

    @staticmethod
    def format(summary: dict[str, float]) -> str:
        total = max(summary.get("total", 0.0), 1e-9)
        parts = [f"{k} {v:.0f} s ({100 * v / total:.0f} %)" for k, v in summary.items() if k != "total"]
        return f"{', '.join(parts)} of {total:.0f} s"

@dataclass
class Counters:
    """The learner's progress, saved with every checkpoint."""

    updates: int = 0
    interaction_steps: int = 0
    chunks_received: int = 0
    episodes: int = 0


#: Why a whole actor message was rejected on arrival (`rollout/rejected_messages/<kind>` counts messages):
#: `oversized` (over `max_message_bytes`, checked before decoding), `undecodable` (bytes that are not a
#: `torch.save` payload safe to load), `not_transitions` (decodes to something other than a list of transitions),
#: `missing_field`, `extra_field`, `wrong_dtype`, `wrong_shape` (a field or observation not as the schema and this
#: learner's policy say).
REJECTION_KINDS = ("oversized", "undecodable", "not_transitions", "missing_field", "extra_field", "wrong_dtype",
                   "wrong_shape")


@dataclass
class DropCounts:
    """Rows the learner did not train on, by reason (logged under rollout/dropped_*), and whole messages it
    rejected, by kind (rollout/rejected_messages/<kind>)."""

    nonfinite: int = 0
    stale: int = 0
    foreign_session: int = 0
    #: Rows sampled by a policy version this learner has not published yet (a sender out of step with it).
    future_version: int = 0
    #: Rows of rejected messages (those that decoded into a list; `rollout/rejected_not_pi_rl`).
    rejected: int = 0
    #: GRPO: rows without a group id, or of a group that lost rows (it can never be scored).
    ungrouped: int = 0
    #: Non-finite rows by the first offending part (`reward`, a field key, `state.<key>`, `next_state.<key>`).
    by_field: Counter = field(default_factory=Counter)
    #: Rejected messages by kind (one of `REJECTION_KINDS`).
    rejected_messages: Counter = field(default_factory=Counter)

    def as_log_dict(self) -> dict[str, float]:
        return {
            "rollout/dropped_nonfinite": float(self.nonfinite),
            "rollout/dropped_stale": float(self.stale),
            "rollout/dropped_foreign_session": float(self.foreign_session),
            "rollout/dropped_future_version": float(self.future_version),
            "rollout/rejected_not_pi_rl": float(self.rejected),
            "rollout/dropped_ungrouped": float(self.ungrouped),
            **{f"rollout/rejected_messages/{kind}": float(self.rejected_messages[kind]) for kind in REJECTION_KINDS},
        }


def training_log(stats: TrainingStats) -> dict[str, float]:
    """An update's `TrainingStats` under the stable names: losses as `loss/<name>`, gradient norms as
    `grad/<group>`, the diagnostics (already namespaced) as they are."""
    return {
        **{f"loss/{name}": v for name, v in stats.losses.items()},
        **{f"grad/{name}": v for name, v in stats.grad_norms.items()},
        **stats.extra,
    }


def update_log(
    *,
    stats: TrainingStats,
    episodes: EpisodeWindow,
    drops: DropCounts,
    counters: Counters,
    rows: int,
    policy_version: int,
    collect_s: float,
    total_s: float,
) -> dict[str, float]:
    """Everything logged for one update (W&B, `metrics.jsonl`, the console line)."""
    return {
        **training_log(stats),
        **episodes.as_log_dict(),
        **drops.as_log_dict(),
        "rollout/rows": float(rows),
        "rollout/chunks_received": float(counters.chunks_received),
        "rollout/interaction_steps": float(counters.interaction_steps),
        "perf/collect_s": collect_s,
        "perf/update_s": total_s - collect_s,
        "perf/rows_per_s": rows / max(total_s, 1e-9),
        "policy/version": float(policy_version),
    }


class MetricsFile:
    """`metrics.jsonl`: one JSON line per update, appended across resumes; learning curves and reports are drawn
    from it. NaN values (e.g. no finished episode yet) are left out, so every line is strict JSON."""

    def __init__(self, path: Path | str):
        self.path = Path(path)

    def append(self, record: dict[str, float]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps({k: v for k, v in record.items() if not _is_nan(v)}) + "\n")


def _is_nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def console_line(log: dict[str, float], *, update: int, num_updates: int, drops: DropCounts) -> str:
    """The one progress line per update."""
    nan = float("nan")
    return (
        f"[LEARNER] update {update}/{num_updates} | version {int(log['policy/version'])} | "
        f"rows {int(log['rollout/rows'])} (dropped: stale {drops.stale}, nan {drops.nonfinite}, "
        f"foreign {drops.rejected + drops.foreign_session}) | env steps {int(log['rollout/interaction_steps'])} | "
        f"return {log['rollout/episode_return']:.3f} | success {log['rollout/success_rate']:.2f} | "
        f"ep_len {log['rollout/episode_length']:.1f} | interv {log['rollout/intervention_rate']:.2f} | "
        f"loss/policy {log.get('loss/policy', nan):.4f} | loss/value {log.get('loss/value', nan):.4f} | "
        f"approx_kl {log.get('ppo/approx_kl', nan):.4f} | clip {log.get('ppo/clip_fraction', nan):.3f} | "
        f"collect {log['perf/collect_s']:.2f}s update {log['perf/update_s']:.2f}s"
    )
