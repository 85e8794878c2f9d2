"""Rollouts saved as a LeRobotDataset (`--record_rollouts=true`): each actor writes the episodes it finishes.

Layout: one dataset per actor process, `<rollouts_root>/actor_<i>` (default root `<output_dir>/rollouts`), since a
LeRobotDataset has one writer; a later run reads several of them as its offline source
(`--algorithm.offline.roots='[.../actor_0,.../actor_1]'`), and `lerobot-train` trains on any one of them.

One frame per env step, as `lerobot-pi-rl-record-demos` writes demonstrations: the observation the action was
taken from (every `observation.*` tensor the env gives, images as uint8 `(H, W, C)` PNG frames), the executed
action (the human's during an intervention), the task instruction, and the step's `next.reward`, `next.done`,
`next.truncated` (a time-out), `next.success`, plus `complementary_info.is_intervention`,
`complementary_info.policy_version` (of the weights that chose the action), `complementary_info.stream_id` and
`complementary_info.stream_episode` (the episode's index on its env stream). Features are taken from the first
recorded step; an observation with a leading batch dim of 1 (LeRobot's sim and robot envs) is stored without it.

Processes: the actor's env loop only copies each step's observation into its stream's episode (images already
converted to uint8) and, when an episode ends, stacks it into a few arrays and puts it on a queue; a writer
process does every `add_frame` / `save_episode` (a writer thread would take the GIL from the env loop for as long
as each episode's Python-side writing lasts). `close()` lets the writer save every episode still queued and
`finalize()` the dataset (its parquet files are readable only after that), and waits for it; an episode still
running is dropped. The writer ignores SIGINT/SIGTERM (Ctrl-C reaches the whole process group) and stops when told
to or when the actor process is gone: the episodes it has received are written even if the actor is killed.
"""

from __future__ import annotations

import atexit
import logging
import queue
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lerobot.utils.constants import ACTION, DONE, REWARD, SUCCESS, TRUNCATED

logger = logging.getLogger("lerobot_policy_pi_rl.actor")

INTERVENTION = "complementary_info.is_intervention"
POLICY_VERSION = "complementary_info.policy_version"
STREAM_ID = "complementary_info.stream_id"
STREAM_EPISODE = "complementary_info.stream_episode"
# Episodes the writer may lag behind before a hand-off waits for it (memory stays bounded on a slow disk).
MAX_QUEUED_EPISODES = 64
# How long an actor waits for its writer process to start (a spawned Python importing torch and LeRobot; seconds on
# an idle machine, more on a loaded one).
WRITER_START_TIMEOUT_S = 300.0


def rollouts_root(cfg) -> Path:
    return Path(cfg.rollouts_root) if cfg.rollouts_root is not None else Path(cfg.output_dir) / "rollouts"


def actor_rollouts_dir(cfg, actor_index: int) -> Path:
    """Where actor `actor_index` writes its dataset."""
    return rollouts_root(cfg) / f"actor_{actor_index}"


def check_rollouts_dirs(cfg, actor_indices) -> None:
    """Raise a `ValueError` naming the folder when one of the actors' dataset folders exists and is not empty (a
    LeRobotDataset is created in a new folder; an earlier run's rollouts are never touched)."""
    for i in actor_indices:
        path = actor_rollouts_dir(cfg, i)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise ValueError(
                f"record_rollouts: {path} already exists and is not empty (rollouts of an earlier run?); pass a new "
                f"--rollouts_root (now {str(rollouts_root(cfg))!r}) or move it away"
            )


def _unbatched(value: np.ndarray) -> np.ndarray:
    return value[0] if value.ndim in (2, 4) and value.shape[0] == 1 else value


def _is_image(value: np.ndarray) -> bool:
    return value.ndim == 3


def _observation_copy(observation: dict[str, Any]) -> dict[str, np.ndarray]:
    """The observation's `observation.*` tensors as numpy copies (numpy runs single-threaded; torch's intra-op
    threads can turn a tiny copy into milliseconds on a busy CPU). 3-d values are images (LeRobot's float
    `(C, H, W)` in [0, 1]), kept as the uint8 frames they came from (rounding undoes `/ 255` exactly)."""
    out = {}
    for key, value in observation.items():
        if torch.is_tensor(value):
            value = value.detach().cpu().numpy()
        if not key.startswith("observation.") or not isinstance(value, np.ndarray):
            continue
        array = _unbatched(value)
        if _is_image(array):
            out[key] = array.copy() if array.dtype == np.uint8 else np.rint(array * 255.0).astype(np.uint8)
        else:
            out[key] = np.array(array, dtype=np.float32).reshape(-1)
    return out


