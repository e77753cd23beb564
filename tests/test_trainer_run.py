"""``run(cfg)`` end to end on the embedded digits: rounds, a stand-in builder, exact resume."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from actgen.shards.bundle import bundle_sha256, load_classifier
from actgen.shards.manifest import read_manifest
from actgen.shards.sources import DataSource, load_source
from actgen.trainer.checkpoint import load_checkpoint
from actgen.trainer.data import RealImages, split_indices
from actgen.trainer.transforms import build_eval_transform
from actgen.trainer.run import run

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _start_fake_builder(run_dir: Path, write_digit_shards, stop: threading.Event, rounds=(0, 1), n=16):
    """A thread that acts like actgen-build: waits for each round's manifest, then writes ``n`` noisy
    copies of that round's hard samples to ``rounds/<r>/shards``."""
    def work():
        for r in rounds:
            manifest = run_dir / "rounds" / str(r) / "hard_samples.json"
            while not manifest.is_file():
                if stop.is_set():
                    return
                time.sleep(0.05)
            ids = [s.id for s in read_manifest(manifest).samples]
            assert ids, "round without hard samples"
            write_digit_shards(manifest.parent / "shards", round=r, seed=r, source_ids=(ids * n)[:n])

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def test_rounds_with_a_builder_running_alongside(tiny_train_config, write_digit_shards, tmp_path):
    cfg = tiny_train_config("synthetic.on_missing=wait", "synthetic.timeout_s=120", "synthetic.poll_s=0.05")
    run_dir = cfg.resolved_run_dir()
    stop = threading.Event()
    builder = _start_fake_builder(run_dir, write_digit_shards, stop)
    try:
        summary = run(cfg)
    finally:
        stop.set()
        builder.join(timeout=10)

    # 1. Rounds after epochs 0 and 1 (horizon = 2 of 4 epochs), each a manifest + bundle.
    assert [r["round"] for r in summary["rounds"]] == [0, 1]
    digits = load_source(DataSource())
    split = split_indices(digits.labels(), 0.1, 0.5, 42)
    holdout_ids = {digits.sample_id(int(i)) for i in split.holdout}
    for r in (0, 1):
        manifest = read_manifest(run_dir / "rounds" / str(r) / "hard_samples.json")
        bundle = run_dir / "rounds" / str(r) / "checkpoint"
        h = manifest.header
        assert (h.round, h.epoch, h.split_seed, h.num_evaluated) == (r, r, 42, len(split.holdout))
        assert h.num_rounds == 2  # the builder's §1.3 schedules read the round count here
        assert h.dataset_fingerprint == digits.fingerprint and h.dataset["path"] == "builtin:digits"
        assert h.checkpoint_sha256 == bundle_sha256(bundle)
        # 2. The hard samples are exactly the hold-out images the bundled model gets wrong.
        model, _ = load_classifier(bundle)
        data = RealImages(digits, split.holdout, build_eval_transform(cfg.input))
        with torch.no_grad():
            x = torch.stack([data[i][0] for i in range(len(data))])
            predicted = model(x).argmax(-1).numpy()
        wrong = {digits.sample_id(int(i)) for i, p, y in zip(split.holdout, predicted, data.targets) if p != y}
        assert {s.id for s in manifest.samples} == wrong
        assert wrong <= holdout_ids
        assert all(s.class_name == digits.class_names[s.label] and s.predicted != s.label for s in manifest.samples)
        # The guide pool: training images only (never the hold-out), at most 16 per class, all classes.
        pool_rows = [digits.index_of(sid) for sid in h.guide_pool]
        assert set(pool_rows) <= set(split.train.tolist())
        per_class = np.bincount(digits.labels()[pool_rows], minlength=10)
        assert per_class.max() <= 16 and (per_class > 0).all()

    # 3. Round r's shards joined training at epoch r + 1; the pool only grows; the run owns copies.
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["synthetic_pool"] for row in rows] == [0, 16, 32, 32]
    assert rows[0]["synthetic_seen"] == 0 and all(row["synthetic_seen"] > 0 for row in rows[1:])
    assert rows[-1]["synthetic_seen_total"] == sum(row["synthetic_seen"] for row in rows)
    assert [p["round"] for p in summary["pool"]] == [0, 1]
    # What each round's data set was made of, and the synthetic shares, are recorded.
    for p in summary["pool"]:
        assert sum(p["composition"]["per_class"].values()) == p["num_samples"] == 16
        made_of = p["composition"]           # the stand-in builder: 16 distinct sources, no mode recorded
        assert (made_of["distinct_guides"], made_of["renders_per_guide_max"], made_of["modes"]) == (16, 1, {"?": 16})
    assert [p["share_at_join"] for p in summary["pool"]] == [     # round 1 joins with the hold-out
        round(16 / (rows[1]["real_images"] + 16), 4), round(32 / (rows[2]["real_images"] + 32), 4)]
    assert [row["synthetic_share"] for row in rows] == [round(r["synthetic_seen"] / r["images"], 4) for r in rows]
    assert rows[3]["synthetic_set_share"] == round(32 / (rows[3]["real_images"] + 32), 4)
    assert all((run_dir / p["directory"] / "index.json").is_file() for p in summary["pool"])
    # 4. The hold-out is evaluated until it is merged at epoch 2; then training has more real images.
    assert [row["holdout_acc"] is not None for row in rows] == [True, True, False, False]
    assert rows[2]["real_images"] == rows[1]["real_images"] + len(split.holdout)
    assert all(row["test_acc"] is not None for row in rows)
    assert (run_dir / "metrics.csv").read_text().splitlines()[0].startswith("epoch,loss,lr,train_acc,holdout_acc")
    assert summary["complete"] and json.loads((run_dir / "summary.json").read_text())["epochs_completed"] == 4
    assert (run_dir / "config.yaml").is_file() and (run_dir / "last.pt").is_file()
    assert summary["final"]["test_acc"] > 0.3  # it learned something in 4 tiny epochs


