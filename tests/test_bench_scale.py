"""benchmarks/bench_scale.py runs end to end on a small folder and writes what docs/benchmarks.md
reports (the benchmark itself runs at 10k-40k images on a quiet machine)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_scale_benchmark_opens_imports_and_compares_loaders(tmp_path, torch_one_thread):
    spec = importlib.util.spec_from_file_location("bench_scale", REPO / "benchmarks" / "bench_scale.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "scale.json"
    assert bench.main(["--sizes", "300", "--repeats", "1", "--batch-size", "32", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    (row,) = result["open"]
    assert row["images"] == 300 and row["folder_open_s"] > 0 and row["imported_open_s"] > 0
    loader = result["loader"]
    assert loader["images"] == 300 and loader["trainer_images_per_s"] > 0 and loader["plain_images_per_s"] > 0