def _known_names(env_cfg) -> dict[str, list[str] | None]:
    """Feature names of the demonstrations `lerobot-pi-rl-record-demos` writes on this env (so rollouts and demos
    of one env share a schema); empty for other envs."""
    from ..scripts.record_demos import dataset_features

    try:
        return {k: f.get("names") for k, f in dataset_features(env_cfg).items()}
    except (ValueError, TypeError):
        return {}


def rollout_features(observation: dict[str, np.ndarray], action_dim: int, names: dict | None = None
                     ) -> dict[str, dict]:
    """LeRobotDataset features of a recorded step, from a copied observation (`_observation_copy`)."""
    names = names or {}
    features: dict[str, dict] = {}
    for key, value in observation.items():
        if _is_image(value):
            c, h, w = value.shape
            features[key] = {"dtype": "image", "shape": (h, w, c), "names": ["height", "width", "channels"]}
        else:
            dim = int(value.size)
            known = names.get(key)
            features[key] = {"dtype": "float32", "shape": (dim,),
                             "names": list(known) if known and len(known) == dim else
                             [f"{key.rsplit('.', 1)[-1]}_{j}" for j in range(dim)]}
    known = names.get(ACTION)
    features[ACTION] = {"dtype": "float32", "shape": (action_dim,),
                        "names": list(known) if known and len(known) == action_dim else
                        [f"action_{j}" for j in range(action_dim)]}
    features[REWARD] = {"dtype": "float32", "shape": (1,), "names": None}
    for key in (DONE, TRUNCATED, SUCCESS, INTERVENTION):
        features[key] = {"dtype": "bool", "shape": (1,), "names": None}
    for key in (POLICY_VERSION, STREAM_ID, STREAM_EPISODE):
        features[key] = {"dtype": "int64", "shape": (1,), "names": None}
    return features


