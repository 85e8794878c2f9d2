"""Evaluate a checkpoint with fixed per-episode seeds on PickCube or MetaWorld (state-based).

    python -m lerobot_policy_pi_rl.scripts.evaluate \\
        --policy_path outputs/train/checkpoints/last/pretrained_model --num_episodes 100 --seed 1000 \\
        --output eval.json [--state_includes_cube] [--camera blank --camera_size 32]
    python -m lerobot_policy_pi_rl.scripts.evaluate --env.type=pi_rl_metaworld --env.task=push-v3,drawer-open-v3 \\
        --policy_path P --num_episodes 100 --seed 100000 --workers 2 --output eval.json

The env is `--env.type` (default `pi_rl_pickcube`) with its fields as `--env.<field>=<value>` (see `env_args`);
PickCube's observation options also have the shorthands `--state_includes_cube`, `--camera`, `--camera_size`,
`--episode_length`, `--fixed_cube`. They must be the ones the policy was trained with: a policy whose input
features the env does not produce (e.g. a 39-d MetaWorld policy on a `task_one_hot` env) is refused before any
episode runs.

`--num_episodes` counts per task (MetaWorld task lists, `mt10`; PickCube is one task); episode i of every task runs
on env seed `seed + i`. The policy acts through its saved processors with deterministic ODE sampling
(`select_action`, `stochastic_inference` forced off), reading the task's language instruction; `policy.reset()`
runs at every episode start. Episodes run in waves of `--num_envs` envs stepped side by side (one batched policy
call per step); the initial flow noise is seeded per wave from the wave's first episode seed, so results are
reproducible for a given (`--seed`, `--num_envs`). `--workers N` splits every task's waves over N processes (one
policy copy and one torch thread each): the same episodes and the same per-wave seeds, so the same results as one
process, sooner.

The JSON: success rate with its 95 % Wilson interval, mean return and length, env steps, seeds and per-episode
results pooled over all tasks at the top level, the same per task under `per_task`, and the env's success
definition (the only one used), for PickCube: the task success flag (`info["is_success"]`, gym_hil's `succeed`:
the cube lifted 0.1 m) true at any step of the episode; for MetaWorld: `info["success"]` true at any step (the
episode ends there). PickCube episodes also report `final_gripper_cube_distance_m`.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lerobot.configs import FeatureType
from lerobot.envs.configs import EnvConfig
from lerobot.utils.constants import OBS_STATE

from ..envs import metaworld as mw
from ..envs.pickcube import TCP_POS, PickCubeStateEnvConfig, cube_position, make_pickcube_env
from .env_args import add_pickcube_shorthands, env_config_from_args, env_config_from_options, env_options

PICKCUBE_SUCCESS_DEFINITION = (
    "an episode is a success if the env's task success flag (info['is_success'], gym_hil 'succeed': cube lifted "
    "0.1 m above its start) is true at any step of the episode"
)
SUCCESS_DEFINITIONS = {"pi_rl_pickcube": PICKCUBE_SUCCESS_DEFINITION, "pi_rl_metaworld": mw.SUCCESS_DEFINITION}
# The env fields that shape the observation (named when a policy's inputs do not match the env).
OBSERVATION_OPTIONS = {
    "pi_rl_pickcube": ("state_includes_cube", "camera", "camera_size"),
    "pi_rl_metaworld": ("task_one_hot",),
}
WILSON_Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = WILSON_Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95 % for the default z)."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n)) / denom
    # At 0 / n (n / n) the bound is 0 (1) exactly; `center - half` can leave a rounding residue of ~1e-17.
    low = 0.0 if successes == 0 else max(0.0, center - half)
    high = 1.0 if successes == n else min(1.0, center + half)
    return (low, high)


def eval_tasks(env_cfg: EnvConfig) -> tuple[str, ...]:
    """The tasks an evaluation runs `num_episodes` each on: MetaWorld's task list, PickCube's one task."""
    if isinstance(env_cfg, mw.MetaWorldStateEnvConfig):
        return env_cfg.tasks
    if isinstance(env_cfg, PickCubeStateEnvConfig):
        return (env_cfg.task,)
    raise ValueError(f"env type {env_cfg.type!r} cannot be evaluated here; supported: "
                     f"{', '.join(SUCCESS_DEFINITIONS)} (use lerobot-eval for LeRobot's own envs)")


def make_eval_env(env_cfg: EnvConfig, task: str):
    """One LeRobot-keyed env of `task` and the language instruction the policy reads on it."""
    if isinstance(env_cfg, mw.MetaWorldStateEnvConfig):
        env = mw.make_metaworld_env(env_cfg, task)
        return env, env.unwrapped.task_description
    eval_tasks(env_cfg)
    return make_pickcube_env(env_cfg), env_cfg.task_description


def load_policy(policy_path: str | Path, device: str | None = None):
    """A policy and its saved pre/post-processors from a `pretrained_model` directory.

    Any registered policy type (`config.json`'s `type`): pi_rl, or e.g. LeRobot's `gaussian_actor` (SAC).
    """
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    from .. import modeling_pi_rl  # noqa: F401  (registers pi_rl)
    from ..configuration_pi_rl import load_policy_config

    policy_path = str(policy_path)
    config = load_policy_config(policy_path)
    policy = get_policy_class(config.type).from_pretrained(policy_path, config=config)
    if device is not None:
        policy.config.device = device
    policy.to(policy.config.device)
    policy.eval()
    preprocessor, postprocessor = make_pre_post_processors(
        policy.config,
        pretrained_path=policy_path,
        preprocessor_overrides={"device_processor": {"device": str(policy.config.device)}},
    )
    return policy, preprocessor, postprocessor


def check_policy_matches_env(policy_config, env_cfg: EnvConfig) -> None:
    """Raise a ValueError naming the env options when the env does not produce the policy's inputs: every state
    feature with its shape, and the policy's images (those the env produces with their shape; at least one of
    them, as extra cameras a VLA fills in itself need not come from the env)."""
    from lerobot.envs import env_to_policy_features

    produced = {k: tuple(ft.shape) for k, ft in env_to_policy_features(env_cfg).items()}
    settings = ", ".join(f"{name}={getattr(env_cfg, name)!r}" for name in OBSERVATION_OPTIONS.get(env_cfg.type, ()))
    options = f"env: {settings + ', ' if settings else ''}observations {produced}"
    inputs = policy_config.input_features or {}
    images = [k for k, ft in inputs.items() if ft.type is FeatureType.VISUAL]
    for key, ft in inputs.items():
        if ft.type is FeatureType.VISUAL and key not in produced:
            continue
        if produced.get(key) != tuple(ft.shape):
            raise ValueError(f"the policy reads {key} of shape {tuple(ft.shape)}, which this env does not produce "
                             f"({options}); pass the env options the policy was trained with")
    if images and not any(k in produced for k in images):
        hint = ("pass --camera (and --camera_size) as in the policy's training data"
                if isinstance(env_cfg, PickCubeStateEnvConfig) else "this env has no camera")
        raise ValueError(f"the policy reads images {images} and this env produces none ({options}); {hint}")


def _batch_observations(observations: list[dict[str, np.ndarray]], task: str) -> dict[str, Any]:
    batch: dict[str, Any] = {
        key: torch.from_numpy(np.stack([obs[key] for obs in observations])).float() for key in observations[0]
    }
    batch["task"] = [task] * len(observations)
    return batch


def evaluate_policy(
    policy,
    preprocessor,
    postprocessor,
    *,
    env_cfg: EnvConfig | None = None,
    num_episodes: int,
    seed: int,
    num_envs: int = 4,
    verbose: bool = True,
    progress_prefix: str = "",
) -> dict[str, Any]:
    """Roll out `num_episodes` episodes (seeds `seed + i`) of every task and return per-episode results and
    aggregates (pooled, and per task)."""
    if num_episodes < 1:
        raise ValueError(f"num_episodes={num_episodes} must be >= 1")
    if num_envs < 1:
        raise ValueError(f"num_envs={num_envs} must be >= 1")
    env_cfg = env_cfg or PickCubeStateEnvConfig()
    tasks = eval_tasks(env_cfg)
    check_policy_matches_env(policy.config, env_cfg)
    num_envs = min(num_envs, num_episodes)
    # pi_rl: deterministic ODE sampling. Other policies act through their own `select_action` (gaussian_actor
    # samples its tanh-Gaussian; the per-wave torch seed makes that reproducible too).
    stochastic = getattr(policy.config, "stochastic_inference", None)
    if stochastic is not None:
        policy.config.stochastic_inference = False
    episodes: list[dict[str, Any]] = []
    start = time.perf_counter()
    try:
        for task in tasks:
            built = [make_eval_env(env_cfg, task) for _ in range(num_envs)]
            envs, instruction = [env for env, _ in built], built[0][1]
            label = f"{progress_prefix}{task} " if len(tasks) > 1 else progress_prefix
            task_episodes: list[dict[str, Any]] = []
            try:
                for wave_start in range(0, num_episodes, num_envs):
                    seeds = list(range(seed + wave_start, seed + min(wave_start + num_envs, num_episodes)))
                    task_episodes += _run_wave(
                        policy, preprocessor, postprocessor, envs[: len(seeds)], seeds, instruction, env_cfg, task
                    )
                    if verbose:
                        n_success = sum(e["success"] for e in task_episodes)
                        print(
                            f"{label}[{len(task_episodes):4d}/{num_episodes}] success {n_success}/"
                            f"{len(task_episodes)} ({100.0 * n_success / len(task_episodes):.1f}%), "
                            f"{time.perf_counter() - start:.1f}s",
                            flush=True,
                        )
            finally:
                for env in envs:
                    env.close()
            episodes += task_episodes
    finally:
        if stochastic is not None:
            policy.config.stochastic_inference = stochastic
    return summarize(
        episodes, wall=time.perf_counter() - start, num_envs=num_envs, deterministic_ode=stochastic is not None,
        env_cfg=env_cfg,
    )


def success_stats(episodes: list[dict[str, Any]]) -> dict[str, Any]:
    """Success rate with its Wilson interval, mean return and length, and env steps of some episodes."""
    n_success = sum(e["success"] for e in episodes)
    low, high = wilson_interval(n_success, len(episodes))
    return {
        "success_rate": n_success / len(episodes),
        "success_ci95": [low, high],
        "num_successes": n_success,
        "num_episodes": len(episodes),
        "mean_return": float(np.mean([e["return"] for e in episodes])),
        "mean_length": float(np.mean([e["length"] for e in episodes])),
        "env_steps": sum(e["length"] for e in episodes),
    }


def summarize(
    episodes: list[dict[str, Any]], *, wall: float, num_envs: int, deterministic_ode: bool, env_cfg: EnvConfig,
) -> dict[str, Any]:
    """Aggregates of per-episode results: pooled over all tasks at the top level, per task under `per_task`."""
    pooled = success_stats(episodes)
    tasks = list(dict.fromkeys(e["task"] for e in episodes))
    return {
        **{k: pooled[k] for k in ("success_rate", "success_ci95")},
        "ci_method": "wilson",
        **{k: pooled[k] for k in ("num_successes", "num_episodes", "mean_return", "mean_length")},
        "success_definition": SUCCESS_DEFINITIONS[env_cfg.type],
        "seeds": [e["seed"] for e in episodes],
        "episodes": episodes,
        "env_steps": pooled["env_steps"],
        "wall_time_s": round(wall, 3),
        "env_steps_per_s": round(pooled["env_steps"] / wall, 1) if wall > 0 else None,
        "num_envs": num_envs,
        "deterministic_ode": deterministic_ode,
        "tasks": tasks,
        "per_task": {task: success_stats([e for e in episodes if e["task"] == task]) for task in tasks},
        "env": env_options(env_cfg),
    }


@torch.no_grad()
def _run_wave(policy, preprocessor, postprocessor, envs, seeds, instruction, env_cfg, task) -> list[dict[str, Any]]:
    """Episodes `seeds` side by side, one per env; finished envs keep feeding their last observation."""
    torch.manual_seed(seeds[0])
    policy.reset()
    observations = []
    for env, s in zip(envs, seeds, strict=True):
        obs, _ = env.reset(seed=s)
        observations.append(obs)
    n = len(envs)
    done = [False] * n
    success = [False] * n
    returns = [0.0] * n
    lengths = [0] * n
    while not all(done):
        batch = preprocessor(_batch_observations(observations, instruction))
        action = postprocessor(policy.select_action(batch))
        action = action.detach().to("cpu").float().numpy()  # [n, A]
        for i, env in enumerate(envs):
            if done[i]:
                continue
            obs, reward, terminated, truncated, info = env.step(action[i])
            observations[i] = obs
            returns[i] += float(reward)
            lengths[i] += 1
            success[i] = success[i] or bool(info.get("is_success", False))
            done[i] = bool(terminated or truncated)
    results = []
    for i, s in enumerate(seeds):
        episode = {"task": task, "seed": s, "success": success[i], "return": returns[i], "length": lengths[i]}
        if isinstance(env_cfg, PickCubeStateEnvConfig):
            episode["final_gripper_cube_distance_m"] = _gripper_cube_distance(observations[i])
        results.append(episode)
    return results


def _gripper_cube_distance(observation: dict[str, np.ndarray]) -> float:
    """Distance (m) between the TCP and the cube at the episode's end: how far a failed episode got."""
    tcp = np.asarray(observation[OBS_STATE])[TCP_POS]
    cube = np.asarray(cube_position(observation))
    return round(float(np.linalg.norm(tcp - cube)), 4)


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, EnvConfig]:
    parser = argparse.ArgumentParser(
        description="Evaluate a checkpoint on PickCube (default) or MetaWorld with fixed seeds (deterministic ODE "
        "sampling for pi_rl). The env: --env.type=pi_rl_pickcube or pi_rl_metaworld, its fields as "
        "--env.<field>=<value>. Success: the env's task success flag at any step of the episode.",
    )
    parser.add_argument("--policy_path", required=True, help="a `pretrained_model` directory (pi_rl, or e.g. gaussian_actor from SAC)")
    parser.add_argument("--num_episodes", type=int, default=100, help="episodes per task")
    parser.add_argument("--seed", type=int, default=1000, help="episode i (of each task) uses env seed seed+i")
    parser.add_argument("--output", default=None, help="JSON file to write the results to")
    parser.add_argument("--num_envs", type=int, default=4, help="envs stepped side by side (one policy batch)")
    add_pickcube_shorthands(parser)
    parser.add_argument(
        "--workers", type=int, default=1,
        help="processes the waves are split over (same episodes and seeds, same results; one torch thread each)",
    )
    parser.add_argument("--device", default=None, help="override the checkpoint's device (e.g. cpu)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args, leftover = parser.parse_known_args(argv)
    for name in ("num_episodes", "num_envs", "workers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}={getattr(args, name)} must be >= 1")
    env_cfg = env_config_from_args(leftover, args)
    eval_tasks(env_cfg)
    return args, env_cfg


def split_waves(num_episodes: int, num_envs: int, workers: int) -> list[tuple[int, int]]:
    """Contiguous `(first_episode, num_episodes)` ranges, one per worker, cut at wave boundaries (multiples of
    `num_envs`), so every worker runs exactly the waves (and per-wave seeds) a single process would."""
    num_waves = math.ceil(num_episodes / num_envs)
    workers = min(workers, num_waves)
    bounds = [round(w * num_waves / workers) * num_envs for w in range(workers + 1)]
    bounds[-1] = num_episodes
    return [(lo, hi - lo) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True) if hi > lo]


