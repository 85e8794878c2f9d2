"""What `--record_rollouts` costs the actor's env loop, measured side by side in one run.

    MUJOCO_GL=osmesa PYOPENGL_PLATFORM=osmesa python bench/bench_record_rollouts.py [--episodes 4] [--repeats 3] \\
        [--observations state,state+camera64]

The actor's env loop without a policy (PickCube, random actions, the actor's own `GymStream`): step, and with
recording hand the step to a `RolloutRecorder` (its writer process saves each finished episode as a LeRobotDataset
meanwhile), reset at the end of an episode. Without a policy the loop is as fast as it gets, so the ratio is the
worst case; an actor also spends time sampling chains. Rounds alternate recording off / on over the same seeds,
so load on the machine hits both alike (the order flips every round), after an uncounted warm-up that also waits
for the writer's start. Two observation sets: state only, and state + a 64 px camera frame (`blank`:
the image costs the recorder its conversion and a PNG per frame, and the env no rendering).

Prints, per observation set: env-loop ms per step off and on (best round: the machine's load only adds time) and
their ratio, the env loop's time inside the recorder's hand-off (us per step, counted rounds), how long `close()`
took to write what was still queued, and the counted episodes written.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

import torch  # noqa: E402


def make_stream(env_cfg, seed: int):
    from lerobot_policy_pi_rl.envs.pickcube import make_pickcube_env
    from lerobot_policy_pi_rl.runtime.env_streams import GymStream

    return GymStream(make_pickcube_env(env_cfg, seed=seed, lerobot_keys=True), env_cfg.task_description, seed,
                     max_episode_steps=env_cfg.episode_length)


def run_round(stream, recorder, episodes: int, seed: int) -> tuple[float, int]:
    """Seconds and env steps of `episodes` episodes with random actions (seeded), recorded when `recorder`."""
    g = torch.Generator().manual_seed(seed)
    steps = 0
    start = time.perf_counter()
    for _ in range(episodes):
        observation = stream.reset()
        if recorder is not None:
            recorder.begin(0, observation)
        while True:
            step = stream.step(torch.rand(4, generator=g) * 2 - 1)
            steps += 1
            if recorder is not None:
                recorder.step(0, step, 0)
            if step.terminated or step.truncated:
                if recorder is not None:
                    recorder.end_episode(0)
                break
    return time.perf_counter() - start, steps


def bench(label: str, env_cfg, args, out: Path) -> dict:
    from lerobot_policy_pi_rl.runtime.rollout_recorder import RolloutRecorder

    stream = make_stream(env_cfg, args.seed)
    recorder = RolloutRecorder(out / label, repo_id="local/bench_rollouts", fps=env_cfg.fps, robot_type="panda",
                               stream_ids=[0], tasks=[stream.task])
    ms = {"off": [], "on": []}
    try:
        # Warm-up, not counted: the env's first steps, and the writer's start (imports, dataset creation).
        run_round(stream, None, 1, args.seed)
        run_round(stream, recorder, 1, args.seed)
        while recorder.written() < 1:
            time.sleep(0.1)
        handoff_s, handoff_steps = recorder.handoff_s, recorder.steps
        for r in range(args.repeats):
            for mode in (("off", "on") if r % 2 == 0 else ("on", "off")):
                seconds, steps = run_round(stream, recorder if mode == "on" else None, args.episodes, args.seed + r)
                ms[mode].append(1e3 * seconds / steps)
        t0 = time.perf_counter()
        recorder.close()
        close_s = time.perf_counter() - t0
    finally:
        stream.close()
    off, on = min(ms["off"]), min(ms["on"])
    handoff_us = 1e6 * (recorder.handoff_s - handoff_s) / max(recorder.steps - handoff_steps, 1)
    return {"label": label, "off": off, "on": on, "ratio": on / off, "handoff_us": handoff_us, "close_s": close_s,
            "episodes": recorder.saved - 1}


def main(argv: list[str] | None = None) -> list[dict]:
    from lerobot_policy_pi_rl.envs.pickcube import PickCubeStateEnvConfig

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=4, help="episodes per round and mode")
    parser.add_argument("--repeats", type=int, default=3, help="rounds (each: recording off, then on)")
    parser.add_argument("--episode_length", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--observations", default="state,state+camera64",
                        help="comma-separated observation sets: state, state+camera64")
    args = parser.parse_args(argv)
    configs = {
        "state": PickCubeStateEnvConfig(episode_length=args.episode_length),
        "state+camera64": PickCubeStateEnvConfig(episode_length=args.episode_length, camera="blank",
                                                 camera_size=64),
    }
    labels = args.observations.split(",")
    unknown = sorted(set(labels) - set(configs))
    if unknown:
        parser.error(f"--observations: unknown {unknown}; known: {', '.join(configs)}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label in labels:
            rows.append(bench(label, configs[label], args, Path(tmp)))
    print(f"{'observations':<16} {'off ms/step':>12} {'on ms/step':>11} {'on/off':>7} {'hand-off us/step':>17} "
          f"{'close s':>8} {'episodes':>9}")
    for r in rows:
        print(f"{r['label']:<16} {r['off']:12.3f} {r['on']:11.3f} {r['ratio']:7.3f} {r['handoff_us']:17.1f} "
              f"{r['close_s']:8.2f} {r['episodes']:9d}")
    return rows


if __name__ == "__main__":
    main()
