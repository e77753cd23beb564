"""Two-job mode on one machine: ``actgen-train`` and ``actgen-build --watch`` as two processes.

Each is SIGKILLed once at an awkward moment and started again; the run must finish with every
round built once and consumed once, and the shards finished before the kill must not be redone.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from actgen.shards.reader import ShardRandomAccess, read_index
from actgen.shards.rounds import read_status
from actgen.shards.writer import file_sha256
from actgen.trainer.config import config_to_yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _wait_for(what, condition, procs, timeout=180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        for p in procs:
            assert p.poll() is None, f"{p.args[0]} exited with {p.returncode} while waiting for {what}"
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _start(argv, log: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([str(a) for a in argv], stdout=open(log, "a"), stderr=subprocess.STDOUT, env=env,
                            stdin=subprocess.DEVNULL, cwd=REPO)


def _finish(proc: subprocess.Popen, log: Path, timeout=240.0) -> None:
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"{proc.args[0]} did not finish:\n{log.read_text()[-3000:]}")
    assert code == 0, f"{proc.args[0]} exited with {code}:\n{log.read_text()[-3000:]}"


def _tars(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in directory.glob("synth-*.tar")} if directory.is_dir() else {}


@pytest.mark.slow
def test_trainer_and_watching_builder_survive_a_kill_of_either(tiny_train_config, tmp_path):
    run_dir = tmp_path / "run"
    cfg = tiny_train_config("train.epochs=6", "rounds.horizon=3", "rounds.merge_epoch=3", "synthetic.source=shards",
                            "synthetic.on_missing=wait", "synthetic.poll_s=0.1", "synthetic.timeout_s=300",
                            run_dir=run_dir)
    config = tmp_path / "train.yaml"
    config.write_text(config_to_yaml(cfg))
    train_log, build_log = tmp_path / "train.log", tmp_path / "build.log"
    train = [BIN / "actgen-train", "--config", config]
    resume = [BIN / "actgen-train", "--run-dir", run_dir, "--resume"]
    # schedule.horizon=null: the §1.3 schedules take the run's round count from the manifests.
    build = [BIN / "actgen-build", "--config", REPO / "configs/build-smoke.yaml", "--watch", run_dir,
             "--poll", "0.1", "--idle-timeout", "300", "--set", "ray.executor=local", "--set", "budget=12",
             "--set", "output.samples_per_shard=2", "--set", "output.min_shards=1", "--set", "schedule.horizon=null"]
    round0 = run_dir / "rounds" / "0" / "shards"

    # The watcher starts first and waits for a run directory that does not exist yet.
    watcher = _start(build, build_log)
    trainer = _start(train, train_log)
    try:
        # 1. Kill the builder in the middle of round 0: some shards written, the index not yet.
        _wait_for("round 0's first shard", lambda: _tars(round0), [watcher, trainer])
        watcher.send_signal(signal.SIGKILL)
        watcher.wait()
        finished_before = _tars(round0)
        assert not (round0 / "index.json").exists(), "the build finished before the kill; make it longer"
        assert read_status(round0.parent).state == "building"
        time.sleep(0.5)
        assert trainer.poll() is None and not (run_dir / "summary.json").exists()  # waiting for round 0

        # 2. A new watcher finishes round 0; kill the trainer as soon as it writes round 1.
        watcher = _start(build, build_log)
        _wait_for("round 1's manifest", lambda: (run_dir / "rounds/1/hard_samples.json").exists(),
                  [watcher, trainer])
        trainer.send_signal(signal.SIGKILL)
        trainer.wait()

        # 3. The trainer resumes from its last checkpoint; both run to the end.
        trainer = _start(resume, train_log)
        _finish(trainer, train_log)
        _finish(watcher, build_log)
    finally:
        for p in (watcher, trainer):
            if p.poll() is None:
                p.kill()

    # The shards finished before the builder's kill were kept, not rendered again.
    after = _tars(round0)
    assert finished_before and all(after[name] == mtime for name, mtime in finished_before.items())
    assert "kept from an earlier attempt" in build_log.read_text()
    # Every round built once from the manifest now in its folder, marked done.
    for r in range(3):
        directory = run_dir / "rounds" / str(r)
        status = read_status(directory)
        assert status.state == "done" and status.images == 12
        index = read_index(directory / "shards")
        assert index.created["manifest_sha256"] == file_sha256(directory / "hard_samples.json")
        provenance = ShardRandomAccess(directory / "shards").sample(0).provenance
        assert provenance["round"] == r
    assert read_status(round0.parent).attempts == 2
    # The trainer resumed (no epoch trained twice into the log) and consumed all three rounds.
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["complete"] and [e["round"] for e in summary["pool"]] == [0, 1, 2]
    assert summary["synthetic_pool"] == 36
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == list(range(6))
    assert "resuming" in train_log.read_text()
