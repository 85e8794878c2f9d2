"""`make demo` (`python -m lerobot_policy_pi_rl.demo`): few-shot SFT -> PI-RL on the state-only PickCube env, on
a CPU, with an evaluation report.

Modules: `settings` (the recipe and its defaults), `stages` (running and recording one stage; the evaluation
stage every policy goes through), `pipeline` (the stages in order and the command line), `report` (report.md,
report.json and the learning-curve plot, also rebuilt from a run directory).
"""
