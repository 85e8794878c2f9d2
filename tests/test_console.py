"""The console of the RL entry points: progress and warnings by default, per-event detail at DEBUG and in the log."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import gymnasium as gym
import pytest

from lerobot_policy_pi_rl.runtime.console import LOG_LEVEL_ENV, console_level, setup_logging


class _NoOpEnv(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (1,))
    action_space = gym.spaces.Box(-1.0, 1.0, (1,))

    def reset(self, *, seed=None, options=None):
        return self.observation_space.sample(), {}


@pytest.fixture
def restore_logging():
    """`setup_logging` configures the process's root logger: give the next tests theirs back."""
    root = logging.getLogger()
    loggers = [root, logging.getLogger("OpenGL.acceleratesupport")]
    saved = [(lg, lg.level, list(lg.handlers), list(lg.filters)) for lg in loggers]
    yield
    for lg, level, handlers, filters in saved:
        for handler in lg.handlers:
            if handler not in handlers:
                handler.close()
        lg.setLevel(level)
        lg.handlers[:], lg.filters[:] = handlers, filters


def _run_process(tmp_path, capsys) -> tuple[str, str]:
    """What an actor process logs: gym_hil's reset message (its real code path), a progress line of this package,
    a third-party warning. Returns (console, log file)."""
    from gym_hil.wrappers.hil_wrappers import ResetDelayWrapper

    setup_logging(SimpleNamespace(output_dir=str(tmp_path), job_name="job"), "actor0")
    ResetDelayWrapper(_NoOpEnv(), delay_seconds=0).reset()
    logging.getLogger("lerobot_policy_pi_rl.runtime.learner").info("[LEARNER] update 1/3 | version 1")
    logging.warning("a third-party warning")
    for handler in logging.getLogger().handlers:
        handler.flush()
    return capsys.readouterr().err, (tmp_path / "logs" / "actor0_job.log").read_text()


def test_third_party_detail_stays_off_the_console_but_in_the_log_file(tmp_path, capsys, monkeypatch, restore_logging):
    monkeypatch.delenv(LOG_LEVEL_ENV, raising=False)
    console, log_file = _run_process(tmp_path, capsys)
    assert "[LEARNER] update 1/3" in console and "a third-party warning" in console
    assert "Reset delay" not in console
    assert "DEBUG" in next(line for line in log_file.splitlines() if "Reset delay of 0 seconds" in line)
    assert "[LEARNER] update 1/3" in log_file


def test_debug_level_puts_the_detail_on_the_console(tmp_path, capsys, monkeypatch, restore_logging):
    monkeypatch.setenv(LOG_LEVEL_ENV, "debug")
    console, _ = _run_process(tmp_path, capsys)
    assert "Reset delay of 0 seconds" in console and "[LEARNER] update 1/3" in console


def test_warning_level_keeps_only_warnings(tmp_path, capsys, monkeypatch, restore_logging):
    monkeypatch.setenv(LOG_LEVEL_ENV, "WARNING")
    console, _ = _run_process(tmp_path, capsys)
    assert "a third-party warning" in console
    assert "[LEARNER] update" not in console and "Reset delay" not in console


def test_a_bad_log_level_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(LOG_LEVEL_ENV, "loud")
    with pytest.raises(ValueError, match=f"{LOG_LEVEL_ENV}='loud'.*DEBUG, INFO, WARNING, ERROR"):
        console_level()

    from lerobot_policy_pi_rl.runtime.cli import load_config

    with pytest.raises(SystemExit) as exc:
        load_config(["--policy.type=pi_rl", "--env.type=pi_rl_pickcube", f"--output_dir={tmp_path / 'run'}"])
    assert exc.value.code == 2
    assert f"{LOG_LEVEL_ENV}='loud'" in capsys.readouterr().err
