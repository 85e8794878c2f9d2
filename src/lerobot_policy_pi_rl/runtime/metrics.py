"""Training metrics of the RL runtime: what the learner aggregates, logs and writes per update."""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field


@dataclass
class EpisodeWindow:
    """Recent episode summaries from the actors' interaction messages (console and W&B)."""

    returns: deque = field(default_factory=lambda: deque(maxlen=100))
    successes: deque = field(default_factory=lambda: deque(maxlen=100))
    lengths: deque = field(default_factory=lambda: deque(maxlen=100))
    interventions: deque = field(default_factory=lambda: deque(maxlen=100))

    def add(self, message: dict) -> None:
        self.returns.append(float(message.get("Episodic reward", 0.0)))
        self.successes.append(float(message.get("Success", 0.0)))
        self.lengths.append(float(message.get("Episode length", 0.0)))
        self.interventions.append(float(message.get("Intervention rate", 0.0)))

    def as_log_dict(self) -> dict[str, float]:
        def mean(d: deque) -> float:
            return sum(d) / len(d) if d else float("nan")

        return {
            "rollout/episode_return": mean(self.returns),
            "rollout/success_rate": mean(self.successes),
            "rollout/episode_length": mean(self.lengths),
            "rollout/intervention_rate": mean(self.interventions),
        }


@dataclass
class Counters:
    """The learner's progress, saved with every checkpoint."""

    updates: int = 0
    interaction_steps: int = 0
    chunks_received: int = 0
    episodes: int = 0


@dataclass
class DropCounts:
    """Rows the learner did not train on, by reason (logged under rollout/dropped_*)."""

    nonfinite: int = 0
    stale: int = 0
    foreign_session: int = 0
    rejected: int = 0
    #: Non-finite rows by the first offending part (`reward`, a field key, `state.<key>`, `next_state.<key>`).
    by_field: Counter = field(default_factory=Counter)

    def as_log_dict(self) -> dict[str, float]:
        return {
            "rollout/dropped_nonfinite": float(self.nonfinite),
            "rollout/dropped_stale": float(self.stale),
            "rollout/dropped_foreign_session": float(self.foreign_session),
            "rollout/rejected_not_pi_rl": float(self.rejected),
        }
