"""LeRobot's SAC (`gaussian_actor` policy + `sac` algorithm, unchanged) as a baseline on this package's envs.

  * `learner.py`: `--algorithm.type=sac` on `lerobot-pi-rl-learner` runs LeRobot's stock SAC learner, given this
    package's config (which works around the upstream config bugs).
  * `actor.py`: on `lerobot-pi-rl-actor`, LeRobot's own actor for `gym_manipulator` envs, and for every other env
    (e.g. the state-only `pi_rl_pickcube`, which LeRobot's actor cannot build) the same loop over this package's
    env streams.
  * `runner.py` (`python -m lerobot_policy_pi_rl.baselines.sac`): the demo's SAC stage, SAC trained and evaluated
    on the demo's env, demonstrations, env-step budget and evaluation protocol.
"""
