"""benchmarks/bench_scale.py runs end to end on a small folder and a small bank and writes what
docs/benchmarks.md reports (the benchmark itself runs at 10k-40k images, 40 rounds, on a quiet
machine)."""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_the_scale_benchmark_opens_imports_and_compares_loaders(tmp_path, torch_one_thread):
    spec = importlib.util.spec_from_file_location("bench_scale", REPO / "benchmarks" / "bench_scale.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "scale.json"
    assert bench.main(["--sizes", "300", "--repeats", "1", "--batch-size", "32", "--bank-rounds", "4",
                       "--bank-per-round", "20", "--bank-classes", "5", "--bank-capacity", "8", "--bank-total", "30",
                       "--pool-images", "40", "--skip", "rounds", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    (row,) = result["open"]
    assert row["images"] == 300 and row["folder_open_s"] > 0 and row["imported_open_s"] > 0
    loader = result["loader"]
    assert loader["images"] == 300
    assert all(loader[f"{way}_images_per_s"] > 0 for way in ("plain", "trainer", "trainer_unseeded", "trainer_device", "timm_prefetch"))
    # The bank part: 20 latents a round, capped at 30 in all (and 8 a class): the cap binds.
    bank = {row["round"]: row for row in result["bank"]["probes"]}
    assert sorted(bank) == [2, 4] and bank[2]["entries_held"] == 30 and bank[4]["entries_held"] == 30
    assert result["pool_index"]["images"] == 40 and result["pool_index"]["record_bytes"] > 0
    assert result["rounds"] is None          # the live rounds: the slow test below


@pytest.mark.slow
def test_the_scale_benchmarks_live_rounds_time_each_rounds_build_and_join(tmp_path):
    """A live run of 4 rounds with its builder inline in copy mode: every round's inline build and
    its join at the next epoch are timed."""
    import subprocess
    import sys

    out = tmp_path / "scale.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_scale.py"), "--sizes", "300",
                           "--repeats", "1", "--rounds", "4", "--round-budget", "4",
                           "--skip", "loader", "bank", "pool", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    live = json.loads(out.read_text())["rounds"]
    assert sorted(live["per_round"]) == ["0", "1", "2", "3"]
    for row in live["per_round"].values():
        assert row["build_s"] > 0 and 0 < row["builder_s"] <= row["build_s"] + 0.001 and row["join_s"] > 0  # ms rounding
    assert [p["round"] for p in live["probes"]] == [1, 2, 3]
