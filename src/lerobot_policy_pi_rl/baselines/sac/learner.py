"""`lerobot-pi-rl-learner --algorithm.type=sac`: LeRobot's own SAC learner, given this package's config."""

from __future__ import annotations


def run(cfg) -> int:
    """LeRobot's `lerobot.rl.learner.train`, unchanged. It never ends on its own: stop it with SIGTERM/SIGINT
    (`lerobot-pi-rl-train` does once its actors have spent their `policy.online_steps`)."""
    from lerobot.rl.learner import train
    from lerobot.utils.process import ensure_multiprocessing_start_method

    from ...runtime.console import demote_detail

    demote_detail()  # its per-optimization-step line (its progress line comes every `log_freq` steps)

    if cfg.policy.concurrency.learner != "threads":  # what LeRobot's `train_cli` does before `train`
        ensure_multiprocessing_start_method(cfg.policy.concurrency.multiprocessing_context)

    train(cfg, job_name=cfg.job_name)
    return 0