def _run_dir_state(run_dir: Path) -> dict:
    state = load_checkpoint(run_dir / "last.pt")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("images_per_s"), row.pop("epoch_time_s")
    manifests = {}
    for path in sorted(run_dir.glob("rounds/*/hard_samples.json")):
        m = read_manifest(path)
        manifests[path.parent.name] = (m.header.checkpoint_sha256, [s.id for s in m.samples])
    return {"state": state, "rows": rows, "manifests": manifests}


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 1])
def test_resume_is_exact(tiny_train_config, write_digit_shards, tmp_path, workers):
    """Train 4 epochs == train 2, stop, resume for 2: identical weights, optimizer, EMA, metrics."""
    builder = write_digit_shards(tmp_path / "builder" / "r0", n=10, round=0)  # round 1 never arrives (skip)
    overrides = (f"synthetic.pattern={tmp_path}/builder/r{{round}}", "train.ema_decay=0.9", "train.mixup_alpha=0.2",
                 "train.label_smoothing=0.1", "input.crop=random_resized", "input.re_prob=0.25",
                 "model.drop_path_rate=0.1", f"loader.num_workers={workers}")
    assert builder.is_dir()
    full = tiny_train_config(*overrides, run_dir=tmp_path / "full")
    run(full)
    parted = tiny_train_config(*overrides, run_dir=tmp_path / "parted")
    first = run(parted, stop_after=2)
    assert not first["complete"] and first["epochs_completed"] == 2
    assert len(_run_dir_state(tmp_path / "parted")["rows"]) == 2
    second = run(parted, resume=True)
    assert second["complete"] and second["synthetic_pool"] == 10

    a, b = _run_dir_state(tmp_path / "full"), _run_dir_state(tmp_path / "parted")
    assert a["rows"] == b["rows"]
    assert a["manifests"] == b["manifests"] and len(a["manifests"]) == 2
    sa, sb = a["state"], b["state"]
    assert sa["epoch"] == sb["epoch"] == 4
    for key, value in sa["model"].items():
        assert torch.equal(value, sb["model"][key]), key
    for key, value in sa["loop"]["ema"].items():
        assert torch.equal(value, sb["loop"]["ema"][key]), key
    moments = [(k, s["momentum_buffer"]) for k, s in sa["loop"]["optimizer"]["state"].items()]
    assert moments and all(torch.equal(m, sb["loop"]["optimizer"]["state"][k]["momentum_buffer"]) for k, m in moments)
    assert sa["loop"]["optimizer_steps"] == sb["loop"]["optimizer_steps"]
    assert sa["synthetic_seen_total"] == sb["synthetic_seen_total"] > 0


