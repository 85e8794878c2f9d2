"""The learner's offline source (`--algorithm.offline.*`): SFT batches from LeRobotDatasets and from chunks in
which a human intervened, for the flow-matching term PPO minibatches mix in (`rl/mixing.py`).

Dataset frames are loaded and preprocessed as `lerobot-train` does for this policy: the dataset's frame with the
action chunk of the policy's `action_delta_indices` (`action [H, A]`, `action_is_pad [H]`), collated, then the
learner's preprocessor (the same normalization the SFT checkpoint saved). Intervention chunks arrive already
preprocessed (the actor's observation) with the executed env actions `[C', A]`: the actions are normalized by the
preprocessor's normalizer and padded to H steps, the padding marked in `action_is_pad`.
Offline rows are drawn uniformly from the union of every dataset frame and every buffered chunk (HIL-SERL's
offline buffer holds demonstrations and interventions alike), with replacement.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, default_collate

from lerobot.configs.types import FeatureType
from lerobot.utils.constants import ACTION
from lerobot.utils.transition import Transition

from ..rl.mixing import OfflinePart
from .schema import IS_INTERVENTION

logger = logging.getLogger(__name__)

ACTION_IS_PAD = f"{ACTION}_is_pad"


class InterventionBuffer:
    """FIFO of intervention chunks as SFT rows: preprocessed observation, normalized action chunk, pad mask."""

    def __init__(self, capacity: int, *, chunk_size: int, normalize_action: Callable[[Tensor], Tensor]):
        if capacity < 1:
            raise ValueError(f"intervention buffer capacity={capacity} must be >= 1")
        self.chunk_size = chunk_size
        self.normalize_action = normalize_action
        self._rows: deque[dict[str, Tensor]] = deque(maxlen=capacity)
        #: Chunks ever added (the buffer keeps the newest `capacity`).
        self.added = 0

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, observation: dict[str, Tensor], executed: Tensor) -> None:
        """One chunk: `observation` preprocessed, each `[1, ...]`; `executed` env actions `[C', A]`, C' <= H."""
        steps = int(executed.shape[0])
        if not 1 <= steps <= self.chunk_size:
            raise ValueError(f"intervention chunk has {steps} executed actions, expected 1..{self.chunk_size}")
        normalized = self.normalize_action(executed.float()).detach().cpu().float()
        action = torch.zeros(1, self.chunk_size, normalized.shape[-1])
        action[0, :steps] = normalized
        is_pad = torch.ones(1, self.chunk_size, dtype=torch.bool)
        is_pad[0, :steps] = False
        row = {k: v.detach().cpu() for k, v in observation.items()}
        self._rows.append({**row, ACTION: action, ACTION_IS_PAD: is_pad})
        self.added += 1

    def batch(self, index: list[int]) -> dict[str, Tensor]:
        """Rows `index` stacked: every key `[B, ...]`."""
        rows = [self._rows[i] for i in index]
        return {k: torch.cat([r[k] for r in rows]) for k in rows[0]}


class OfflineSource:
    """Offline rows for `PiRLAlgorithm.offline` (the `OfflineBatches` protocol): dataset frames and buffered
    intervention chunks, sampled uniformly from their union."""

    def __init__(self, datasets: list, preprocessor, *, keys: set[str], interventions: InterventionBuffer | None,
                 device: str | torch.device, seed: int = 0):
        self.frames = ConcatDataset(datasets) if datasets else None
        self.preprocessor = preprocessor
        self.keys = keys
        self.interventions = interventions
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def num_frames(self) -> int:
        return len(self.frames) if self.frames is not None else 0

    def sample(self, rows: int) -> list[OfflinePart]:
        buffered = len(self.interventions) if self.interventions is not None else 0
        total = self.num_frames + buffered
        if rows <= 0 or total == 0:
            return []
        index = torch.randint(total, (rows,), generator=self.generator)
        parts = []
        from_frames = index[index < self.num_frames].tolist()
        if from_frames:
            parts.append(OfflinePart(self.dataset_batch(from_frames), len(from_frames)))
        from_buffer = (index[index >= self.num_frames] - self.num_frames).tolist()
        if from_buffer:
            batch = {k: v.to(self.device) for k, v in self.interventions.batch(from_buffer).items()}
            parts.append(OfflinePart(batch, len(from_buffer)))
        return parts

    def dataset_batch(self, index: list[int]) -> dict:
        """Frames `index` as `lerobot-train` feeds them to the policy: collated, then preprocessed."""
        items = [{k: v for k, v in self.frames[i].items() if k in self.keys} for i in index]
        return self.preprocessor(default_collate(items))

    def add_interventions(self, transitions: list[Transition]) -> int:
        """Buffer the chunks of `transitions` flagged as interventions; returns how many."""
        if self.interventions is None:
            return 0
        flagged = [tr for tr in transitions if bool(tr["complementary_info"][IS_INTERVENTION.key])]
        for tr in flagged:
            self.interventions.add(tr["state"], tr["action"])
        return len(flagged)


