"""PickCube env step time, measured side by side in one run: (1) gym_hil's own controller vs `FastOpspace`
(state-only), (2) the camera options (`none`, `blank`, `front`, `wrist` at 32 and 64 px; fast controller).

    MUJOCO_GL=osmesa PYOPENGL_PLATFORM=osmesa python bench/bench_env.py [--episodes 6] [--repeats 3] \\
        [--only controller|camera]

Every env replays the same noisy scripted episodes (same seeds); rounds alternate between the envs of a table so
that load on the machine hits them alike. Prints ms per env step (best and median over rounds) and, for the
controllers, the speed-up and whether the two physics traces were bit-identical (they must be:
`tests/test_envs.py` checks it too); for the cameras, the ratio to `none` (rendering does not change the physics,
so all camera rows step through the same states).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

import numpy as np  # noqa: E402


def run_round(env, seeds: list[int]) -> tuple[float, int, list[np.ndarray]]:
    from lerobot_policy_pi_rl.envs import ScriptedPickController, run_scripted_episode

    data = env.unwrapped._data
    final_states, steps = [], 0
    start = time.perf_counter()
    for seed in seeds:
        steps += run_scripted_episode(env, ScriptedPickController(action_noise=0.3), seed=seed)["steps"]
        final_states.append(np.concatenate([data.qpos, data.qvel]).copy())
    return time.perf_counter() - start, steps, final_states


def measure(envs: dict, seeds: list[int], repeats: int) -> tuple[dict[str, list[float]], dict[str, list[np.ndarray]]]:
    """ms per env step of every env over `repeats` interleaved rounds, and each env's final physics states."""
    ms: dict[str, list[float]] = {name: [] for name in envs}
    finals: dict[str, list[np.ndarray]] = {}
    try:
        for _ in range(repeats):
            for name, env in envs.items():
                seconds, steps, finals[name] = run_round(env, seeds)
                ms[name].append(1e3 * seconds / steps)
    finally:
        for env in envs.values():
            env.close()
    return ms, finals


def bench_controllers(args, seeds: list[int]) -> None:
    from lerobot_policy_pi_rl.envs import PickCubeStateEnvConfig, make_pickcube_env

    envs = {
        "gym_hil opspace": make_pickcube_env(PickCubeStateEnvConfig(episode_length=args.episode_length, fast_controller=False)),
        "FastOpspace": make_pickcube_env(PickCubeStateEnvConfig(episode_length=args.episode_length)),
    }
    ms, finals = measure(envs, seeds, args.repeats)
    identical = all(np.array_equal(a, b) for a, b in zip(*finals.values()))
    print(f"{'controller':18s} {'best ms/step':>12s} {'median ms/step':>15s} {'env steps/s':>12s}")
    for name, values in ms.items():
        print(f"{name:18s} {min(values):12.2f} {statistics.median(values):15.2f} {1e3 / min(values):12.1f}")
    stock, fast = (min(v) for v in ms.values())
    print(f"speed-up (best): {stock / fast:.2f}x   final physics states bit-identical: {identical}")


CAMERA_ROWS = [("none", 32), ("blank", 32), ("front", 32), ("wrist", 32), ("front", 64), ("wrist", 64)]


def bench_cameras(args, seeds: list[int]) -> None:
    from lerobot_policy_pi_rl.envs import PickCubeStateEnvConfig, make_pickcube_env

    envs = {
        (camera if camera in ("none", "blank") else f"{camera} {size}px"): make_pickcube_env(
            PickCubeStateEnvConfig(episode_length=args.episode_length, camera=camera, camera_size=size)
        )
        for camera, size in CAMERA_ROWS
    }
    ms, finals = measure(envs, seeds, args.repeats)
    same = all(np.array_equal(a, b) for runs in zip(*finals.values()) for a, b in zip(runs, runs[1:]))
    base = min(ms["none"])
    print(f"{'camera':18s} {'best ms/step':>12s} {'median ms/step':>15s} {'env steps/s':>12s} {'x none':>7s}")
    for name, values in ms.items():
        best = min(values)
        print(f"{name:18s} {best:12.2f} {statistics.median(values):15.2f} {1e3 / best:12.1f} {best / base:7.2f}")
    print(f"final physics states identical across camera options: {same}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=6, help="scripted episodes per round (seeds 0..N-1)")
    p.add_argument("--repeats", type=int, default=3, help="rounds per env, interleaved")
    p.add_argument("--episode_length", type=int, default=100)
    p.add_argument("--only", choices=("controller", "camera"), default=None, help="run one table only")
    args = p.parse_args()

    seeds = list(range(args.episodes))
    print(f"{args.repeats} rounds x {args.episodes} noisy scripted episodes, 1 thread, interleaved")
    if args.only in (None, "controller"):
        bench_controllers(args, seeds)
    if args.only in (None, "camera"):
        bench_cameras(args, seeds)


if __name__ == "__main__":
    main()
