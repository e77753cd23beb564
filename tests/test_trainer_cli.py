"""``actgen-train``: help, an end-to-end run, and bad input giving one error line and exit code 2."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from actgen.trainer.cli import main

pytestmark = pytest.mark.usefixtures("torch_one_thread")

REPO = Path(__file__).resolve().parents[1]
TINY = ["data.test_fraction=0.5", "input.image_size=16", "model.name=test_resnet", "train.epochs=2",
        "train.device=cpu", "train.progress=false", "train.log_interval=100"]


def _invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def _assert_one_error_line(result, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("actgen-train: error: ")
    for fragment in fragments:
        assert fragment in last, last
    return last


def test_help_explains_the_command():
    result = _invoke("--help")
    assert result.exit_code == 0
    for text in ("--config", "--set", "--run-dir", "--resume", "--stop-after", "hard_samples.json", "KEY=VALUE"):
        assert text in result.output


def test_cli_run_stop_and_resume(tmp_path, write_digit_shards):
    write_digit_shards(tmp_path / "b" / "r0", n=6, round=0)
    run_dir = tmp_path / "run"
    config = REPO / "configs" / "train-digits.yaml"
    args = ["--config", str(config), "--run-dir", str(run_dir), *_sets(*TINY, f"synthetic.pattern={tmp_path}/b/r{{round}}")]
    first = _invoke(*args, "--stop-after", "1")
    assert first.exit_code == 0, first.output
    assert (run_dir / "rounds" / "0" / "hard_samples.json").is_file()
    assert json.loads((run_dir / "summary.json").read_text())["complete"] is False
    second = _invoke("--run-dir", str(run_dir), "--resume")  # the run's own config.yaml
    assert second.exit_code == 0, second.output
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["complete"] and summary["synthetic_pool"] == 6 and summary["synthetic_seen_total"] > 0
    assert "finished" in second.stderr


@pytest.mark.parametrize("make_args, fragments", [
    (lambda t: ["--config", str(t / "absent.yaml")], ["absent.yaml", "not found"]),
    (lambda t: ["--config", str(REPO / "configs" / "train-digits.yaml"), "--set", "train.epochz=3"],
     ["key 'train.epochz'", "Did you mean: 'epochs'"]),
    (lambda t: ["--config", str(REPO / "configs" / "train-digits.yaml"), "--set", "train.epochs=many"],
     ["key 'train.epochs'"]),
    (lambda t: ["--config", str(REPO / "configs" / "train-digits.yaml"), *_sets(*TINY, "model.name=resnet_nope")],
     ["config key 'model.name' = 'resnet_nope'", "not a timm model"]),
    (lambda t: ["--config", str(REPO / "configs" / "train-digits.yaml"),
                *_sets(*TINY, f"data.source.path={t}/missing.parquet")], ["missing.parquet"]),
    (lambda t: ["--config", str(REPO / "configs" / "train-digits.yaml"), *_sets(*TINY, "optim.opt=sgdd")],
     ["config key 'optim.opt' = 'sgdd'"]),
    (lambda t: ["--config", str(REPO / "configs" / "train-digits.yaml"), *_sets(*TINY, "sched.sched=cosinee")],
     ["config key 'sched.sched' = 'cosinee'"]),
    (lambda t: ["--config", str(REPO / "configs" / "train-digits.yaml"), *_sets(*TINY, "loader.batch_size=4096")],
     ["config key 'loader.batch_size' = 4096"]),
    (lambda t: ["--run-dir", str(t / "run"), "--resume"], ["config.yaml", "not found"]),
])
def test_bad_input_is_one_line_and_leaves_no_run_directory(tmp_path, make_args, fragments):
    args = make_args(tmp_path)
    if "--run-dir" not in args:
        args += ["--run-dir", str(tmp_path / "run")]
    _assert_one_error_line(_invoke(*args), *fragments)
    assert not (tmp_path / "run").exists()


def test_data_set_without_the_configured_columns(tmp_path):
    from datasets import Dataset, Features, Image, Value
    from PIL import Image as PILImage

    path = tmp_path / "odd.parquet"
    Dataset.from_dict({"img": [PILImage.new("RGB", (8, 8))] * 4, "lbl": [0, 1, 0, 1]},
                      features=Features({"img": Image(), "lbl": Value("int64")})).to_parquet(str(path))
    result = _invoke("--config", str(REPO / "configs" / "train-digits.yaml"), "--run-dir", str(tmp_path / "run"),
                     *_sets(*TINY, f"data.source.path={path}"))
    _assert_one_error_line(result, "odd.parquet", "image_column 'image' not found", "img")
    assert not (tmp_path / "run").exists()


def test_initial_weights_from_another_data_set(tmp_path):
    from actgen.shards.bundle import BundleConfig, write_bundle
    import timm

    other = tmp_path / "other-bundle"
    model = timm.create_model("test_resnet", num_classes=10)
    write_bundle(other, model.state_dict(), BundleConfig(
        architecture="test_resnet", num_classes=10, class_names=[f"c{i}" for i in range(10)], input_size=(3, 16, 16),
        mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bilinear", dataset_fingerprint="e" * 64, round=0, epoch=0))
    result = _invoke("--config", str(REPO / "configs" / "train-digits.yaml"), "--run-dir", str(tmp_path / "run"),
                     *_sets(*TINY, f"model.initial_weights={other}"))
    _assert_one_error_line(result, "other-bundle", "checkpoint was trained on classes ['c0'", "'zero'")
    assert not (tmp_path / "run").exists()


def test_truncated_shard_for_a_round_names_the_shard(tmp_path, write_digit_shards):
    source = write_digit_shards(tmp_path / "b" / "r0", n=6, round=0)
    shard = sorted(source.glob("*.tar"))[0]
    shard.write_bytes(shard.read_bytes()[:1000])
    run_dir = tmp_path / "run"
    result = _invoke("--config", str(REPO / "configs" / "train-digits.yaml"), "--run-dir", str(run_dir),
                     *_sets(*TINY, f"synthetic.pattern={tmp_path}/b/r{{round}}"))
    _assert_one_error_line(result, shard.name, "size is 1000 bytes")
    # Epoch 0 finished before the shards were due: the run can be resumed once they are fixed.
    assert (run_dir / "last.pt").is_file() and not (run_dir / "synthetic" / "round-0000").exists()


def test_run_directory_rules(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("mine")
    base = ["--config", str(REPO / "configs" / "train-digits.yaml"), "--run-dir", str(run_dir), *_sets(*TINY)]
    _assert_one_error_line(_invoke(*base), "already exists", "--resume")
    _assert_one_error_line(_invoke(*base, "--resume"), "last.pt", "no checkpoint to resume from")
    assert sorted(p.name for p in run_dir.iterdir()) == ["notes.txt"]


def test_resume_with_changed_settings_names_them(tmp_path):
    run_dir = tmp_path / "run"
    base = ["--config", str(REPO / "configs" / "train-digits.yaml"), "--run-dir", str(run_dir), *_sets(*TINY)]
    assert _invoke(*base, "--stop-after", "1").exit_code == 0
    _assert_one_error_line(_invoke(*base, "--resume", "--set", "optim.lr=0.5"), "config.yaml", "['optim.lr']")
    # Settings that do not change the computation may differ.
    assert _invoke(*base, "--resume", "--set", "train.log_interval=3").exit_code == 0


@pytest.mark.slow
def test_console_script_subprocess(tmp_path):
    script = Path(sys.executable).parent / "actgen-train"
    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}  # see torch_one_thread
    ok = subprocess.run([str(script), "--config", str(REPO / "configs" / "train-digits.yaml"), "--run-dir",
                         str(run_dir), *_sets(*TINY, "train.epochs=1", "rounds.horizon=1", "rounds.merge_epoch=1")],
                        capture_output=True, text=True, env=env, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert (run_dir / "rounds" / "0" / "checkpoint" / "model.safetensors").is_file()
    state = torch.load(run_dir / "last.pt", weights_only=True)
    assert state["epoch"] == 1
    bad = subprocess.run([str(script), "--config", str(REPO / "configs" / "train-digits.yaml"), "--set", "nme=x"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == ["actgen-train: error: --set overrides: Key 'nme' not in 'Config'. "
                                               "Did you mean: 'name'?"]


@pytest.mark.slow
def test_sigterm_stops_like_ctrl_c_and_the_resumed_run_ends_exactly_as_an_uninterrupted_one(tmp_path):
    """How schedulers preempt: SIGTERM mid-run exits 143 with one line, last.pt holds the last
    complete epoch or the step the signal stopped at (``test_trainer_preempt``), and ``--resume``
    finishes with the metrics of a run never stopped."""
    import signal
    import time

    script = Path(sys.executable).parent / "actgen-train"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    sets = _sets(*TINY, "train.epochs=5", "rounds.horizon=2", "rounds.merge_epoch=3", "synthetic.source=none")
    config = ["--config", str(REPO / "configs" / "train-digits.yaml")]

    def metrics(run_dir):
        return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]

    whole = tmp_path / "whole"
    assert subprocess.run([str(script), *config, "--run-dir", str(whole), *sets], env=env, capture_output=True,
                          timeout=300).returncode == 0
    stopped = tmp_path / "stopped"
    proc = subprocess.Popen([str(script), *config, "--run-dir", str(stopped), *sets], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not ((stopped / "metrics.jsonl").is_file() and len(metrics(stopped)) >= 2) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    ours = [line for line in err.splitlines() if line.startswith("actgen-train:")]
    assert len(ours) == 1 and ours[0].startswith("actgen-train: terminated (SIGTERM)") and "Traceback" not in err
    done = len(metrics(stopped))
    saved = torch.load(stopped / "last.pt", weights_only=True)["epoch"]
    assert 2 <= done < 5 and saved in (done - 1, done)    # a row past the checkpoint is redone on resume
    assert subprocess.run([str(script), "--run-dir", str(stopped), "--resume"], env=env, capture_output=True,
                          timeout=300).returncode == 0
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("epoch_time_s", "images_per_s")} for r in rows]  # noqa: E731
    assert strip(metrics(stopped)) == strip(metrics(whole))
