"""The benchmark scripts in bench/ still run: each in its CPU toy-size mode, with minimal repeats."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_bench_vla_gpu_runs_its_tiny_cpu_mode(tmp_path, capsys) -> None:
    bench = load_script("bench_vla_gpu")
    out = tmp_path / "vla.json"
    rc = bench.main(["--tiny", "--device", "cpu", "--repeats", "1", "--backbones", "smolvla,pi0", "--out", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["tiny"] is True and report["device"] == "cpu"
    rows = {row["backbone"]: row for row in report["rows"]}
    assert set(rows) == {"smolvla", "pi0"}
    for name, row in rows.items():
        assert "error" not in row, (name, row)
        for key in ("chain_ms", "upstream_det_ms", "sft_ms", "ppo_ms", "publish_s", "log_ratio_per_term_max"):
            assert math.isfinite(row[key]) and row[key] >= 0, (name, key, row[key])
        # Same weights, sampled in eval mode and scored in train mode: the guard's measure stays within tolerance.
        assert row["log_ratio_per_term_max"] <= row["ratio_check_tolerance"], (name, row)
        # Only the trainable set (plus buffers) is published, never the frozen VLM.
        assert 0 < row["publish_mb"] * 1e6 < 4 * row["params_b"] * 1e9, (name, row)
        assert 0 < row["trainable_b"] < row["params_b"]
        assert row["actor_peak_gib"] is None and row["learner_peak_gib"] is None  # no CUDA memory on the CPU
    table = capsys.readouterr().out
    assert "chain/det" in table and "smolvla" in table and "pi0" in table
