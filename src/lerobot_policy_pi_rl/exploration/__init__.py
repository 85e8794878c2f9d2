"""Exploration: how a flow policy's deterministic denoising chain is made stochastic, sampled and scored."""

from .record import ChainRecord

__all__ = ["ChainRecord"]
