"""Console and log files of this package's processes.

The console carries what a person follows a run by: one line per PPO update and per checkpoint, the start and
end of each process, and every warning. Per-event detail is logged at DEBUG: each weight version an actor
applies, LeRobot's transport streams opening and closing, gym_hil's "Reset delay of 0 seconds" on every env
reset, the stock SAC learner's per-step loop frequency. The log file `<output_dir>/logs/<role>_<job_name>.log`
keeps all of it; `PI_RL_LOG_LEVEL=DEBUG` puts it on the console too (the variable takes DEBUG, INFO, WARNING or
ERROR and is read by every entry point, so one setting covers a launcher and all its processes).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

LOG_LEVEL_ENV = "PI_RL_LOG_LEVEL"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

# Third-party INFO records that are detail, not progress: (source file, message prefix; "" for every message).
# Matched by source file because LeRobot and gym_hil log through the root logger (`logging.info`), so the
# logger name does not tell them apart.
DETAIL = (
    ("gym_hil/wrappers/hil_wrappers.py", "Reset delay of"),  # every env reset
    ("lerobot/transport/utils.py", ""),  # every gRPC stream starting and stopping
    ("lerobot/rl/learner_service.py", ""),  # every actor stream the learner serves
    ("lerobot/rl/actor.py", ""),  # the actor's transport workers; "Load new parameters" every SAC episode
    ("lerobot/rl/learner.py", "[LEARNER] Optimization frequency loop"),  # every SAC optimization step
    ("OpenGL/acceleratesupport.py", ""),  # "No OpenGL_accelerate module loaded"
)
# Loggers those records arrive on (a logger's filters see only the records logged on that very logger).
DETAIL_LOGGERS = ("", "OpenGL.acceleratesupport")


def console_level() -> int:
    """The console's log level, from `PI_RL_LOG_LEVEL` (default INFO)."""
    value = os.environ.get(LOG_LEVEL_ENV, "INFO")
    if value.strip().upper() not in LEVELS:
        raise ValueError(f"{LOG_LEVEL_ENV}={value!r} is not a log level; allowed: {', '.join(LEVELS)}")
    return getattr(logging, value.strip().upper())


class DemoteDetail(logging.Filter):
    """Re-labels the `DETAIL` records as DEBUG, so that an INFO console drops them and a DEBUG log file keeps them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and is_detail(record):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


def is_detail(record: logging.LogRecord) -> bool:
    path = record.pathname.replace(os.sep, "/")
    return any(path.endswith(source) and record.getMessage().startswith(prefix) for source, prefix in DETAIL)


def demote_detail() -> None:
    """Install `DemoteDetail` on the loggers the detail arrives on (once), unless `PI_RL_LOG_LEVEL=DEBUG`. It sits on
    loggers, not handlers, so it still holds when a stock LeRobot loop replaces the handlers (its `init_logging`)."""
    if console_level() <= logging.DEBUG:
        return
    for name in DETAIL_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DemoteDetail) for f in logger.filters):
            logger.addFilter(DemoteDetail())


def setup_logging(cfg, role: str) -> None:
    """LeRobot's console + `<output_dir>/logs/<role>_<job_name>.log` (DEBUG) logging, with the detail demoted
    unless `PI_RL_LOG_LEVEL=DEBUG`."""
    from lerobot.utils.utils import init_logging

    level = console_level()
    log_dir = Path(cfg.output_dir) / "logs"
    os.makedirs(log_dir, exist_ok=True)
    init_logging(log_file=str(log_dir / f"{role}_{cfg.job_name}.log"), console_level=logging.getLevelName(level))
    demote_detail()
