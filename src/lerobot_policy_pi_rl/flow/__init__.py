"""Flow-matching chain math as pure functions.

Time convention (LeRobot's and openpi's): t = 1 is pure noise, t = 0 is the clean action.
Interpolant x_t = t * eps + (1 - t) * a, velocity target u = eps - a, Euler step x_{t-dt} = x_t - dt * v.
Everything that becomes a log-prob is computed in float32.
"""

from .chain import (
    ChainTransition,
    chain_log_prob,
    chain_step_log_probs,
    linear_chain_log_probs,
    one_step_chain_log_prob,
    reduce_log_prob,
    sample_chain,
    sample_linear_chain,
    score_transition,
)
from .flow_noise import flow_noise_step, noise_std_from_raw
from .flow_sde import (
    SDECoefficients,
    flow_sde_coefficient_table,
    flow_sde_coefficients,
    flow_sde_sigma,
    flow_sde_step,
)
from .gaussian import (
    gaussian_entropy,
    gaussian_log_prob,
    gaussian_log_prob_of_deviation,
    gaussian_scale_terms,
    standard_normal_log_prob,
)
from .time_grid import time_grid

__all__ = [
    "ChainTransition",
    "SDECoefficients",
    "chain_log_prob",
    "chain_step_log_probs",
    "score_transition",
    "flow_noise_step",
    "flow_sde_coefficient_table",
    "flow_sde_coefficients",
    "flow_sde_sigma",
    "flow_sde_step",
    "gaussian_entropy",
    "gaussian_log_prob",
    "gaussian_log_prob_of_deviation",
    "gaussian_scale_terms",
    "linear_chain_log_probs",
    "noise_std_from_raw",
    "one_step_chain_log_prob",
    "reduce_log_prob",
    "sample_chain",
    "sample_linear_chain",
    "standard_normal_log_prob",
    "time_grid",
]