class RolloutRecorder:
    """Per-stream episode buffers on the env loop's side; a writer process on the dataset's side.

    The env loop calls `begin(i, observation)` after each reset of stream i, `step(i, result, version)` after each
    env step, `end_episode(i)` when the episode is done, and `close()` once. Only whole episodes reach the dataset.
    """

    def __init__(self, root: Path, *, repo_id: str, fps: int, robot_type: str | None, stream_ids: list[int],
                 tasks: list[str], names: dict | None = None):
        import multiprocessing

        self.root = Path(root)
        self.stream_ids = stream_ids
        self.tasks = tasks
        self._observation: list[dict[str, np.ndarray] | None] = [None] * len(stream_ids)
        self._episodes: list[dict[str, list] | None] = [None] * len(stream_ids)
        self._started = [0] * len(stream_ids)
        # spawn: the actor holds gRPC threads, which a forked child must not inherit.
        context = multiprocessing.get_context("spawn")
        self._queue = context.Queue(maxsize=MAX_QUEUED_EPISODES)
        self._results = context.Queue()
        self._writer = context.Process(
            target=_writer_main, name="pi_rl-rollout-writer", daemon=False,
            args=(self._queue, self._results, str(self.root), repo_id, fps, robot_type, names or {}),
        )
        self._writer.start()
        self._closed = self._stop_sent = False
        self._wait_ready()
        # multiprocessing's own exit handler joins the writer; it must have been told to stop by then, also when
        # `close()` never ran (a second signal raised SystemExit first). atexit runs this one first (LIFO).
        atexit.register(self._stop_writer)
        #: Episodes handed to the writer / reported saved by it / dropped unfinished at `close()`.
        self.queued = self.saved = self.dropped = 0
        #: Env-loop seconds spent in `begin` / `step` / `end_episode` (the recording's cost to the actor) and steps.
        self.handoff_s = 0.0
        self.steps = 0

    # --- the env loop's side (cheap: copies and appends; pickling and writing happen elsewhere) ---

    def begin(self, i: int, observation: dict[str, Any]) -> None:
        """Stream i was reset to `observation`: its next episode starts (an unfinished one is dropped)."""
        t0 = time.perf_counter()
        self._observation[i] = _observation_copy(observation)
        self._episodes[i] = {"stream_episode": self._started[i], "steps": []}
        self._started[i] += 1
        self.handoff_s += time.perf_counter() - t0

    def step(self, i: int, result, policy_version: int) -> None:
        """Record stream i's step: `result` is the env stream's `StepResult` of the action taken from the
        observation given last."""
        t0 = time.perf_counter()
        if self._episodes[i] is None:
            raise RuntimeError(f"rollout recorder: stream {i} stepped before begin() (its reset was not recorded)")
        flags = (float(result.reward), bool(result.terminated), bool(result.truncated), bool(result.success),
                 bool(result.intervention), int(policy_version))
        action = np.array(result.executed_action.detach().cpu().numpy(), dtype=np.float32).reshape(-1)
        self._episodes[i]["steps"].append((self._observation[i], action, flags))
        self._observation[i] = _observation_copy(result.observation)
        self.steps += 1
        self.handoff_s += time.perf_counter() - t0

    def end_episode(self, i: int) -> None:
        """Stream i's episode is done: hand it to the writer. Raises if the writer has failed."""
        self._check_writer()
        t0 = time.perf_counter()
        episode, self._episodes[i] = self._episodes[i], None
        if episode is None or not episode["steps"]:
            return
        payload = _episode_payload(episode["steps"], stream_id=self.stream_ids[i],
                                   stream_episode=episode["stream_episode"], task=self.tasks[i])
        self._put(payload)
        self.queued += 1
        self.handoff_s += time.perf_counter() - t0
        logger.debug("[ACTOR] rollout episode queued: stream %d episode %d, %d frames", self.stream_ids[i],
                     episode["stream_episode"], len(episode["steps"]))

    def close(self) -> None:
        """Write every finished episode, drop unfinished ones, finalize the dataset (waits for the writer).
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.dropped += sum(1 for ep in self._episodes if ep is not None and ep["steps"])
        self._episodes = [None] * len(self._episodes)
        self._stop_writer()
        self._writer.join()
        atexit.unregister(self._stop_writer)
        error = self._drain_results()
        if self.queued or self.dropped:
            logger.info("[ACTOR] rollouts: %d episodes written to %s%s; env-loop hand-off %.1f us per step",
                        self.saved, self.root, f", {self.dropped} unfinished dropped" if self.dropped else "",
                        1e6 * self.handoff_s / max(self.steps, 1))
        if error is None and self._writer.exitcode != 0:
            error = f"the writer process exited with code {self._writer.exitcode}"
        if error is not None:
            raise RuntimeError(f"rollout recording to {self.root} failed: {error}")

    def written(self) -> int:
        """Episodes the writer has saved so far (it reports each one)."""
        self._check_writer()
        return self.saved

    def _put(self, item) -> None:
        """Queue `item` for the writer; when it is `MAX_QUEUED_EPISODES` behind, wait for room while it lives."""
        try:
            self._queue.put_nowait(item)
            return
        except queue.Full:
            logger.warning("[ACTOR] rollout writer is %d episodes behind: waiting for it", MAX_QUEUED_EPISODES)
        while True:
            try:
                self._queue.put(item, timeout=1.0)
                return
            except queue.Full:
                self._check_writer()

    def _wait_ready(self, timeout_s: float = WRITER_START_TIMEOUT_S) -> None:
        """Block until the writer has unpickled its queues and runs. A spawned child rebuilds the queues' locks from
        the parent's; an actor that exited while its writer was still starting (a Ctrl-C right after start-up)
        left a writer that could never start, and the episodes queued for it were lost."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                kind, value = self._results.get(timeout=0.5)
            except queue.Empty:
                if not self._writer.is_alive():
                    raise RuntimeError(f"rollout recording to {self.root} failed: the writer process exited with "
                                       f"code {self._writer.exitcode} while starting") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"rollout recording to {self.root} failed: the writer process did not start "
                                       f"within {timeout_s:.0f} s") from None
                continue
            if kind == "ready":
                return
            raise RuntimeError(f"rollout recording to {self.root} failed while the writer started: {value}")

    def _stop_writer(self) -> None:
        if not self._stop_sent and self._writer.is_alive():
            self._stop_sent = True
            self._put(None)

    def _drain_results(self) -> str | None:
        error = None
        while True:
            try:
                kind, value = self._results.get_nowait()
            except queue.Empty:
                return error
            if kind == "saved":
                self.saved += 1
            else:
                error = value

    def _check_writer(self) -> None:
        error = self._drain_results()
        if error is None and not self._writer.is_alive():
            error = f"the writer process exited with code {self._writer.exitcode}"
        if error is not None:
            self._closed = True
            raise RuntimeError(f"rollout recording to {self.root} failed: {error}")


