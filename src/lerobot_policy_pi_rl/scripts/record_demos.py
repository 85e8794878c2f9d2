"""Record scripted demonstrations as a local LeRobotDataset (v3, no videos): PickCube or MetaWorld.

    lerobot-pi-rl-record-demos --output_dir data/pickcube --num_episodes 50 --action_noise 0.3 --seed 0 \\
        [--state_includes_cube] [--camera front --camera_size 32]
    lerobot-pi-rl-record-demos --env.type=pi_rl_metaworld --env.task=push-v3,drawer-open-v3 \\
        --output_dir data/mw --num_episodes 20 [--action_noise 0.1] [--seed 0] [--env.task_one_hot=true]

The env is `--env.type` (default `pi_rl_pickcube`) with its fields as `--env.<field>=<value>` (see `env_args`);
PickCube's observation options also have the shorthands `--state_includes_cube`, `--camera`, `--camera_size`,
`--episode_length`, `--fixed_cube`, `--task`.

PickCube: the scripted pick controller (`envs/scripted.py`). The observation options shape the dataset: the state
gets `cube_x/y/z` appended instead of an `observation.environment_state` feature, and a camera adds
`observation.images.<name>` (dtype `image`: PNG frames, no video decoding at training time).

MetaWorld: MetaWorld's own scripted expert of each task, with Gaussian noise of std `--action_noise` added to its
action (then clipped to [-1, 1]) and, with probability `--epsilon`, a uniformly random action instead.
`--num_episodes` is per task; a task list (or `mt10`) writes every task's episodes into one dataset, each frame's
`task` being the task's language instruction. Features: `observation.state` (39, or 89 with
`--env.task_one_hot=true`), `action` (4), fps 80.

Episode i (of each task) is rolled out on env seed `seed + i` (the scene: cube position, or MetaWorld's object and
goal; every task uses the same seeds) with the action noise drawn from a generator seeded from it, so a dataset is
reproducible from its arguments. Each frame holds the observation the action was taken from, the action, and the
step's `next.reward`, `next.done`, `next.success`. All episodes are kept by default (their success is in the
report, per task in `per_task`); `--success_only` keeps successful ones until `num_episodes` are kept (per task).

Then, e.g.: lerobot-train --policy.type=pi_rl --dataset.repo_id=local/pickcube --dataset.root=data/pickcube ...
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lerobot.envs.configs import EnvConfig
from lerobot.utils.constants import ACTION, DONE, OBS_ENV_STATE, OBS_IMAGES, OBS_STATE, REWARD

from ..envs.metaworld import ACTION_NAMES as METAWORLD_ACTION_NAMES
from ..envs.metaworld import MetaWorldStateEnvConfig, make_metaworld_env
from ..envs.pickcube import AGENT_POS_DIM, CUBE_DIM, PickCubeStateEnvConfig, make_pickcube_env
from ..envs.scripted import ScriptedPickController, run_scripted_episode
from .env_args import add_pickcube_shorthands, env_config_from_args, env_options

SUCCESS = "next.success"

STATE_NAMES = (
    [f"joint{i}_pos" for i in range(1, 8)]
    + [f"joint{i}_vel" for i in range(1, 8)]
    + ["gripper_command", "tcp_x", "tcp_y", "tcp_z"]
)
CUBE_NAMES = ["cube_x", "cube_y", "cube_z"]
ACTION_NAMES = ["delta_x", "delta_y", "delta_z", "gripper"]
# Default dataset repo id (metadata only; `--dataset.root` locates the data) and robot of each env type.
DEFAULT_REPO_IDS = {"pi_rl_pickcube": "local/pickcube", "pi_rl_metaworld": "local/metaworld"}
ROBOT_TYPES = {"pi_rl_pickcube": "panda", "pi_rl_metaworld": "sawyer"}


def _check_env_type(env_cfg: EnvConfig) -> None:
    if not isinstance(env_cfg, (PickCubeStateEnvConfig, MetaWorldStateEnvConfig)):
        raise ValueError(f"--env.type={env_cfg.type}: demonstrations can be recorded on "
                         f"{', '.join(DEFAULT_REPO_IDS)} (envs with a scripted expert)")


def dataset_features(env_cfg: EnvConfig | None = None) -> dict[str, dict[str, Any]]:
    """LeRobotDataset features of a demo recorded on `env_cfg` (default: state-only PickCube, no image keys).
    Images are stored as `image` (PNG) features, never videos."""
    env_cfg = env_cfg or PickCubeStateEnvConfig()
    _check_env_type(env_cfg)
    features: dict[str, dict[str, Any]] = {}
    if isinstance(env_cfg, MetaWorldStateEnvConfig):
        features[OBS_STATE] = {"dtype": "float32", "shape": (env_cfg.state_dim,), "names": env_cfg.state_names}
        action_names = METAWORLD_ACTION_NAMES
    else:
        assert len(STATE_NAMES) == AGENT_POS_DIM and len(CUBE_NAMES) == CUBE_DIM
        if env_cfg.state_includes_cube:
            features[OBS_STATE] = {
                "dtype": "float32", "shape": (env_cfg.state_dim,), "names": STATE_NAMES + CUBE_NAMES,
            }
        else:
            features[OBS_STATE] = {"dtype": "float32", "shape": (AGENT_POS_DIM,), "names": STATE_NAMES}
            features[OBS_ENV_STATE] = {"dtype": "float32", "shape": (CUBE_DIM,), "names": CUBE_NAMES}
        if env_cfg.camera_name is not None:
            size = env_cfg.camera_size
            features[f"{OBS_IMAGES}.{env_cfg.camera_name}"] = {
                "dtype": "image", "shape": (size, size, 3), "names": ["height", "width", "channels"],
            }
        action_names = ACTION_NAMES
    features.update({
        ACTION: {"dtype": "float32", "shape": (len(action_names),), "names": list(action_names)},
        REWARD: {"dtype": "float32", "shape": (1,), "names": None},
        DONE: {"dtype": "bool", "shape": (1,), "names": None},
        SUCCESS: {"dtype": "bool", "shape": (1,), "names": None},
    })
    return features


def _frame_observation(obs: dict[str, np.ndarray], features: dict[str, dict[str, Any]]) -> dict[str, np.ndarray]:
    """The dataset's observation values from a LeRobot-keyed env observation.

    Images come from the env as float32 `(3, H, W)` in [0, 1] (exactly `uint8 / 255`); they are stored as the
    uint8 `(H, W, 3)` frames they were made from (rounding undoes the division exactly).
    """
    values = {}
    for key, feature in features.items():
        if not key.startswith("observation."):
            continue
        if feature["dtype"] == "image":
            values[key] = np.round(np.asarray(obs[key]).transpose(1, 2, 0) * 255.0).astype(np.uint8)
        else:
            values[key] = np.asarray(obs[key], dtype=np.float32)
    return values


def _frame(obs, features, action, reward, terminated, truncated, info, instruction: str) -> dict[str, Any]:
    return {
        **_frame_observation(obs, features),
        ACTION: np.asarray(action, dtype=np.float32),
        REWARD: np.array([reward], dtype=np.float32),
        DONE: np.array([terminated or truncated], dtype=bool),
        SUCCESS: np.array([bool(info.get("is_success", False))], dtype=bool),
        "task": instruction,
    }


# An episode runner: env seed -> (frames, {success, steps, return}).
EpisodeRunner = Callable[[int], tuple[list[dict[str, Any]], dict[str, Any]]]


def _pickcube_runner(env, env_cfg: PickCubeStateEnvConfig, features, *, action_noise: float,
                     epsilon: float) -> EpisodeRunner:
    controller = ScriptedPickController(action_noise=action_noise, epsilon=epsilon)

    def run_episode(episode_seed: int):
        frames: list[dict[str, Any]] = []

        def on_step(obs, action, reward, terminated, truncated, info):
            frames.append(_frame(obs, features, action, reward, terminated, truncated, info, env_cfg.task_description))

        return frames, run_scripted_episode(env, controller, seed=episode_seed, on_step=on_step)

    return run_episode


def perturb(action: np.ndarray, rng: np.random.Generator, *, action_noise: float, epsilon: float) -> np.ndarray:
    """With probability `epsilon` a uniform random action in [-1, 1]^4, else `action` plus Gaussian noise of std
    `action_noise`; clipped to [-1, 1], float32."""
    if epsilon > 0 and rng.random() < epsilon:
        action = rng.uniform(-1.0, 1.0, size=action.shape)
    elif action_noise > 0:
        action = action + rng.normal(0.0, action_noise, size=action.shape)
    return np.clip(action, -1.0, 1.0).astype(np.float32)


def _metaworld_runner(env, features, *, action_noise: float, epsilon: float) -> EpisodeRunner:
    base = env.unwrapped

    def run_episode(episode_seed: int):
        # The noise generator is seeded from `(seed, 1)`: replayable from the seed, apart from the scene's draw.
        rng = np.random.default_rng((episode_seed, 1))
        obs, _ = env.reset(seed=episode_seed)
        frames: list[dict[str, Any]] = []
        success, total = False, 0.0
        while True:
            action = perturb(base.expert_action(), rng, action_noise=action_noise, epsilon=epsilon)
            next_obs, reward, terminated, truncated, info = env.step(action)
            frames.append(_frame(obs, features, action, reward, terminated, truncated, info, base.task_description))
            success = success or bool(info.get("is_success", False))
            total += float(reward)
            obs = next_obs
            if terminated or truncated:
                return frames, {"success": success, "steps": len(frames), "return": total}

    return run_episode


def record_demos(
    output_dir: str | Path,
    *,
    num_episodes: int,
    action_noise: float = 0.0,
    epsilon: float = 0.0,
    seed: int = 0,
    success_only: bool = False,
    repo_id: str | None = None,
    env_cfg: EnvConfig | None = None,
    max_attempts: int | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Roll out the env's scripted expert and write a LeRobotDataset at `output_dir` (must not exist).

    `num_episodes` and `max_attempts` (default: `10 * num_episodes` with `success_only`, else `num_episodes`)
    count per task. Returns the recording report (also written to `<output_dir>/recording_report.json`).
    """
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    if num_episodes < 1:
        raise ValueError(f"num_episodes={num_episodes} must be >= 1")
    if action_noise < 0:
        raise ValueError(f"action_noise={action_noise} must be >= 0")
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon={epsilon} must be in [0, 1]")
    output_dir = Path(output_dir)
    if output_dir.exists():
        raise FileExistsError(f"output_dir {output_dir} exists; LeRobotDataset.create needs a new directory")
    env_cfg = env_cfg or PickCubeStateEnvConfig()
    features = dataset_features(env_cfg)
    repo_id = repo_id or DEFAULT_REPO_IDS[env_cfg.type]
    max_attempts = max_attempts or (10 * num_episodes if success_only else num_episodes)
    metaworld = isinstance(env_cfg, MetaWorldStateEnvConfig)
    tasks = env_cfg.tasks if metaworld else (env_cfg.task,)

    dataset = LeRobotDataset.create(
        repo_id=repo_id,
        root=output_dir,
        fps=env_cfg.fps,
        features=features,
        robot_type=ROBOT_TYPES[env_cfg.type],
        use_videos=False,
    )
    start = time.perf_counter()
    attempts: list[dict[str, Any]] = []
    per_task: dict[str, dict[str, Any]] = {}
    try:
        for task in tasks:
            if metaworld:
                env = make_metaworld_env(env_cfg, task)
                instruction = env.unwrapped.task_description
                run_episode = _metaworld_runner(env, features, action_noise=action_noise, epsilon=epsilon)
            else:
                env = make_pickcube_env(env_cfg)
                instruction = env_cfg.task_description
                run_episode = _pickcube_runner(env, env_cfg, features, action_noise=action_noise, epsilon=epsilon)
            task_attempts: list[dict[str, Any]] = []
            kept = 0
            try:
                while kept < num_episodes and len(task_attempts) < max_attempts:
                    episode_seed = seed + len(task_attempts)
                    frames, result = run_episode(episode_seed)
                    keep = result["success"] or not success_only
                    if keep:
                        for frame in frames:
                            dataset.add_frame(frame)
                        dataset.save_episode()
                        kept += 1
                    task_attempts.append({"task": task, "seed": episode_seed, **result, "kept": keep})
                    if verbose:
                        n_success = sum(a["success"] for a in task_attempts)
                        label = f"{task} " if metaworld else ""
                        print(
                            f"{label}[{len(task_attempts):4d}] seed={episode_seed} success={result['success']!s:5} "
                            f"steps={result['steps']:3d} | kept {kept}/{num_episodes}, "
                            f"success {n_success}/{len(task_attempts)} "
                            f"({100.0 * n_success / len(task_attempts):.1f}%)",
                            flush=True,
                        )
            finally:
                env.close()
            attempts += task_attempts
            per_task[task] = {"instruction": instruction, **_attempt_stats(task_attempts)}
            if kept < num_episodes:
                print(f"WARNING: {task}: kept only {kept}/{num_episodes} episodes after {len(task_attempts)} attempts")
    finally:
        dataset.finalize()

    report = {
        "output_dir": str(output_dir),
        "repo_id": repo_id,
        **_attempt_stats(attempts),
        "success_only": success_only,
        "action_noise": action_noise,
        "epsilon": epsilon,
        "seed": seed,
        "task": env_cfg.task if metaworld else env_cfg.task_description,
        "tasks": list(tasks),
        "per_task": per_task,
        "env": env_options(env_cfg),
        "wall_time_s": round(time.perf_counter() - start, 2),
        "episodes": attempts,
    }
    (output_dir / "recording_report.json").write_text(json.dumps(report, indent=2))
    return report


