"""Training metrics of the RL runtime: what the learner aggregates, logs and writes per update."""

from __future__ import annotations

from collections import deque
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
