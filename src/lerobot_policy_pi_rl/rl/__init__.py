"""PI-RL's learning side: rollout storage, advantage estimators, PPO losses and the algorithm."""
