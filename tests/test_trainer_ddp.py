"""Two gloo processes under torchrun: the same rounds output as one process would write."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from actgen.shards.bundle import bundle_sha256, load_classifier
from actgen.shards.manifest import read_manifest
from actgen.shards.sources import DataSource, load_source
from actgen.trainer.config import load_config
from actgen.trainer.data import RealImages, split_indices
from actgen.trainer.transforms import build_eval_transform

REPO = Path(__file__).resolve().parents[1]
TINY = ["data.test_fraction=0.5", "input.image_size=16", "model.name=test_resnet", "train.epochs=3",
        "rounds.horizon=2", "rounds.merge_epoch=2", "loader.batch_size=32", "train.device=cpu",
        "train.progress=false", "train.log_interval=100",
        # The paper's hold-out search, whose gathered manifests the first test checks.
        "data.holdout_fraction=0.1", "rounds.search=holdout", "rounds.selection.rule=misclassified",
        "rounds.selection.k=null"]


@pytest.mark.slow
def test_torchrun_two_gloo_processes(tmp_path, write_digit_shards):
    write_digit_shards(tmp_path / "b" / "r0", n=12, round=0)  # consumed at epoch 1; round 1 never comes
    run_dir = tmp_path / "run"
    sets = [a for s in TINY + [f"synthetic.pattern={tmp_path}/b/r{{round}}"] for a in ("--set", s)]
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "actgen.trainer.cli",
                           "--config", str(REPO / "configs" / "train-digits.yaml"), "--run-dir", str(run_dir), *sets],
                          capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]

    # 1. One set of outputs, written once: rounds 0 and 1 with manifest + bundle, pool copy, metrics.
    assert sorted(p.relative_to(run_dir).as_posix() for p in run_dir.glob("rounds/*/*")) == [
        "rounds/0/checkpoint", "rounds/0/hard_samples.json", "rounds/1/checkpoint", "rounds/1/hard_samples.json"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["complete"] and summary["synthetic_pool"] == 12
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2] and rows[1]["synthetic_seen"] > 0
    # Both ranks train on disjoint halves of each global batch list: 2 x 32 images per step.
    assert rows[0]["images"] == (rows[0]["real_images"] // 64) * 64
    assert len(torch.load(run_dir / "last.pt", weights_only=True)["rng"]) == 2

    # 2. Each manifest covers the whole hold-out (gathered from both ranks) and lists exactly the
    #    hold-out images its bundle gets wrong.
    cfg = load_config(REPO / "configs" / "train-digits.yaml", TINY)
    digits = load_source(DataSource())
    split = split_indices(digits.labels(), cfg.data.holdout_fraction, cfg.data.test_fraction, cfg.data.split_seed)
    data = RealImages(digits, split.holdout, build_eval_transform(cfg.input))
    x = torch.stack([data[i][0] for i in range(len(data))])
    for r in (0, 1):
        manifest = read_manifest(run_dir / "rounds" / str(r) / "hard_samples.json")
        bundle = run_dir / "rounds" / str(r) / "checkpoint"
        assert manifest.header.num_evaluated == len(split.holdout)
        assert manifest.header.checkpoint_sha256 == bundle_sha256(bundle)
        model, _ = load_classifier(bundle)
        with torch.no_grad():
            predicted = model(x).argmax(-1).numpy()
        wrong = {digits.sample_id(int(i)) for i, p, y in zip(split.holdout, predicted, data.targets) if p != y}
        assert {s.id for s in manifest.samples} == wrong


def test_slurm_variables_become_torchruns():
    from actgen.trainer.distributed import slurm_environment

    env = {"SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_LAUNCH_NODE_IPADDR": "10.0.0.5",
           "SLURM_JOB_ID": "123456"}
    assert slurm_environment(env) == {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.5",
                                      "MASTER_PORT": "29956"}
    assert slurm_environment({**env, "MASTER_ADDR": "node01", "MASTER_PORT": "12345"})["MASTER_ADDR"] == "node01"
    assert slurm_environment({**env, "RANK": "0"}) == {}          # torchrun's own variables win
    assert slurm_environment({}) == {}
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        slurm_environment({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"})


@pytest.mark.slow
def test_two_processes_launched_as_srun_launches_them(tmp_path):
    """Two trainer processes with only SLURM's variables (as srun starts them) form one gloo group."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run_dir = tmp_path / "run"
    extra = ["synthetic.source=none", "rounds.enabled=false", "train.epochs=1", "rounds.merge_epoch=1"]
    sets = [a for s in TINY + extra for a in ("--set", s)]
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                              "MASTER_PORT")}
    procs = [subprocess.Popen([sys.executable, "-m", "actgen.trainer.cli", "--config",
                               str(REPO / "configs" / "train-digits.yaml"), "--run-dir", str(run_dir), *sets],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                              env={**base, "OMP_NUM_THREADS": "1", "SLURM_PROCID": str(r), "SLURM_NTASKS": "2",
                                   "SLURM_LOCALID": str(r), "SLURM_JOB_ID": "77", "MASTER_ADDR": "127.0.0.1",
                                   "MASTER_PORT": str(port)})
             for r in (0, 1)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][1][-3000:] + outs[1][1][-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["complete"]
    assert "SLURM task 0 of 2" in outs[0][1]


@pytest.mark.slow
def test_a_two_process_run_resumes_on_one_process_with_the_same_global_batch(tmp_path):
    """Preempted on 2 processes, resumed on 1: refused unless the global batch stays (naming the
    setting that keeps it), then completed with train.grad_accum_steps=2."""
    run_dir = tmp_path / "run"
    sets = [a for s in TINY + ["synthetic.source=none"] for a in ("--set", s)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    args = ["-m", "actgen.trainer.cli", "--config", str(REPO / "configs" / "train-digits.yaml"), "--run-dir",
            str(run_dir), *sets]
    torchrun = Path(sys.executable).parent / "torchrun"
    first = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", *args, "--stop-after", "1"],
                           capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-4000:]
    assert torch.load(run_dir / "last.pt", weights_only=True)["global_batch"] == 64
    alone = subprocess.run([sys.executable, *args, "--resume"], capture_output=True, text=True, env=env,
                           timeout=600, cwd=tmp_path)
    assert alone.returncode == 2 and "train.grad_accum_steps=2 keeps it" in alone.stderr, alone.stderr[-2000:]
    resumed = subprocess.run([sys.executable, *args, "--resume", "--set", "train.grad_accum_steps=2"],
                             capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "not bit for bit" in resumed.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["complete"] and summary["world_size"] == 1
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]