# ----------------------------------------------------------------------------------------------------------------
# Building it (before training starts: every bad setting fails here, naming the value)
# ----------------------------------------------------------------------------------------------------------------


def sft_keys(policy_cfg) -> set[str]:
    """Dataset keys the SFT forward reads: the policy's input features (and their pad masks), the action chunk,
    its pad mask, and the task string (the VLA processors tokenize it)."""
    inputs = set(policy_cfg.input_features or {})
    return inputs | {f"{k}_is_pad" for k in inputs} | {ACTION, ACTION_IS_PAD, "task"}


def check_dataset_features(policy_cfg, features: dict[str, dict], label: str) -> None:
    """Raise a `ValueError` naming `label` unless the dataset holds every policy input and the action, with the
    policy's shapes (images only by key: the processors resize them)."""
    from lerobot.utils.feature_utils import dataset_to_policy_features

    available = dataset_to_policy_features(features)
    problems = []
    for key, feature in {**(policy_cfg.input_features or {}), **(policy_cfg.output_features or {})}.items():
        if key not in available:
            problems.append(f"{key!r} is missing")
        elif feature.type is not FeatureType.VISUAL and tuple(available[key].shape) != tuple(feature.shape):
            problems.append(f"{key!r} has shape {tuple(available[key].shape)}, the policy {tuple(feature.shape)}")
    if problems:
        raise ValueError(
            f"{label} does not match the policy's features: {'; '.join(problems)} (dataset features: "
            f"{sorted(available)})"
        )


def load_offline_datasets(offline_cfg, policy_cfg) -> list:
    """The datasets of `offline_cfg` with the policy's action chunks (delta timestamps), checked against the
    policy's features."""
    from lerobot.datasets import LeRobotDataset, LeRobotDatasetMetadata, resolve_delta_timestamps

    datasets = []
    roots = offline_cfg.roots or [None] * len(offline_cfg.repo_ids)
    for i, (repo_id, root) in enumerate(zip(offline_cfg.repo_ids, roots, strict=True)):
        label = f"algorithm.offline.repo_ids[{i}]={repo_id!r}" + (f" (root {root})" if root else "")
        if root is not None and not (Path(root) / "meta" / "info.json").is_file():
            raise ValueError(f"algorithm.offline.roots[{i}]={root!r} holds no LeRobotDataset (no meta/info.json)")
        try:
            meta = LeRobotDatasetMetadata(repo_id, root=root)
        except Exception as err:  # noqa: BLE001 (any loading failure is reported with the setting that caused it)
            raise ValueError(f"{label}: cannot load the dataset ({type(err).__name__}: {err})") from err
        check_dataset_features(policy_cfg, meta.features, label)
        delta_timestamps = resolve_delta_timestamps(policy_cfg, meta)
        datasets.append(LeRobotDataset(repo_id, root=root, delta_timestamps=delta_timestamps))
        logger.info("[LEARNER] offline dataset %s: %d frames, %d episodes", repo_id, meta.total_frames,
                    meta.total_episodes)
    return datasets


def action_normalizer(preprocessor) -> Callable[[Tensor], Tensor]:
    """The preprocessor's action normalization as a function of an action tensor (identity without one)."""
    from lerobot.processor import NormalizerProcessorStep, TransitionKey
    from lerobot.processor.converters import create_transition

    steps = [s for s in getattr(preprocessor, "steps", []) if isinstance(s, NormalizerProcessorStep)]
    if not steps:
        return lambda action: action
    step = steps[0]
    return lambda action: step(create_transition(action=action))[TransitionKey.ACTION]


def build_offline_source(cfg, preprocessor) -> OfflineSource | None:
    """The offline source `cfg.algorithm.offline` describes, or None when mixing is off (ratio 0)."""
    offline = cfg.algorithm.offline
    if not offline.enabled:
        if offline.repo_ids:
            logger.warning("[LEARNER] algorithm.offline.repo_ids is set but algorithm.offline.ratio=0: unused")
        return None
    datasets = load_offline_datasets(offline, cfg.policy)
    buffer = None
    if offline.interventions:
        buffer = InterventionBuffer(offline.intervention_buffer_size, chunk_size=cfg.policy.chunk_size,
                                    normalize_action=action_normalizer(preprocessor))
    return OfflineSource(datasets, preprocessor, keys=sft_keys(cfg.policy), interventions=buffer,
                         device=cfg.policy.device, seed=cfg.seed or 0)