@pytest.mark.parametrize("balance", [False, True])
def test_fraction_mixing_trains_on_the_configured_share(tiny_train_config, write_digit_shards, tmp_path, balance):
    write_digit_shards(tmp_path / "b" / "r0", n=5, round=0)
    cfg = tiny_train_config(f"synthetic.pattern={tmp_path}/b/r{{round}}", "synthetic.mixing=fraction",
                            "synthetic.fraction=0.25", "train.epochs=2", "rounds.horizon=1", "rounds.merge_epoch=2",
                            f"synthetic.class_balance={balance}")
    run(cfg)
    rows = [json.loads(line) for line in (cfg.resolved_run_dir() / "metrics.jsonl").read_text().splitlines()]
    # Epoch 1: every batch of 64 holds 16 synthetic images, cycling the 5-image pool.
    assert rows[1]["synthetic_pool"] == 5
    assert rows[1]["synthetic_seen"] == rows[1]["images"] // 4 and rows[1]["images"] % 64 == 0
    assert rows[1]["images"] == (rows[1]["real_images"] // 48) * 64


def test_no_synthetic_source_trains_on_real_images_only(tiny_train_config, write_digit_shards, tmp_path):
    cfg = tiny_train_config("synthetic.source=none", "train.epochs=2", "rounds.horizon=1", "rounds.merge_epoch=2")
    # Shards at the pattern would be ignored: the source is off.
    write_digit_shards(cfg.resolved_run_dir().parent / "unused", n=4)
    summary = run(cfg)
    assert summary["synthetic_pool"] == 0 and summary["synthetic_seen_total"] == 0
    assert [r["round"] for r in summary["rounds"]] == [0]
    assert np.isfinite(summary["final"]["loss"])


def test_a_late_data_set_joins_at_a_later_epoch_with_skip(tiny_train_config, write_digit_shards, tmp_path,
                                                          monkeypatch):
    """on_missing: skip goes on without round 0's shards and picks them up once they exist."""
    import actgen.trainer.rounds as rounds_module

    cfg = tiny_train_config(f"synthetic.pattern={tmp_path}/late/r{{round}}", "train.epochs=3", "rounds.horizon=2",
                            "rounds.merge_epoch=2")
    real_write_round = rounds_module.write_round

    def write_round_then_finish_round_0(run_dir, round, *args, **kwargs):
        path = real_write_round(run_dir, round, *args, **kwargs)
        if round == 1:  # the builder finishes round 0's data set only now, one epoch late
            write_digit_shards(tmp_path / "late" / "r0", n=7, round=0)
        return path

    monkeypatch.setattr(rounds_module, "write_round", write_round_then_finish_round_0)
    summary = run(cfg)
    assert [(p["round"], p["epoch"]) for p in summary["pool"]] == [(0, 2)]
    rows = [json.loads(line) for line in (cfg.resolved_run_dir() / "metrics.jsonl").read_text().splitlines()]
    assert [r["synthetic_pool"] for r in rows] == [0, 0, 7]


def test_separate_test_source(tiny_train_config, tmp_path):
    from datasets import ClassLabel, Dataset, Features, Image, Value

    from actgen.shards.errors import FormatError
    from actgen.shards.sources import DIGIT_NAMES

    digits = load_source(DataSource())
    rows = {"image": [digits.image(i) for i in range(30)], "label": [digits.label(i) for i in range(30)]}
    good = tmp_path / "test.parquet"
    Dataset.from_dict(rows, features=Features({"image": Image(), "label": ClassLabel(names=list(DIGIT_NAMES))})
                      ).to_parquet(str(good))
    cfg = tiny_train_config("data.test_fraction=0.0", f"data.test_source.path={good}", "train.epochs=1",
                            "rounds.horizon=1", "rounds.merge_epoch=1")
    summary = run(cfg)
    acc = summary["final"]["test_acc"]
    assert abs(acc * 30 - round(acc * 30)) < 1e-9  # a share of the 30 test-source images

    other = tmp_path / "other.parquet"
    Dataset.from_dict(rows, features=Features({"image": Image(), "label": Value("int64")})).to_parquet(str(other))
    names = [f"n{i}" for i in range(10)]
    bad = tiny_train_config("data.test_fraction=0.0", f"data.test_source.path={other}",
                            f"data.test_source.class_names=[{','.join(names)}]", run_dir=tmp_path / "bad")
    with pytest.raises(FormatError, match=r"other.parquet: test class names \['n0'.*differ from .*\['zero'"):
        run(bad)
    assert not (tmp_path / "bad").exists()
