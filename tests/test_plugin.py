"""The package is a LeRobot policy plugin: discovered by name, resolved by naming convention, harmless to others."""

from __future__ import annotations

import copy
import importlib.metadata
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

from lerobot.configs import PreTrainedConfig
from lerobot.datasets.dataset_metadata import LeRobotDatasetMetadata
from lerobot.policies.factory import get_policy_class, make_policy, make_policy_config, make_pre_post_processors
from lerobot.utils.constants import ACTION, OBS_ENV_STATE, OBS_STATE

import lerobot_policy_pi_rl
from lerobot_policy_pi_rl.configuration_pi_rl import PiRLConfig
from lerobot_policy_pi_rl.modeling_pi_rl import PiRLPolicy

from conftest import (
    ACTION_DIM,
    ENV_DIM,
    STATE_DIM,
    SYNTHETIC_REPO_ID,
    make_dataset_stats,
    make_flow_mlp_config,
    subprocess_env,
)

pytestmark = pytest.mark.usefixtures("torch_single_thread")

DIST_NAME = "lerobot_policy_pi_rl"


def test_distribution_name_is_the_discoverable_module_name() -> None:
    name = importlib.metadata.metadata(DIST_NAME)["Name"]
    assert name == DIST_NAME  # underscores, exactly: LeRobot imports a module of this very name
    assert name.startswith("lerobot_policy_")
    assert lerobot_policy_pi_rl.__name__ == name
    assert importlib.metadata.version(DIST_NAME) == lerobot_policy_pi_rl.__version__


DISCOVERY_SCRIPT = textwrap.dedent(
    """
    import json
    from lerobot.configs import PreTrainedConfig
    from lerobot.policies.factory import get_policy_class
    from lerobot.utils.import_utils import register_third_party_plugins

    before = "pi_rl" in PreTrainedConfig.get_known_choices()
    register_third_party_plugins()
    after = "pi_rl" in PreTrainedConfig.get_known_choices()
    cls = get_policy_class("pi_rl")
    print("RESULT " + json.dumps({"before": before, "after": after, "cls": f"{cls.__module__}.{cls.__name__}"}))
    """
)


def test_register_third_party_plugins_discovers_pi_rl_in_a_fresh_process() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", DISCOVERY_SCRIPT], capture_output=True, text=True, env=subprocess_env(), timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    assert result == {
        "before": False,  # nothing registered pi_rl until discovery ran: the registry really was clean
        "after": True,
        "cls": "lerobot_policy_pi_rl.modeling_pi_rl.PiRLPolicy",
    }


def test_policy_class_and_config_resolve_by_name() -> None:
    assert get_policy_class("pi_rl") is PiRLPolicy
    assert PreTrainedConfig.get_choice_class("pi_rl") is PiRLConfig
    cfg = make_policy_config("pi_rl", chunk_size=8, n_action_steps=4)
    assert isinstance(cfg, PiRLConfig) and cfg.chunk_size == 8


def test_make_pre_post_processors_for_flow_mlp() -> None:
    cfg = make_flow_mlp_config()
    stats = make_dataset_stats()
    pre, post = make_pre_post_processors(cfg, dataset_stats=stats)
    raw = {OBS_STATE: torch.full((STATE_DIM,), 2.5), OBS_ENV_STATE: torch.full((ENV_DIM,), -0.1)}
    out = pre(raw)
    assert torch.allclose(out[OBS_STATE], torch.ones(1, STATE_DIM))  # (2.5 - 0.5) / 2
    assert torch.allclose(out[OBS_ENV_STATE], torch.zeros(1, ENV_DIM))
    action = post(torch.zeros(1, ACTION_DIM))  # MIN_MAX: 0 -> midpoint of [-2, 2]
    assert torch.allclose(action, torch.zeros(1, ACTION_DIM), atol=1e-6)
    assert torch.allclose(post(torch.ones(1, ACTION_DIM)), torch.full((1, ACTION_DIM), 2.0))


BUILTIN_POLICY_TYPES = sorted(
    name
    for name in PreTrainedConfig.get_known_choices()
    if PreTrainedConfig.get_choice_class(name).__module__.startswith("lerobot.")
)


def test_builtin_policy_list_is_not_empty() -> None:
    assert {"act", "diffusion", "pi0", "smolvla"} <= set(BUILTIN_POLICY_TYPES)
    assert "pi_rl" not in BUILTIN_POLICY_TYPES


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


@pytest.mark.parametrize("policy_type", BUILTIN_POLICY_TYPES)
def test_builtin_policy_configs_still_instantiate_with_the_plugin_imported(policy_type: str) -> None:
    assert "pi_rl" in PreTrainedConfig.get_known_choices()  # the plugin is imported in this process
    try:
        cfg = make_policy_config(policy_type)
    except ImportError as e:  # a missing optional dependency of that policy is an acceptable reason
        pytest.skip(f"{policy_type}: optional dependency missing ({e})")
    except OSError as e:
        # Some upstream configs fetch a model config from the hub in __post_init__; tests run offline.
        if not any(isinstance(c, (LocalEntryNotFoundError, OfflineModeIsEnabled)) for c in _causes(e)):
            raise
        pytest.skip(f"{policy_type}: its config downloads from the hub in __post_init__ (offline: {type(e).__name__})")
    assert cfg.type == policy_type
    assert PreTrainedConfig.get_choice_class(policy_type) is type(cfg)


def test_make_policy_from_dataset_metadata(synthetic_dataset) -> None:
    ds_meta = LeRobotDatasetMetadata(SYNTHETIC_REPO_ID, root=synthetic_dataset)
    cfg = PiRLConfig(device="cpu")
    policy = make_policy(cfg, ds_meta=ds_meta)
    assert isinstance(policy, PiRLPolicy)
    assert set(cfg.input_features) == {OBS_STATE, OBS_ENV_STATE}
    assert cfg.action_dim == ACTION_DIM
    chunk = policy.predict_action_chunk(
        {OBS_STATE: torch.zeros(2, STATE_DIM), OBS_ENV_STATE: torch.zeros(2, ENV_DIM)}
    )
    assert chunk.shape == (2, cfg.chunk_size, ACTION_DIM)

    # And the processors for it, from the dataset's own stats.
    pre, post = make_pre_post_processors(copy.deepcopy(cfg), dataset_stats=ds_meta.stats)
    batch = pre({OBS_STATE: torch.zeros(STATE_DIM), OBS_ENV_STATE: torch.zeros(ENV_DIM)})
    action = post(policy.select_action(batch))
    assert action.shape == (1, ACTION_DIM)
    assert ACTION in ds_meta.stats