def _evaluate_range(policy_path: str, device: str | None, options: dict, seed: int, num_episodes: int,
                    num_envs: int, verbose: bool, worker: int) -> tuple[str, dict[str, Any]]:
    """One worker process: its own policy copy and envs, one torch thread (workers share the CPU)."""
    torch.set_num_threads(1)
    policy, preprocessor, postprocessor = load_policy(policy_path, device=device)
    result = evaluate_policy(
        policy, preprocessor, postprocessor, env_cfg=env_config_from_options(options), num_episodes=num_episodes,
        seed=seed, num_envs=num_envs, verbose=verbose, progress_prefix=f"[worker {worker}] ",
    )
    return policy.config.type, result


def evaluate_in_workers(args: argparse.Namespace, env_cfg: EnvConfig) -> tuple[str, dict[str, Any]]:
    """`evaluate_policy` with every task's waves split over `args.workers` spawned processes; results merged per
    task in seed order."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    ranges = split_waves(args.num_episodes, min(args.num_envs, args.num_episodes), args.workers)
    # Every option; the features follow from them in the worker's config `__post_init__`.
    options = env_options(env_cfg)
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=len(ranges), mp_context=mp.get_context("forkserver")) as pool:
        futures = [
            pool.submit(_evaluate_range, str(args.policy_path), args.device, options, args.seed + first, count,
                        args.num_envs, not args.quiet, w)
            for w, (first, count) in enumerate(ranges)
        ]
        parts = [f.result() for f in futures]
    episodes = [e for task in eval_tasks(env_cfg) for _, part in parts for e in part["episodes"] if e["task"] == task]
    result = summarize(
        episodes, wall=time.perf_counter() - start, num_envs=parts[0][1]["num_envs"],
        deterministic_ode=parts[0][1]["deterministic_ode"], env_cfg=env_cfg,
    )
    return parts[0][0], result


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse `argv`, run, and return the JSON-able result."""
    args, env_cfg = parse_args(argv)
    if args.workers == 1:
        policy, preprocessor, postprocessor = load_policy(args.policy_path, device=args.device)
        policy_type = policy.config.type
        result = evaluate_policy(
            policy,
            preprocessor,
            postprocessor,
            env_cfg=env_cfg,
            num_episodes=args.num_episodes,
            seed=args.seed,
            num_envs=args.num_envs,
            verbose=not args.quiet,
        )
    else:
        policy_type, result = evaluate_in_workers(args, env_cfg)
    result = {
        "policy_path": str(args.policy_path),
        "policy_path_resolved": str(Path(args.policy_path).resolve()),
        "policy_type": policy_type,
        "workers": args.workers,
        **result,
    }
    summary = {k: result[k] for k in ("success_rate", "success_ci95", "mean_return", "mean_length", "num_episodes")}
    print(json.dumps(summary))
    if len(result["per_task"]) > 1:
        for task, stats in result["per_task"].items():
            low, high = stats["success_ci95"]
            print(f"  {task}: {stats['num_successes']}/{stats['num_episodes']} ({100 * stats['success_rate']:.1f} %, "
                  f"95 % CI {100 * low:.1f}-{100 * high:.1f})")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.output}")
    return result


def main(argv: list[str] | None = None) -> None:
    run(argv)


if __name__ == "__main__":
    main()
