"""Record scripted PickCube demonstrations as a local LeRobotDataset (v3, no videos).

    python -m lerobot_policy_pi_rl.scripts.record_demos --output_dir data/pickcube --num_episodes 50 \\
        --action_noise 0.3 --seed 0 [--state_includes_cube] [--camera front --camera_size 32]

The env's observation options (`--state_includes_cube`, `--camera`, `--camera_size`; see `envs/pickcube.py`) shape
the dataset: the state gets `cube_x/y/z` appended instead of an `observation.environment_state` feature, and a
camera adds `observation.images.<name>` (dtype `image`: PNG frames, no video decoding at training time).

Episode i is rolled out on env seed `seed + i` (the cube position) with controller noise seeded from it, so a
dataset is reproducible from its arguments. Each frame holds the observation the action was taken from, the
action, and the step's `next.reward`, `next.done`, `next.success`. All episodes are kept by default (their
success is in the report); `--success_only` keeps successful ones until `num_episodes` are kept.

Then, e.g.: lerobot-train --policy.type=pi_rl --dataset.repo_id=local/pickcube --dataset.root=data/pickcube ...
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from lerobot.utils.constants import ACTION, DONE, OBS_ENV_STATE, OBS_IMAGES, OBS_STATE, REWARD

from ..envs.pickcube import AGENT_POS_DIM, CAMERAS, CUBE_DIM, PickCubeStateEnvConfig, make_pickcube_env
from ..envs.scripted import ScriptedPickController, run_scripted_episode

SUCCESS = "next.success"

STATE_NAMES = (
    [f"joint{i}_pos" for i in range(1, 8)]
    + [f"joint{i}_vel" for i in range(1, 8)]
    + ["gripper_command", "tcp_x", "tcp_y", "tcp_z"]
)
CUBE_NAMES = ["cube_x", "cube_y", "cube_z"]
ACTION_NAMES = ["delta_x", "delta_y", "delta_z", "gripper"]


def dataset_features(env_cfg: PickCubeStateEnvConfig | None = None) -> dict[str, dict[str, Any]]:
    """LeRobotDataset features of a PickCube demo recorded with `env_cfg`'s observation options (default:
    state-only, no image keys). Images are stored as `image` (PNG) features, never videos."""
    env_cfg = env_cfg or PickCubeStateEnvConfig()
    assert len(STATE_NAMES) == AGENT_POS_DIM and len(CUBE_NAMES) == CUBE_DIM
    features: dict[str, dict[str, Any]] = {}
    if env_cfg.state_includes_cube:
        features[OBS_STATE] = {"dtype": "float32", "shape": (env_cfg.state_dim,), "names": STATE_NAMES + CUBE_NAMES}
    else:
        features[OBS_STATE] = {"dtype": "float32", "shape": (AGENT_POS_DIM,), "names": STATE_NAMES}
        features[OBS_ENV_STATE] = {"dtype": "float32", "shape": (CUBE_DIM,), "names": CUBE_NAMES}
    if env_cfg.camera_name is not None:
        size = env_cfg.camera_size
        features[f"{OBS_IMAGES}.{env_cfg.camera_name}"] = {
            "dtype": "image", "shape": (size, size, 3), "names": ["height", "width", "channels"],
        }
    features.update({
        ACTION: {"dtype": "float32", "shape": (len(ACTION_NAMES),), "names": ACTION_NAMES},
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


def record_demos(
    output_dir: str | Path,
    *,
    num_episodes: int,
    action_noise: float = 0.0,
    epsilon: float = 0.0,
    seed: int = 0,
    success_only: bool = False,
    repo_id: str = "local/pickcube",
    env_cfg: PickCubeStateEnvConfig | None = None,
    max_attempts: int | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Roll out the scripted controller and write a LeRobotDataset at `output_dir` (must not exist).

    Returns the recording report (also written to `<output_dir>/recording_report.json`).
    """
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    if num_episodes < 1:
        raise ValueError(f"num_episodes={num_episodes} must be >= 1")
    output_dir = Path(output_dir)
    if output_dir.exists():
        raise FileExistsError(f"output_dir {output_dir} exists; LeRobotDataset.create needs a new directory")
    env_cfg = env_cfg or PickCubeStateEnvConfig()
    max_attempts = max_attempts or (10 * num_episodes if success_only else num_episodes)

    features = dataset_features(env_cfg)
    dataset = LeRobotDataset.create(
        repo_id=repo_id,
        root=output_dir,
        fps=env_cfg.fps,
        features=features,
        robot_type="panda",
        use_videos=False,
    )
    env = make_pickcube_env(env_cfg)
    controller = ScriptedPickController(action_noise=action_noise, epsilon=epsilon)
    start = time.perf_counter()
    attempts: list[dict[str, Any]] = []
    kept = 0
    try:
        while kept < num_episodes and len(attempts) < max_attempts:
            episode_seed = seed + len(attempts)
            frames: list[dict[str, Any]] = []

            def on_step(obs, action, reward, terminated, truncated, info, frames=frames):
                frames.append(
                    {
                        **_frame_observation(obs, features),
                        ACTION: np.asarray(action, dtype=np.float32),
                        REWARD: np.array([reward], dtype=np.float32),
                        DONE: np.array([terminated or truncated], dtype=bool),
                        SUCCESS: np.array([bool(info.get("is_success", False))], dtype=bool),
                        "task": env_cfg.task_description,
                    }
                )

            result = run_scripted_episode(env, controller, seed=episode_seed, on_step=on_step)
            keep = result["success"] or not success_only
            if keep:
                for frame in frames:
                    dataset.add_frame(frame)
                dataset.save_episode()
                kept += 1
            attempts.append({"seed": episode_seed, **result, "kept": keep})
            if verbose:
                n_success = sum(a["success"] for a in attempts)
                print(
                    f"[{len(attempts):4d}] seed={episode_seed} success={result['success']!s:5} "
                    f"steps={result['steps']:3d} | kept {kept}/{num_episodes}, "
                    f"success {n_success}/{len(attempts)} ({100.0 * n_success / len(attempts):.1f}%)",
                    flush=True,
                )
    finally:
        dataset.finalize()
        env.close()

    kept_attempts = [a for a in attempts if a["kept"]]
    report = {
        "output_dir": str(output_dir),
        "repo_id": repo_id,
        "num_episodes": kept,
        "num_frames": int(sum(a["steps"] for a in kept_attempts)),
        "attempts": len(attempts),
        "success_rate_all_attempts": sum(a["success"] for a in attempts) / max(len(attempts), 1),
        "success_rate_kept": sum(a["success"] for a in kept_attempts) / max(kept, 1),
        "mean_length_kept": float(np.mean([a["steps"] for a in kept_attempts])) if kept_attempts else None,
        "success_only": success_only,
        "action_noise": action_noise,
        "epsilon": epsilon,
        "seed": seed,
        "task": env_cfg.task_description,
        "env": {k: v for k, v in asdict(env_cfg).items() if k not in ("features", "features_map")},
        "wall_time_s": round(time.perf_counter() - start, 2),
        "episodes": attempts,
    }
    (output_dir / "recording_report.json").write_text(json.dumps(report, indent=2))
    if kept < num_episodes:
        print(f"WARNING: kept only {kept}/{num_episodes} episodes after {len(attempts)} attempts")
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Record scripted PickCube demonstrations as a local LeRobotDataset (v3, no videos).",
    )
    parser.add_argument("--output_dir", required=True, help="dataset root to create (must not exist)")
    parser.add_argument("--num_episodes", type=int, required=True, help="episodes to write")
    parser.add_argument("--action_noise", type=float, default=0.0, help="Gaussian action noise std (all 4 dims)")
    parser.add_argument("--epsilon", type=float, default=0.0, help="probability of a uniformly random action")
    parser.add_argument("--seed", type=int, default=0, help="episode i uses env seed seed+i")
    parser.add_argument(
        "--success_only", action="store_true", help="keep only successful episodes (default: keep all)"
    )
    parser.add_argument("--repo_id", default="local/pickcube", help="dataset repo id stored in the metadata")
    parser.add_argument("--episode_length", type=int, default=100, help="env step limit per episode")
    parser.add_argument(
        "--fixed_cube", action="store_true", help="gym_hil's fixed cube at (0.5, 0) instead of a seeded random one"
    )
    parser.add_argument("--task", default=None, help="task string stored with every frame")
    parser.add_argument(
        "--state_includes_cube", action="store_true",
        help="append the cube xyz to observation.state (21 dims) instead of an observation.environment_state",
    )
    parser.add_argument(
        "--camera", default="none", choices=CAMERAS,
        help="camera image observation.images.<name>: front / wrist (rendered), blank (all-zero frame named front)",
    )
    parser.add_argument("--camera_size", type=int, default=32, help="side of the square camera frame (pixels)")
    return parser.parse_args(argv)


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse `argv`, run, and return the JSON-able result."""
    args = parse_args(argv)
    env_cfg = PickCubeStateEnvConfig(
        episode_length=args.episode_length, randomize_cube=not args.fixed_cube,
        state_includes_cube=args.state_includes_cube, camera=args.camera, camera_size=args.camera_size,
    )
    if args.task:
        env_cfg.task_description = args.task
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
