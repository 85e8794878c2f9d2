"""Command-line entry points of this package (`python -m lerobot_policy_pi_rl.scripts.<name>`)."""
