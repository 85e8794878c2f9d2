"""Exploration: how a flow policy's deterministic denoising chain is made stochastic, sampled and scored.

One object per variant behind one interface (`Exploration`), built from the variant config by `make_exploration`:
`FlowSDE` (the ODE as an SDE with the same marginals) and `FlowNoise` (learned per-element noise). What a sampled
chain leaves for the learner is a `ChainRecord`, whatever the variant.
"""

from .base import Exploration, SampledChain, ScoredChain, StdStatistics, VelocityFeaturesFn
from .factory import make_exploration
from .flow_noise import FlowNoise
from .flow_sde import FlowSDE, FlowSDESteps
from .record import ChainRecord

__all__ = [
    "ChainRecord",
    "Exploration",
    "FlowNoise",
    "FlowSDE",
    "FlowSDESteps",
    "SampledChain",
    "ScoredChain",
    "StdStatistics",
    "VelocityFeaturesFn",
    "make_exploration",
]
