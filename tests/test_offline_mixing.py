"""Online/offline mixing (`--algorithm.offline.*`): offline datasets and intervention chunks as a flow-matching term
in the PPO minibatches.

The ratio arithmetic in closed form; ratio 0 bit for bit equal to plain PPO; the SFT preprocessing of dataset
frames and intervention chunks against hand-normalized values; bad settings failing before training with the
value named; the real learner (`build_learner` + `PiRLLearner.run`, what `lerobot-pi-rl-train` runs) mixing a
real tiny dataset and buffering flagged chunks; and the debug-size SmolVLA through an update.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from bandit import bandit_config, collect_rollout
from conftest import SYNTHETIC_REPO_ID, make_dataset_stats, make_flow_mlp_config
from lerobot.utils.constants import ACTION, OBS_ENV_STATE, OBS_STATE
from lerobot_policy_pi_rl.configuration_pi_rl import FlowSDEConfig
from lerobot_policy_pi_rl.modeling_pi_rl import PiRLPolicy
from lerobot_policy_pi_rl.rl.algorithm import PiRLAlgorithm
from lerobot_policy_pi_rl.rl.config import OfflineConfig, PiRLAlgorithmConfig
from lerobot_policy_pi_rl.rl.mixing import OfflinePart, offline_rows
from lerobot_policy_pi_rl.rl.rollout import Rollout


def snapshot(policy) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in policy.state_dict().items()}


def rollout_of(policy: PiRLPolicy, batch: dict, *, seed: int = 1, intervention: torch.Tensor | None = None) -> Rollout:
    """One terminated one-decision episode per row of a preprocessed observation batch, sampled by `policy`."""
    obs = {k: v for k, v in batch.items() if torch.is_tensor(v)}
    n = next(iter(obs.values())).shape[0]
    sample = policy.sample_chain(obs, generator=torch.Generator().manual_seed(seed))
    ones = torch.ones(n, dtype=torch.bool)
    return Rollout(
        observations=obs, next_observations=obs, chain=sample.record.chain, stochastic=sample.record.stochastic,
        noise_level=sample.record.noise_level, log_prob=sample.log_prob, value=sample.value,
        reward=torch.randn(n, generator=torch.Generator().manual_seed(seed)), terminated=ones, truncated=~ones,
        policy_version=torch.zeros(n, dtype=torch.long), stream_id=torch.arange(n),
        intervention=~ones if intervention is None else intervention, success=~ones,
        group_id=torch.full((n,), -1, dtype=torch.long),
    )


# ----------------------------------------------------------------------------------------------------------------
# The ratio, the config
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("online", "ratio", "expected"),
    [(64, 0.0, 0), (64, 0.2, 16), (64, 0.5, 64), (10, 0.25, 3), (5, 1 / 3, 3), (3, 1 / 3, 2), (64, 0.9, 576),
     (0, 0.5, 0)],
)
def test_offline_rows_make_the_ratio_the_offline_share_of_the_minibatch(online, ratio, expected):
    m = offline_rows(online, ratio=ratio)
    assert m == expected
    if online:
        # The share is the ratio up to rounding one row.
        assert abs(m / (online + m) - ratio) <= 0.5 / (online + m) + 1e-12


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_offline_rows_refuse_a_ratio_outside_0_1(ratio):
    with pytest.raises(ValueError, match=f"ratio={ratio}"):
        offline_rows(8, ratio=ratio)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [({"ratio": 1.0, "repo_ids": ["a/b"]}, "algorithm.offline.ratio=1.0 must be in [0, 1)"),
     ({"ratio": -0.2, "repo_ids": ["a/b"]}, "algorithm.offline.ratio=-0.2"),
     ({"ratio": 0.3}, "algorithm.offline.ratio=0.3 has nothing to sample"),
     ({"ratio": 0.3, "repo_ids": ["a/b", "c/d"], "roots": ["x"]}, "algorithm.offline.roots=['x']"),
     ({"interventions": True}, "interventions=true with algorithm.offline.ratio=0"),
     ({"ratio": 0.3, "interventions": True, "intervention_buffer_size": 0}, "intervention_buffer_size=0"),
     ({"ratio": 0.3, "repo_ids": ["a/b"], "loss_weight": -1.0}, "loss_weight=-1.0")],
)
def test_bad_offline_settings_name_the_value(kwargs, needle):
    with pytest.raises(ValueError) as err:
        OfflineConfig(**kwargs)
    assert needle in str(err.value)


def test_a_bad_ratio_on_the_command_line_fails_before_any_process_starts(tmp_path, capsys):
    from test_runtime import free_port, tiny_args

    from lerobot_policy_pi_rl.runtime.cli import load_config

    with pytest.raises(SystemExit) as exc:
        load_config(tiny_args(free_port(), tmp_path / "run", **{"algorithm.offline.ratio": 1.0,
                                                                 "algorithm.offline.repo_ids": "[a/b]"}))
    assert exc.value.code not in (0, None)
    assert "algorithm.offline.ratio=1.0" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# The algorithm: ratio 0 is PPO, a ratio > 0 adds the SFT loss
# ----------------------------------------------------------------------------------------------------------------


class _Refuses:
    """An offline source that must never be asked."""

    def sample(self, rows):
        raise AssertionError("ratio 0 must not draw offline rows")


class _Fixed:
    """Offline rows of the bandit task, a fixed batch (the draws are counted)."""

    def __init__(self):
        self.asked: list[int] = []

    def sample(self, rows):
        self.asked.append(rows)
        g = torch.Generator().manual_seed(len(self.asked))
        obs = torch.rand(rows, 2, generator=g) * 2 - 1
        return [OfflinePart({OBS_STATE: obs, ACTION: 0.5 * obs[:, None, :].expand(rows, 2, 2).clone()}, rows)]


def _bandit_update(offline: OfflineConfig, source) -> tuple[PiRLPolicy, dict]:
    torch.manual_seed(0)
    cfg = bandit_config(FlowSDEConfig())
    policy = PiRLPolicy(cfg)
    algo = PiRLAlgorithm(policy, PiRLAlgorithmConfig(policy_config=cfg, minibatch_size=16, offline=offline))
    algo.offline = source
    rollout = collect_rollout(policy, n=32, version=0, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(5)
    stats = algo.update_rollout(rollout).stats
    return policy, {**{f"loss/{k}": v for k, v in stats.losses.items()}, **stats.extra}


def test_ratio_0_is_plain_ppo_bit_for_bit(torch_single_thread):
    plain, plain_log = _bandit_update(OfflineConfig(), None)
    unused, unused_log = _bandit_update(OfflineConfig(repo_ids=["user/demos"], roots=["/nowhere"]), _Refuses())
    for name, value in snapshot(plain).items():
        assert torch.equal(snapshot(unused)[name], value), name
    assert unused_log == plain_log
    assert "loss/offline_fm" not in plain_log and "rollout/offline_share" not in plain_log

    # The same update with offline rows moves the weights elsewhere, and logs the term apart.
    source = _Fixed()
    mixed, mixed_log = _bandit_update(OfflineConfig(ratio=0.2, repo_ids=["user/demos"]), source)
    assert not torch.equal(snapshot(mixed)["backbone.action_out_proj.weight"],
                           snapshot(plain)["backbone.action_out_proj.weight"])
    # 4 epochs x 2 minibatches of 16 online rows, each with round(0.25 * 16) = 4 offline rows.
    assert source.asked == [4] * 8
    assert mixed_log["rollout/offline_share"] == pytest.approx(0.2)
    assert mixed_log["loss/offline_fm"] > 0


def test_the_offline_term_is_the_weighted_sft_loss_in_the_same_step(monkeypatch, torch_single_thread):
    """One minibatch: the step's total loss is the PPO loss plus loss_weight x the policy's own SFT forward."""
    from lerobot_policy_pi_rl.rl import algorithm as algorithm_module

    sft_losses = []
    real_forward = PiRLPolicy.forward

    def spy_forward(self, batch, reduction="mean"):
        loss, info = real_forward(self, batch, reduction)
        sft_losses.append(float(loss.detach()))
        return loss, info

    monkeypatch.setattr(PiRLPolicy, "forward", spy_forward)
    monkeypatch.setattr(torch, "randperm", lambda n, **kw: torch.arange(n, device=kw.get("device")))
    torch.manual_seed(0)
    cfg = bandit_config(FlowSDEConfig())
    policy = PiRLPolicy(cfg)
    algo = PiRLAlgorithm(policy, PiRLAlgorithmConfig(
        policy_config=cfg, minibatch_size=32, update_epochs=1, value_coef=0.0, entropy_coef=0.0,
        offline=OfflineConfig(ratio=0.5, loss_weight=3.0, repo_ids=["user/demos"])))
    algo.offline = _Fixed()
    policy_losses = []
    real_ppo = algorithm_module.ppo_policy_loss

    def spy_ppo(**kwargs):
        loss, stats = real_ppo(**kwargs)
        policy_losses.append(float(loss.detach()))
        return loss, stats

    monkeypatch.setattr(algorithm_module, "ppo_policy_loss", spy_ppo)
    stats = algo.update_rollout(
        collect_rollout(policy, n=32, version=0, generator=torch.Generator().manual_seed(1))).stats
    assert algo.offline.asked == [32] and len(sft_losses) == 1 and len(policy_losses) == 1
    assert stats.losses["offline_fm"] == pytest.approx(sft_losses[0])
    assert stats.losses["total"] == pytest.approx(policy_losses[0] + 3.0 * sft_losses[0], rel=1e-6)
    assert stats.extra["rollout/offline_share"] == 0.5


def test_critic_warmup_draws_no_offline_rows(torch_single_thread):
    torch.manual_seed(0)
    cfg = bandit_config(FlowSDEConfig())
    policy = PiRLPolicy(cfg)
    algo = PiRLAlgorithm(policy, PiRLAlgorithmConfig(policy_config=cfg, critic_warmup_updates=1,
                                                     offline=OfflineConfig(ratio=0.5, repo_ids=["user/demos"])))
    algo.offline = _Refuses()
    algo.update_rollout(collect_rollout(policy, n=16, version=0, generator=torch.Generator().manual_seed(1)))


# ----------------------------------------------------------------------------------------------------------------
# The offline source: SFT preprocessing of dataset frames and intervention chunks
# ----------------------------------------------------------------------------------------------------------------


def _flow_mlp_processors(config):
    from lerobot_policy_pi_rl.processor_pi_rl import make_pi_rl_pre_post_processors

    return make_pi_rl_pre_post_processors(config, make_dataset_stats())


def _min_max(x, stats):
    return (x - stats["min"]) / (stats["max"] - stats["min"]) * 2 - 1


def test_dataset_frames_are_chunked_and_normalized_as_sft_does(synthetic_dataset):
    from lerobot.datasets import LeRobotDataset

    from lerobot_policy_pi_rl.runtime.offline import OfflineSource, load_offline_datasets, sft_keys

    config = make_flow_mlp_config(state_std_floor=0.0)
    pre, _ = _flow_mlp_processors(config)
    offline = OfflineConfig(ratio=0.5, repo_ids=[SYNTHETIC_REPO_ID], roots=[str(synthetic_dataset)])
    source = OfflineSource(load_offline_datasets(offline, config), pre, keys=sft_keys(config), interventions=None,
                           device="cpu", seed=3)
    assert source.num_frames == 4 * 30
    (part,) = source.sample(7)
    assert part.rows == 7 and part.batch[ACTION].shape == (7, config.chunk_size, 4)

    # Frame 28 of episode 0: two real actions, then padding (the episode has 30 frames).
    raw = LeRobotDataset(SYNTHETIC_REPO_ID, root=synthetic_dataset)
    batch = source.dataset_batch([28])
    stats = make_dataset_stats()
    expected_actions = torch.stack([raw[28][ACTION], raw[29][ACTION]])
    torch.testing.assert_close(batch[ACTION][0, :2], _min_max(expected_actions, stats[ACTION]))
    assert batch["action_is_pad"][0].tolist() == [False, False] + [True] * (config.chunk_size - 2)
    torch.testing.assert_close(batch[OBS_STATE][0], (raw[28][OBS_STATE] - 0.5) / 2.0)
    torch.testing.assert_close(batch[OBS_ENV_STATE][0], (raw[28][OBS_ENV_STATE] + 0.1) / 0.3)
    # What the SFT forward consumes, not the dataset's bookkeeping columns.
    assert {OBS_STATE, OBS_ENV_STATE, ACTION, "action_is_pad"} <= set(batch)
    assert not {"index", "episode_index", "frame_index", "timestamp", "task_index"} & set(batch)


def test_intervention_chunks_become_normalized_padded_sft_rows():
    from lerobot_policy_pi_rl.runtime.offline import InterventionBuffer, OfflineSource, action_normalizer

    config = make_flow_mlp_config()  # chunk_size 6
    pre, _ = _flow_mlp_processors(config)
    buffer = InterventionBuffer(2, chunk_size=6, normalize_action=action_normalizer(pre))
    executed = [torch.full((3, 4), 1.0), torch.full((2, 4), -1.0), torch.full((3, 4), 2.0)]
    for i, actions in enumerate(executed):
        buffer.add({OBS_STATE: torch.full((1, 18), float(i)), OBS_ENV_STATE: torch.zeros(1, 3)}, actions)
    # FIFO: the first chunk fell out.
    assert len(buffer) == 2 and buffer.added == 3
    batch = buffer.batch([0, 1])
    assert batch[OBS_STATE][:, 0].tolist() == [1.0, 2.0]
    stats = make_dataset_stats()[ACTION]
    torch.testing.assert_close(batch[ACTION][0, :2], _min_max(executed[1], stats))
    torch.testing.assert_close(batch[ACTION][1, :3], _min_max(executed[2], stats))
    assert batch["action_is_pad"].tolist() == [[False] * 2 + [True] * 4, [False] * 3 + [True] * 3]
    assert (batch[ACTION][0, 2:] == 0).all()

    # Sampled alone (no datasets), every row comes from the buffer; the rows feed the SFT forward.
    source = OfflineSource([], pre, keys=set(), interventions=buffer, device="cpu")
    (part,) = source.sample(5)
    assert part.rows == 5
    loss, _ = PiRLPolicy(config).forward(part.batch)
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="7 executed actions, expected 1..6"):
        buffer.add({OBS_STATE: torch.zeros(1, 18)}, torch.zeros(7, 4))


def _write_dataset(root: Path, *, state_dim: int) -> Path:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    features = {
        OBS_STATE: {"dtype": "float32", "shape": (state_dim,), "names": None},
        ACTION: {"dtype": "float32", "shape": (4,), "names": None},
    }
    ds = LeRobotDataset.create(repo_id="local/other", fps=10, features=features, root=root, use_videos=False)
    for _ in range(3):
        ds.add_frame({OBS_STATE: np.zeros(state_dim, np.float32), ACTION: np.zeros(4, np.float32), "task": "t"})
    ds.save_episode()
    ds.finalize()
    return root


# ----------------------------------------------------------------------------------------------------------------
# The real learner
# ----------------------------------------------------------------------------------------------------------------


def _learner_args(tmp_path: Path, **over) -> list[str]:
    from test_runtime import free_port, tiny_args

    return tiny_args(free_port(), tmp_path / "run", **over)


def test_bad_offline_datasets_fail_the_learner_before_training_naming_the_value(tmp_path, synthetic_dataset):
    from lerobot_policy_pi_rl.runtime.cli import load_config
    from lerobot_policy_pi_rl.runtime.learner import build_learner

    missing = tmp_path / "nothing_here"
    args = _learner_args(tmp_path, **{"algorithm.offline.ratio": 0.25,
                                      "algorithm.offline.repo_ids": f"[{SYNTHETIC_REPO_ID}]",
                                      "algorithm.offline.roots": f"[{missing}]"})
    with pytest.raises(ValueError, match=rf"algorithm.offline.roots\[0\]='{missing}' holds no LeRobotDataset"):
        build_learner(load_config(args), shutdown_event=threading.Event())

    other = _write_dataset(tmp_path / "other", state_dim=5)
    args = _learner_args(tmp_path, **{"algorithm.offline.ratio": 0.25, "algorithm.offline.repo_ids": "[local/other]",
                                      "algorithm.offline.roots": f"[{other}]"})
    with pytest.raises(ValueError) as err:
        build_learner(load_config(args), shutdown_event=threading.Event())
    message = str(err.value)
    assert "algorithm.offline.repo_ids[0]='local/other'" in message
    assert "'observation.state' has shape (5,), the policy (18,)" in message
    assert "'observation.environment_state' is missing" in message
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_learner_mixes_a_real_dataset_into_its_updates(tmp_path, synthetic_dataset, torch_single_thread):
    """`lerobot-pi-rl-train`'s learner and actor (threads, real gRPC): PickCube rollouts + the synthetic dataset at
    ratio 0.5; the metrics carry the offline term and share, the SFT forward saw dataset chunks."""
    from test_runtime import run_in_threads

    args = _learner_args(tmp_path, num_updates=2, checkpoint_every_updates=0, **{
        "algorithm.offline.ratio": 0.5, "algorithm.offline.repo_ids": f"[{SYNTHETIC_REPO_ID}]",
        "algorithm.offline.roots": f"[{synthetic_dataset}]", "algorithm.offline.loss_weight": 0.5})
    seen = []

    def spy(learner):
        real = learner.policy.forward

        def forward(batch, reduction="mean"):
            seen.append((tuple(batch[ACTION].shape), set(batch)))
            return real(batch, reduction)

        learner.policy.forward = forward

    learner = run_in_threads(args, prepare_learner=spy)
    assert learner.algorithm.offline.num_frames == 120
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in rows] == [1, 2]
    for r in rows:
        assert r["rollout/offline_share"] == 0.5
        assert np.isfinite(r["loss/offline_fm"]) and r["loss/offline_fm"] > 0
    # rollout_chunks 16 = one minibatch of 16 online rows per epoch, 16 offline rows with it; one epoch per update.
    assert len(seen) == 2
    assert all(shape == (16, 4, 4) and "action_is_pad" in keys for shape, keys in seen)

    # The checkpoint's train config keeps the settings (a resumed or re-launched run mixes alike).
    from lerobot_policy_pi_rl.runtime.cli import load_config

    saved = tmp_path / "run" / "checkpoints" / "last" / "pretrained_model" / "train_config.json"
    offline = load_config([f"--config_path={saved}"]).algorithm.offline
    assert (offline.ratio, offline.loss_weight, offline.repo_ids) == (0.5, 0.5, [SYNTHETIC_REPO_ID])


def test_intervention_chunks_are_masked_from_ppo_and_trained_on_through_the_learner(tmp_path, torch_single_thread):
    """Transitions as an actor sends them (real chains, two chunks flagged as a human takeover) go through the
    learner's real queue, arrival check, update and metrics: the flagged chunks leave the PPO ratio and feed the
    flow-matching term through the intervention buffer, a flagged chunk too stale for PPO included."""
    from lerobot.transport.utils import transitions_to_bytes

    from lerobot_policy_pi_rl.runtime.cli import load_config
    from lerobot_policy_pi_rl.runtime.learner import build_learner
    from lerobot_policy_pi_rl.runtime.schema import ChunkOrigin, ChunkOutcome, chunk_transition

    args = _learner_args(tmp_path, num_updates=1, checkpoint_every_updates=0, **{
        "algorithm.rollout_chunks": 8, "algorithm.minibatch_size": 8, "algorithm.offline.ratio": 0.2,
        "algorithm.offline.interventions": "true", "algorithm.offline.intervention_buffer_size": 16})
    learner = build_learner(load_config(args), shutdown_event=threading.Event())
    try:
        policy = learner.policy
        # Weights at version 3 (as after three updates): rows of version 0 are past the staleness bound of 2.
        learner.algorithm.load_state_dict({"policy_version": torch.tensor(3), "num_updates": torch.tensor(0),
                                           "optimization_step": torch.tensor(0)})
        g = torch.Generator().manual_seed(0)
        obs = {OBS_STATE: torch.randn(8, 18, generator=g), OBS_ENV_STATE: torch.randn(8, 3, generator=g)}
        sample = policy.sample_chain(obs, generator=g)
        flagged = [2, 5]
        executed = {i: torch.full((4, 4), 0.1 * i) for i in range(8)}
        rows = []
        for i in range(8):
            outcome = ChunkOutcome(next_observation={}, executed=executed[i], reward=float(i), terminated=False,
                                   truncated=i == 7, success=False, intervention=i in flagged)
            rows.append(chunk_transition(
                observation={k: v[i : i + 1] for k, v in obs.items()},
                next_observation={k: v[i : i + 1] for k, v in obs.items()}, sample=sample, row=i,
                outcome=outcome, origin=ChunkOrigin(3, learner.session, 0, i)))
        stale = ChunkOutcome(next_observation={}, executed=torch.full((2, 4), -0.5), reward=0.0, terminated=False,
                             truncated=False, success=False, intervention=True)
        rows.append(chunk_transition(observation={k: v[:1] for k, v in obs.items()},
                                     next_observation={k: v[:1] for k, v in obs.items()}, sample=sample, row=0,
                                     outcome=stale, origin=ChunkOrigin(0, learner.session, 1, 0)))
        learner.transport.transition_queue.put(transitions_to_bytes(rows))
        assert learner.run() == 0
    finally:
        learner.close()

    buffer = learner.algorithm.offline.interventions
    assert len(buffer) == 3 and buffer.added == 3
    # No dataset stats on this run: the normalizer is the identity, the chunk is the executed actions, padded.
    stored = buffer.batch([0, 1, 2])
    torch.testing.assert_close(stored[ACTION][:2], torch.stack([executed[2], executed[5]]))
    torch.testing.assert_close(stored[ACTION][2, :2], torch.full((2, 4), -0.5))
    assert stored["action_is_pad"].tolist() == [[False] * 4, [False] * 4, [False, False, True, True]]
    torch.testing.assert_close(stored[OBS_STATE], obs[OBS_STATE][[2, 5, 0]])
    (log,) = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert log["samples/interventions"] == 2 and log["samples/used"] == 6
    assert log["rollout/dropped_stale"] == 1
    # round(0.25 * 8) = 2 offline rows with the minibatch of 8 online rows (one epoch).
    assert log["rollout/offline_share"] == pytest.approx(0.2)
    assert np.isfinite(log["loss/offline_fm"])


# ----------------------------------------------------------------------------------------------------------------
# A VLA backbone: the debug-size SmolVLA
# ----------------------------------------------------------------------------------------------------------------


def test_debug_smolvla_mixes_dataset_frames_and_intervention_chunks(tmp_path, monkeypatch, torch_single_thread):
    import lerobot.utils.constants as constants
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from test_debug_smolvla import ACTION_DIM, IMAGE_KEY, STATE_DIM, make_config, observation, stats

    from lerobot_policy_pi_rl.processor_pi_rl import make_pi_rl_pre_post_processors
    from lerobot_policy_pi_rl.runtime.offline import (
        InterventionBuffer,
        OfflineSource,
        action_normalizer,
        load_offline_datasets,
        sft_keys,
    )

    monkeypatch.setattr(constants, "HF_LEROBOT_HOME", tmp_path / "lerobot_home")
    root = tmp_path / "vla_demos"
    features = {
        IMAGE_KEY: {"dtype": "image", "shape": (32, 32, 3), "names": ["height", "width", "channels"]},
        OBS_STATE: {"dtype": "float32", "shape": (STATE_DIM,), "names": None},
        ACTION: {"dtype": "float32", "shape": (ACTION_DIM,), "names": None},
    }
    ds = LeRobotDataset.create(repo_id="local/vla", fps=10, features=features, root=root, use_videos=False)
    rng = np.random.default_rng(0)
    for _ in range(8):
        ds.add_frame({IMAGE_KEY: rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
                      OBS_STATE: rng.standard_normal(STATE_DIM).astype(np.float32),
                      ACTION: rng.standard_normal(ACTION_DIM).astype(np.float32), "task": "pick up the cube"})
    ds.save_episode()
    ds.finalize()

    torch.manual_seed(0)
    config = make_config()
    policy = PiRLPolicy(config)
    pre, _ = make_pi_rl_pre_post_processors(config, stats())
    offline = OfflineConfig(ratio=0.5, repo_ids=["local/vla"], roots=[str(root)], interventions=True)
    buffer = InterventionBuffer(4, chunk_size=config.chunk_size, normalize_action=action_normalizer(pre))
    source = OfflineSource(load_offline_datasets(offline, config), pre, keys=sft_keys(config), interventions=buffer,
                           device="cpu", seed=0)
    obs = pre(observation(batch=4))
    for i in range(2):
        buffer.add({k: v[i : i + 1] for k, v in obs.items() if torch.is_tensor(v)}, torch.randn(3, ACTION_DIM))

    algo = PiRLAlgorithm(policy, PiRLAlgorithmConfig(policy_config=config, update_epochs=1, minibatch_size=4,
                                                     offline=offline))
    drawn = []
    real_sample = source.sample
    source.sample = lambda rows: drawn.append(real_sample(rows)) or drawn[-1]
    algo.offline = source
    before = snapshot(policy)
    torch.manual_seed(1)
    result = algo.update_rollout(rollout_of(policy, obs))
    # Both origins fed the SFT forward: dataset frames (tokenized by the VLA processor) and buffered chunks.
    (parts,) = drawn
    assert sorted(p.rows for p in parts) == [1, 3] and parts[1].batch[ACTION].shape == (1, config.chunk_size, 4)
    assert result.steps_taken == 1 and result.steps_skipped == 0
    assert result.stats.extra["rollout/offline_share"] == 0.5
    assert np.isfinite(result.stats.losses["offline_fm"])
    moved = [k for k, v in snapshot(policy).items() if not torch.equal(v, before[k])]
    assert any(k.startswith("backbone.") for k in moved)
