"""Preemption: a SIGTERM while an epoch trains stops at the next optimizer-step boundary with a
checkpoint there, and ``--resume`` continues at that step, ending where a run never stopped ends."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from actgen.shards.errors import FormatError, Terminated
from actgen.trainer.checkpoint import load_checkpoint, save_checkpoint
from actgen.trainer.distributed import Runtime
from actgen.trainer.preempt import Preemption

REPO = Path(__file__).resolve().parents[1]


def _rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("epoch_time_s", "images_per_s")} for r in rows]


def test_sigterm_is_deferred_only_inside_an_epoch():
    with Preemption(Runtime(device=torch.device("cpu"))) as p:
        with p.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            assert p.requested and p.due(7)
        with pytest.raises(Terminated):                 # outside the batch loop: at once, as Ctrl-C
            os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is not p._on_sigterm     # the previous handler is back


def test_a_preempted_epoch_continues_at_the_same_global_batch_on_any_process_count():
    from actgen.trainer.progress import resume_point as _resume_point

    carry = [[1.5, 10.0, 64.0, 2.0, 4.0], [2.5, 12.0, 64.0, 2.0, 4.0]]
    in_epoch = {"batches_done": 4, "world_size": 2, "carry": carry}
    one = Runtime(device=torch.device("cpu"))
    # 4 batches on each of 2 processes = the first 8 global batches: one process goes on at 8,
    # carrying both ranks' sums.
    assert _resume_point(in_epoch, one) == (8, (4.0, 22.0, 128.0, 4.0, 8.0))
    two = [Runtime(device=torch.device("cpu"), rank=r, world_size=2) for r in (0, 1)]
    assert [_resume_point(in_epoch, rt) for rt in two] == [(4, tuple(carry[0])), (4, tuple(carry[1]))]
    four = [Runtime(device=torch.device("cpu"), rank=r, world_size=4) for r in (0, 3)]
    assert [_resume_point(in_epoch, rt) for rt in four] == [(2, (4.0, 22.0, 128.0, 4.0, 8.0)), (2, (0.0,) * 5)]
    assert _resume_point(None, one) == (0, None)


@pytest.mark.parametrize("in_epoch", [
    {"batches_done": 0, "world_size": 1, "carry": [[0.0] * 5]},
    {"batches_done": 3, "world_size": 2, "carry": [[0.0] * 5]},             # a rank's sums missing
    {"batches_done": 3, "world_size": 1, "carry": [[0.0, 0.0, 0.0, float("nan"), 1.0]]},
    {"batches_done": "3", "world_size": 1, "carry": [[0.0] * 5]},
    {"batches_done": 3, "world_size": 1, "carry": [[0.0] * 5], "extra": 1},
])
def test_a_malformed_in_epoch_record_is_refused_naming_the_field(tmp_path, in_epoch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1, "model": {}, "loop": {}, "rng": [], "pool": [], "rounds_done": [],
                           "synthetic_seen_total": 0, "dataset_fingerprint": "f", "class_names": ["a"],
                           "in_epoch": in_epoch})
    with pytest.raises(FormatError, match=r"last\.pt.*field 'in_epoch'"):
        load_checkpoint(path)


@pytest.mark.slow
# With loader.normalize=device the random erasing draws from the training process's RNGs per batch,
# which the step's checkpoint must carry as well.
@pytest.mark.parametrize("where", [(), ("loader.normalize=device", "input.re_prob=0.5")], ids=["workers", "device"])
def test_sigterm_mid_epoch_then_resume_ends_with_the_weights_of_a_run_never_stopped(
        tiny_train_config, torch_one_thread, tmp_path, monkeypatch, where):
    from actgen.trainer.loggers import RunLoggers
    from actgen.trainer.run import run

    sets = ("train.epochs=3", "train.log_interval=1", "synthetic.source=none", "loader.batch_size=32", *where)
    whole = tiny_train_config(*sets, run_dir=tmp_path / "whole")
    run(whole)

    stopped = tiny_train_config(*sets, run_dir=tmp_path / "stopped")
    step_of_signal = 30                 # epoch 0 takes 22 steps, epoch 1 (hold-out merged) 28
    original = RunLoggers.step

    def step(self, steps, loss, lr):
        original(self, steps, loss, lr)
        if steps == step_of_signal:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(RunLoggers, "step", step)
    with pytest.raises(Terminated):
        run(stopped)
    monkeypatch.undo()
    state = load_checkpoint(stopped.resolved_run_dir() / "last.pt")
    # Stopped right after the step the signal came in: epoch 1 in progress, 8 of its batches done.
    assert state["epoch"] == 1 and state["in_epoch"]["batches_done"] == step_of_signal - 22
    assert state["loop"]["optimizer_steps"] == step_of_signal
    assert len(_rows(stopped.resolved_run_dir())) == 1

    summary = run(stopped, resume=True)
    assert summary["complete"]
    assert _rows(stopped.resolved_run_dir()) == _rows(whole.resolved_run_dir())
    a = load_file(str(whole.resolved_run_dir() / "final" / "model.safetensors"))
    b = load_file(str(stopped.resolved_run_dir() / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_gloo_processes_stop_at_the_same_step_and_resume_on_one(tmp_path):
    """SIGTERM to one worker of a torchrun job: both stop at one step boundary with a checkpoint
    there; the run resumes on one process (same global batch) and completes."""
    import psutil

    tiny = ["data.test_fraction=0.5", "input.image_size=16", "model.name=test_resnet", "train.epochs=2",
            "rounds.enabled=false", "loader.batch_size=8", "train.device=cpu", "train.progress=false",
            "train.log_interval=1", "synthetic.source=none"]
    run_dir = tmp_path / "run"
    sets = [a for s in tiny for a in ("--set", s)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    args = ["-m", "actgen.trainer.cli", "--config", str(REPO / "configs" / "train-digits.yaml"), "--run-dir",
            str(run_dir), *sets]
    torchrun = Path(sys.executable).parent / "torchrun"
    proc = subprocess.Popen([str(torchrun), "--standalone", "--nproc_per_node", "2", *args], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = run_dir / "train.log"
    deadline = time.monotonic() + 300

    def batches_logged() -> int:
        found = re.findall(r"epoch 0/2 \[(\d+)/(\d+)\]", log.read_text()) if log.is_file() else []
        return int(found[-1][0]) if found else 0

    # 898 images, batch 8, 2 processes: 56 steps an epoch; signal one worker well inside epoch 0.
    while batches_logged() < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = [p for p in psutil.Process(proc.pid).children(recursive=True) if "actgen.trainer.cli" in p.cmdline()]
    assert len(workers) == 2
    workers[-1].send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    state = load_checkpoint(run_dir / "last.pt")
    assert state["epoch"] == 0 and state["in_epoch"]["world_size"] == 2, err[-3000:]
    done = state["in_epoch"]["batches_done"]
    assert 10 <= done < 56 and len(state["in_epoch"]["carry"]) == 2
    resumed = subprocess.run([sys.executable, *args, "--resume", "--set", "train.grad_accum_steps=2"],
                             capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert f"epoch 0 continues at batch {2 * done}" in resumed.stderr
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1] and json.loads((run_dir / "summary.json").read_text())["complete"]
