"""One-machine PI-RL training: a learner and `num_actors` actor processes, supervised.

    lerobot-pi-rl-train --policy.type=pi_rl --env.type=pi_rl_pickcube --num_actors=2 --n_envs=4 --num_updates=100
    (or `python -m lerobot_policy_pi_rl.runtime.train ...`; same flags as the learner/actor)

The configuration is parsed and validated here first: a bad value fails with one line naming the field before
any process starts. Then: start the learner, wait until it answers, start the actors. Exit status 0 when the
learner finished `num_updates` and every child exited cleanly; nonzero if any child failed. Ctrl-C/SIGTERM is
forwarded to every child (then SIGKILL after a grace period), so no child outlives this process.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time

from .cli import load_config
from .console import console_level
from .rollout_recorder import check_rollouts_dirs
from .transport import ClientSecurity, client_security, wait_for_learner

logger = logging.getLogger("lerobot_policy_pi_rl.train")

GRACE_S = 15.0


def _child(module: str, argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", f"lerobot_policy_pi_rl.runtime.{module}", *argv])


def _stop_all(children: list[subprocess.Popen], grace_s: float = GRACE_S) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for child in children:
        try:
            child.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = load_config(argv)  # exits 2 on a bad configuration, before any child starts
    try:
        security = client_security(cfg.security)  # unreadable certificate, unset token variable, ...
        if cfg.record_rollouts:  # every actor's folder, before any actor starts (each actor checks only its own)
            check_rollouts_dirs(cfg, range(cfg.num_actors))
    except ValueError as err:
        print(f"error: invalid configuration: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=console_level(), format="%(levelname)s %(asctime)s train: %(message)s", force=True)
    argv = [a for a in argv if not a.startswith("--actor_index")]
    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signum

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    learner = _child("learner", argv)
    children = [learner]
    try:
        alc = cfg.policy.actor_learner_config
        if not _wait_ready(learner, alc.learner_host, alc.learner_port, stop, security):
            logger.error("the learner did not come up (exit code %s)", learner.poll())
            return learner.poll() or 1
        actors = [_child("actor", [*argv, f"--actor_index={i}"]) for i in range(cfg.num_actors)]
        children += actors
        logger.info("learner pid %d, actor pids %s", learner.pid, [a.pid for a in actors])
        if cfg.algorithm.type == "sac":
            return _supervise_sac(learner, actors, stop)
        return _supervise(learner, actors, stop)
    finally:
        _stop_all(children)


def _wait_ready(learner: subprocess.Popen, host: str, port: int, stop: dict, security: ClientSecurity) -> bool:
    class _Stop:
        def is_set(self) -> bool:
            return stop["signal"] is not None or learner.poll() is not None

        def wait(self, timeout: float) -> None:
            time.sleep(timeout)

    return wait_for_learner(host, port, _Stop(), timeout_s=600.0, security=security)


def _supervise(learner: subprocess.Popen, actors: list[subprocess.Popen], stop: dict) -> int:
    """Wait for the learner; an actor failure or a signal stops everything."""
    while learner.poll() is None:
        if stop["signal"] is not None:
            logger.info("signal %d: stopping learner and actors", stop["signal"])
            _stop_all([learner, *actors])
            return 128 + stop["signal"]
        failed = [a for a in actors if a.poll() not in (None, 0)]
        if failed:
            logger.error("actor pid %d failed with exit code %d: stopping", failed[0].pid, failed[0].returncode)
            _stop_all([learner, *actors])
            return failed[0].returncode or 1
        time.sleep(0.2)
    # The learner is done: actors stop on its final weights message (or give up after reconnect_timeout_s).
    deadline = time.monotonic() + GRACE_S
    while any(a.poll() is None for a in actors) and time.monotonic() < deadline:
        time.sleep(0.2)
    lingering = [a for a in actors if a.poll() is None]
    _stop_all(actors, grace_s=5.0)
    codes = [learner.returncode] + [a.returncode for a in actors]
    logger.info("exit codes: learner %d, actors %s", codes[0], codes[1:])
    if lingering:
        # Still starting (or still waiting for the final weights) after the learner finished: the stop was ours,
        # so dying of that signal is no failure; any other code (a crash while stopping) still is.
        logger.info("actor pids %s stopped by the launcher after the learner finished",
                    [a.pid for a in lingering])
        ours = (0, -signal.SIGTERM, -signal.SIGKILL)
        codes = [learner.returncode] + [0 if a in lingering and a.returncode in ours else a.returncode
                                        for a in actors]
    return next((c for c in codes if c != 0), 0)


def _supervise_sac(learner: subprocess.Popen, actors: list[subprocess.Popen], stop: dict) -> int:
    """LeRobot's SAC learner never ends on its own: the run ends when every actor has spent its
    `policy.online_steps` budget; then the learner gets SIGTERM (its own graceful shutdown). Its newest
    checkpoint is the one it last wrote (every `save_freq` optimization steps)."""
    while any(a.poll() is None for a in actors):
        if stop["signal"] is not None:
            logger.info("signal %d: stopping learner and actors", stop["signal"])
            _stop_all([learner, *actors])
            return 128 + stop["signal"]
        failed = [a for a in actors if a.poll() not in (None, 0)]
        if learner.poll() is not None or failed:
            logger.error("learner exit code %s, actor exit codes %s: stopping", learner.poll(),
                         [a.poll() for a in actors])
            _stop_all([learner, *actors])
            return (failed[0].returncode if failed else learner.returncode) or 1
        time.sleep(0.2)
    logger.info("actors done: stopping the SAC learner")
    _stop_all([learner], grace_s=60.0)
    codes = [learner.returncode] + [a.returncode for a in actors]
    logger.info("exit codes: learner %d, actors %s", codes[0], codes[1:])
    return next((c for c in codes if c != 0), 0)


if __name__ == "__main__":
    sys.exit(main())
