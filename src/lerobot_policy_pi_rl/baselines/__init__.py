"""Baselines PI-RL is compared against, one folder per algorithm type.

They build on this package's runtime (env streams, transport workers, config) and on the demo's stage helpers;
neither imports them. The entry points `lerobot-pi-rl-learner` / `-actor` find a baseline's loops by its
`--algorithm.type` (`baselines/<type>/learner.py` and `actor.py`, each with `run(cfg) -> int`), and the demo
runs a baseline as a command (`python -m lerobot_policy_pi_rl.baselines.<type> ...`).
"""