def _episode_payload(steps: list, *, stream_id: int, stream_episode: int, task: str) -> dict[str, Any]:
    """An episode as a few stacked arrays (cheap to pickle): each column `[T, ...]`."""
    observations = [s[0] for s in steps]
    flags = list(zip(*(s[2] for s in steps), strict=True))
    columns = {key: np.stack([o[key] for o in observations]) for key in observations[0]}
    columns[ACTION] = np.stack([s[1] for s in steps])
    columns[REWARD] = np.asarray(flags[0], dtype=np.float32)[:, None]
    terminated, truncated = np.asarray(flags[1], dtype=bool), np.asarray(flags[2], dtype=bool)
    columns[DONE] = (terminated | truncated)[:, None]
    columns[TRUNCATED] = truncated[:, None]
    columns[SUCCESS] = np.asarray(flags[3], dtype=bool)[:, None]
    columns[INTERVENTION] = np.asarray(flags[4], dtype=bool)[:, None]
    columns[POLICY_VERSION] = np.asarray(flags[5], dtype=np.int64)[:, None]
    length = len(steps)
    columns[STREAM_ID] = np.full((length, 1), stream_id, dtype=np.int64)
    columns[STREAM_EPISODE] = np.full((length, 1), stream_episode, dtype=np.int64)
    return {"task": task, "columns": columns, "length": length}


def _episode_frames(payload: dict[str, Any]):
    columns = payload["columns"]
    for t in range(payload["length"]):
        frame = {key: value[t] for key, value in columns.items()}
        for key, value in frame.items():
            if value.ndim == 3:  # images: stored (C, H, W), written (H, W, C)
                frame[key] = value.transpose(1, 2, 0)
        yield {**frame, "task": payload["task"]}


def _payload_features(payload: dict[str, Any], names: dict) -> dict[str, dict]:
    columns = payload["columns"]
    observation = {k: v[0] for k, v in columns.items() if k.startswith("observation.")}
    return rollout_features(observation, int(columns[ACTION].shape[1]), names)


def _writer_main(episodes, results, root: str, repo_id: str, fps: int, robot_type: str | None,
                 names: dict) -> None:
    """The writer process: save each episode it receives; finalize when told to stop (None) or when the actor
    process is gone. It ignores SIGINT and SIGTERM: a Ctrl-C reaches the whole process group, and the actor
    decides when recording ends."""
    import multiprocessing
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    results.put(("ready", None))  # the queues are rebuilt: the actor may now exit at any time
    torch.set_num_threads(1)
    # Imported now, while the actor starts, not when the first episode arrives: the datasets stack takes seconds
    # to import, and a short run's `close()` would wait for it.
    from lerobot.datasets import LeRobotDataset

    parent = multiprocessing.parent_process()
    root_path = Path(root)
    dataset = None
    try:
        while True:
            try:
                payload = episodes.get(timeout=0.5)
            except queue.Empty:
                if parent is not None and not parent.is_alive():
                    return
                continue
            if payload is None:
                return
            if dataset is None:
                if root_path.is_dir() and not any(root_path.iterdir()):
                    root_path.rmdir()  # an empty folder given as the root; LeRobotDataset.create makes its own
                dataset = LeRobotDataset.create(repo_id=repo_id, root=root_path, fps=fps,
                                                features=_payload_features(payload, names), robot_type=robot_type,
                                                use_videos=False)
            for frame in _episode_frames(payload):
                dataset.add_frame(frame)
            dataset.save_episode()
            results.put(("saved", payload["length"]))
    except BaseException as err:  # noqa: BLE001 (reported to the actor at its next hand-off and at close)
        results.put(("error", f"{type(err).__name__}: {err}"))
        raise
    finally:
        if dataset is not None:
            dataset.finalize()


def build_recorder(cfg, streams, stream_ids: list[int]) -> RolloutRecorder | None:
    """The actor's recorder when `cfg.record_rollouts`, else None. Its folder is checked again here (the config
    checked it at parse time) but not created: the dataset is created with the first finished episode."""
    if not cfg.record_rollouts:
        return None
    check_rollouts_dirs(cfg, [cfg.actor_index])
    from ..scripts.record_demos import ROBOT_TYPES

    return RolloutRecorder(actor_rollouts_dir(cfg, cfg.actor_index), repo_id=cfg.rollouts_repo_id,
                           fps=int(getattr(cfg.env, "fps", None) or 30), robot_type=ROBOT_TYPES.get(cfg.env.type),
                           stream_ids=stream_ids, tasks=[s.task for s in streams], names=_known_names(cfg.env))
