"""State-only PickCube env step time: gym_hil's own controller vs `FastOpspace`, measured side by side in one run.

    MUJOCO_GL=osmesa PYOPENGL_PLATFORM=osmesa python bench/bench_env.py [--episodes 6] [--repeats 3]

Both envs replay the same noisy scripted episodes (same seeds); rounds alternate stock / fast so that load on the
machine hits both alike. Prints ms per env step (best and median over rounds), the speed-up, and whether the two
physics traces were bit-identical (they must be: `tests/test_envs.py` checks it too).
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=6, help="scripted episodes per round (seeds 0..N-1)")
    p.add_argument("--repeats", type=int, default=3, help="rounds per controller, interleaved")
    p.add_argument("--episode_length", type=int, default=100)
    args = p.parse_args()

    from lerobot_policy_pi_rl.envs import PickCubeStateEnvConfig, make_pickcube_env

    seeds = list(range(args.episodes))
    envs = {
        "gym_hil opspace": make_pickcube_env(PickCubeStateEnvConfig(episode_length=args.episode_length, fast_controller=False)),
        "FastOpspace": make_pickcube_env(PickCubeStateEnvConfig(episode_length=args.episode_length)),
    }
    ms: dict[str, list[float]] = {name: [] for name in envs}
    finals: dict[str, list[np.ndarray]] = {}
    for _ in range(args.repeats):
        for name, env in envs.items():
            seconds, steps, finals[name] = run_round(env, seeds)
            ms[name].append(1e3 * seconds / steps)
    for env in envs.values():
        env.close()

    identical = all(np.array_equal(a, b) for a, b in zip(*finals.values()))
    print(f"{args.repeats} rounds x {args.episodes} noisy scripted episodes, 1 thread, interleaved")
    print(f"{'controller':18s} {'best ms/step':>12s} {'median ms/step':>15s} {'env steps/s':>12s}")
    for name, values in ms.items():
        print(f"{name:18s} {min(values):12.2f} {statistics.median(values):15.2f} {1e3 / min(values):12.1f}")
    stock, fast = (min(v) for v in ms.values())
    print(f"speed-up (best): {stock / fast:.2f}x   final physics states bit-identical: {identical}")


if __name__ == "__main__":
    main()
