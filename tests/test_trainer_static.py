"""Training on a received data set (``synthetic.static``): a merged set from ``actgen-data merge``
trains a real-only run from a chosen epoch on; its classes are matched to the run's by name."""
from __future__ import annotations

import json

import numpy as np
import pytest

from actgen.shards.errors import FormatError
from actgen.shards.sources import DIGIT_NAMES
from actgen.sharing.merge import merge
from actgen.trainer.data import SyntheticImages
from actgen.trainer.transforms import build_train_transform
from actgen.trainer.run import run
from actgen.trainer.synthetic import acquire_static


def test_a_merged_set_trains_a_run_without_rounds_from_the_chosen_epoch(tiny_train_config, write_digit_shards,
                                                                         tmp_path):
    write_digit_shards(tmp_path / "r0", n=12, round=0, seed=0)
    write_digit_shards(tmp_path / "r1", n=12, round=1, seed=1)
    merge([tmp_path / "r0", tmp_path / "r1"], tmp_path / "merged")
    cfg = tiny_train_config("synthetic.source=none", "train.epochs=3", "rounds.horizon=1", "rounds.merge_epoch=2",
                            f"synthetic.static=[{tmp_path / 'merged'}]", "synthetic.static_epoch=1")
    first = run(cfg, stop_after=2)
    # A resume finds the copy it trained on and does not fetch the data set again.
    (tmp_path / "merged" / "index.json").unlink()
    summary = run(cfg, resume=True)
    assert summary["complete"] and summary["pool"] == first["pool"]
    (entry,) = summary["pool"]
    assert entry["round"] == -1 and entry["epoch"] == 1 and entry["num_samples"] == 24
    assert entry["location"] == str(tmp_path / "merged") and entry["directory"] == "synthetic/static-0000"
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["synthetic_seen"] == 0 and rows[1]["synthetic_seen"] > 0 and rows[2]["synthetic_seen"] > 0


def test_classes_are_matched_by_name(write_digit_shards, tmp_path, tiny_train_config):
    cfg = tiny_train_config()
    transform = build_train_transform(cfg.input)
    reversed_names = list(reversed(DIGIT_NAMES))
    write_digit_shards(tmp_path / "rev", n=20, class_names=reversed_names)
    data = SyntheticImages(tmp_path / "rev", transform, DIGIT_NAMES)
    assert np.array_equal(data.labels(), 9 - np.asarray(data.shards.labels()))
    assert data[3][1] == 9 - data.shards.label(3)

    write_digit_shards(tmp_path / "three", n=9, class_names=["zero", "one", "two"])
    assert acquire_static(str(tmp_path / "three"), 0, tmp_path / "run", 0, list(DIGIT_NAMES)).num_samples == 9
    assert set(SyntheticImages(tmp_path / "run" / "synthetic" / "static-0000", transform, DIGIT_NAMES).labels()) \
        == {0, 1, 2}

    write_digit_shards(tmp_path / "cats", n=4, class_names=["zero", "one", "cat"])
    with pytest.raises(FormatError, match=r"classes \['cat'\] are not among the run's"):
        acquire_static(str(tmp_path / "cats"), 1, tmp_path / "run", 0, list(DIGIT_NAMES))
    assert not (tmp_path / "run" / "synthetic" / "static-0001").exists()
    assert [p.name for p in (tmp_path / "run" / "synthetic").iterdir()] == ["static-0000"]


def test_static_locations_are_checked():
    from actgen.trainer.config import load_config

    with pytest.raises(ValueError, match="synthetic.static"):
        load_config(None, ["synthetic.static=[a, a]"])
    with pytest.raises(ValueError, match="synthetic.static_epoch"):
        load_config(None, ["synthetic.static_epoch=-1"])


def test_a_run_whose_received_set_fails_at_epoch_0_is_taken_over_by_the_corrected_rerun(tiny_train_config,
                                                                                          write_digit_shards,
                                                                                          tmp_path):
    write_digit_shards(tmp_path / "good", n=12)
    common = ("synthetic.source=none", "train.epochs=1", "rounds.horizon=1", "rounds.merge_epoch=1")
    with pytest.raises(FormatError, match="not-there"):
        run(tiny_train_config(*common, f"synthetic.static=[{tmp_path / 'not-there'}]"))
    cfg = tiny_train_config(*common, f"synthetic.static=[{tmp_path / 'good'}]")
    assert (cfg.resolved_run_dir() / "config.yaml").is_file()        # the failed run's folder is there
    summary = run(cfg)                                                # no manual deletion needed
    assert summary["complete"] and summary["pool"][0]["location"] == str(tmp_path / "good")