def _attempt_stats(attempts: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts of recorded attempts: kept episodes and frames, the expert's success rate over all attempts and over
    the kept episodes."""
    kept = [a for a in attempts if a["kept"]]
    return {
        "num_episodes": len(kept),
        "num_frames": int(sum(a["steps"] for a in kept)),
        "attempts": len(attempts),
        "success_rate_all_attempts": sum(a["success"] for a in attempts) / max(len(attempts), 1),
        "success_rate_kept": sum(a["success"] for a in kept) / max(len(kept), 1),
        "mean_length_kept": float(np.mean([a["steps"] for a in kept])) if kept else None,
    }


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, EnvConfig]:
    parser = argparse.ArgumentParser(
        description="Record scripted demonstrations (PickCube's scripted controller, MetaWorld's experts) as a "
        "local LeRobotDataset (v3, no videos). The env: --env.type=pi_rl_pickcube (default) or pi_rl_metaworld, "
        "its fields as --env.<field>=<value>.",
    )
    parser.add_argument("--output_dir", required=True, help="dataset root to create (must not exist)")
    parser.add_argument("--num_episodes", type=int, required=True, help="episodes to write (per task)")
    parser.add_argument("--action_noise", type=float, default=0.0, help="Gaussian action noise std (all 4 dims)")
    parser.add_argument("--epsilon", type=float, default=0.0, help="probability of a uniformly random action")
    parser.add_argument("--seed", type=int, default=0, help="episode i (of each task) uses env seed seed+i")
    parser.add_argument(
        "--success_only", action="store_true", help="keep only successful episodes (default: keep all)"
    )
    parser.add_argument("--repo_id", default=None,
                        help="dataset repo id stored in the metadata (default local/pickcube or local/metaworld)")
    add_pickcube_shorthands(parser, task=True)
    args, leftover = parser.parse_known_args(argv)
    env_cfg = env_config_from_args(leftover, args)
    _check_env_type(env_cfg)
    return args, env_cfg


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse `argv`, run, and return the JSON-able result."""
    args, env_cfg = parse_args(argv)
    report = record_demos(
        args.output_dir,
        num_episodes=args.num_episodes,
        action_noise=args.action_noise,
        epsilon=args.epsilon,
        seed=args.seed,
        success_only=args.success_only,
        repo_id=args.repo_id,
        env_cfg=env_cfg,
    )
    summary = {k: v for k, v in report.items() if k != "episodes"}
    print(json.dumps(summary, indent=2))
    return report


def main(argv: list[str] | None = None) -> None:
    run(argv)


if __name__ == "__main__":
    main()
