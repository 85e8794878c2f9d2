"""PI-RL's actor and learner over LeRobot's gRPC transport (unchanged proto).

Entry points: `lerobot-pi-rl-learner`, `lerobot-pi-rl-actor`, `lerobot-pi-rl-train` (or `python -m
lerobot_policy_pi_rl.runtime.{learner,actor,train}`). With `--algorithm.type=sac` they run LeRobot's stock SAC
learner/actor.
"""
