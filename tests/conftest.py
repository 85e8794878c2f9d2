"""Shared builders and fixtures for the pi_rl test suite (CPU-sized, offline).

Builders are plain functions so other test modules can import them (`from conftest import ...`; `tests/` is not a
package, pytest puts it on sys.path); fixtures wrap them for pytest.
"""

from __future__ import annotations

import os
from pathlib import Path

# Never touch the hub from tests; set before LeRobot / huggingface_hub read it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

import numpy as np
import pytest
import torch

from lerobot.configs.types import FeatureType, PolicyFeature
from lerobot.utils.constants import ACTION, OBS_ENV_STATE, OBS_STATE

from lerobot_policy_pi_rl.configuration_pi_rl import (
    FlowMLPBackboneConfig,
    FlowNoiseConfig,
    FlowSDEConfig,
    PiRLConfig,
    ValueHeadConfig,
)

STATE_DIM = 18
ENV_DIM = 3
ACTION_DIM = 4


def flow_mlp_features() -> tuple[dict[str, PolicyFeature], dict[str, PolicyFeature]]:
    """PandaPickCube-like features: `observation.state` (18), `observation.environment_state` (3), action (4)."""
    inputs = {
        OBS_STATE: PolicyFeature(type=FeatureType.STATE, shape=(STATE_DIM,)),
        OBS_ENV_STATE: PolicyFeature(type=FeatureType.ENV, shape=(ENV_DIM,)),
    }
    outputs = {ACTION: PolicyFeature(type=FeatureType.ACTION, shape=(ACTION_DIM,))}
    return inputs, outputs


def make_variant(variant: str = "flow_sde", **variant_kwargs) -> FlowSDEConfig | FlowNoiseConfig:
    if variant == "flow_sde":
        return FlowSDEConfig(**variant_kwargs)
    if variant == "flow_noise":
        return FlowNoiseConfig(**{"noise_head_hidden_dims": [32], **variant_kwargs})
    raise ValueError(f"unknown variant {variant!r}")


def make_flow_mlp_config(
    variant: str = "flow_sde",
    *,
    variant_kwargs: dict | None = None,
    backbone_kwargs: dict | None = None,
    **overrides,
) -> PiRLConfig:
    """A small `pi_rl` + `flow_mlp` config with features set (K=4, H=6, C=3, narrow nets), on CPU."""
    inputs, outputs = flow_mlp_features()
    backbone = FlowMLPBackboneConfig(
        **{"hidden_dim": 64, "num_layers": 2, "token_dim": 16, "time_embed_dim": 16, **(backbone_kwargs or {})}
    )
    kwargs = dict(
        variant=make_variant(variant, **(variant_kwargs or {})),
        backbone=backbone,
        value_head=ValueHeadConfig(hidden_dims=[32]),
        num_denoise_steps=4,
        chunk_size=6,
        n_action_steps=3,
        device="cpu",
        input_features=inputs,
        output_features=outputs,
    )
    kwargs.update(overrides)
    return PiRLConfig(**kwargs)


def make_obs_batch(batch_size: int = 5, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """A preprocessed (already normalized) observation batch for the flow_mlp features."""
    g = torch.Generator().manual_seed(seed)
    return {
        OBS_STATE: torch.randn(batch_size, STATE_DIM, generator=g),
        OBS_ENV_STATE: torch.randn(batch_size, ENV_DIM, generator=g),
    }


def make_dataset_stats() -> dict[str, dict[str, torch.Tensor]]:
    """Normalization stats matching `flow_mlp_features` (MEAN_STD observations, MIN_MAX actions)."""

    def vec(n: int, mean: float, std: float, lo: float, hi: float) -> dict[str, torch.Tensor]:
        return {
            "mean": torch.full((n,), mean),
            "std": torch.full((n,), std),
            "min": torch.full((n,), lo),
            "max": torch.full((n,), hi),
        }

    return {
        OBS_STATE: vec(STATE_DIM, 0.5, 2.0, -3.0, 4.0),
        OBS_ENV_STATE: vec(ENV_DIM, -0.1, 0.3, -1.0, 1.0),
        ACTION: vec(ACTION_DIM, 0.0, 1.0, -2.0, 2.0),
    }


SYNTHETIC_REPO_ID = "local/synthetic"


def write_synthetic_dataset(root: Path, *, episodes: int = 4, frames: int = 30, seed: int = 0) -> Path:
    """Write a small LeRobotDataset (state 18-D, environment state 3-D, action 4-D) to `root`; no videos.

    The action is a fixed function of the observation, so a policy can actually learn it.
    """
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    features = {
        OBS_STATE: {"dtype": "float32", "shape": (STATE_DIM,), "names": None},
        OBS_ENV_STATE: {"dtype": "float32", "shape": (ENV_DIM,), "names": None},
        ACTION: {"dtype": "float32", "shape": (ACTION_DIM,), "names": None},
    }
    dataset = LeRobotDataset.create(
        repo_id=SYNTHETIC_REPO_ID, fps=10, features=features, root=root, use_videos=False
    )
    rng = np.random.default_rng(seed)
    for _ in range(episodes):
        for _ in range(frames):
            state = rng.standard_normal(STATE_DIM).astype(np.float32)
            env_state = rng.standard_normal(ENV_DIM).astype(np.float32)
            action = np.tanh(state[:ACTION_DIM] + env_state.sum()).astype(np.float32)
            dataset.add_frame({OBS_STATE: state, OBS_ENV_STATE: env_state, ACTION: action, "task": "lift the cube"})
        dataset.save_episode()
    dataset.finalize()
    return Path(root)


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a synthetic LeRobotDataset (repo id `local/synthetic`), written once per test session."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("datasets") / "synthetic")


@pytest.fixture
def torch_single_thread():
    """Run on one intra-op thread: tiny models on a shared 2-core box are much faster without oversubscription."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for child processes (LeRobot CLIs): offline, headless, one thread per process."""
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        **extra,
    }


@pytest.fixture
def hf_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make sure nothing in the test reaches the Hugging Face hub."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def flow_mlp_config() -> PiRLConfig:
    return make_flow_mlp_config()


@pytest.fixture
def obs_batch() -> dict[str, torch.Tensor]:
    return make_obs_batch()
