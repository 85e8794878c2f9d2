"""`lerobot-pi-rl-benchmark`: MetaWorld tasks through demonstrations -> SFT -> evaluation -> PI-RL -> evaluation
with one recipe for every task, and one report.

Modules: `recipe` (the one recipe, the task sets), `commands` (the stages and the exact command of each),
`rundir` (what a run directory is and how far each unit got: resume), `report` (report.md, report.json and the
learning-curve figure, rebuilt from the run directory), `runner` (the stages in order and the command line).
"""
