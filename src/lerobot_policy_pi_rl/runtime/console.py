"""Console and log-file set-up of the RL entry points."""

from __future__ import annotations

import os
from pathlib import Path


def setup_logging(cfg, role: str) -> None:
    from lerobot.utils.utils import init_logging

    log_dir = Path(cfg.output_dir) / "logs"
    os.makedirs(log_dir, exist_ok=True)
    init_logging(log_file=str(log_dir / f"{role}_{cfg.job_name}.log"))
