"""``actgen-data filter``: which images a classifier keeps, and what the result records."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from actgen.builder.pipeline import run
from actgen.sharing.cli import main
from actgen.sharing.filter import ClassifierScorer, keep_mask
from actgen.shards.bundle import bundle_sha256
from actgen.shards.reader import ShardRandomAccess
from actgen.shards.verify import verify


def test_keep_mask_by_probability_and_rank():
    probs = np.array([[0.7, 0.2, 0.1],      # label 0: p .7, rank 1
                      [0.5, 0.3, 0.2],      # label 1: p .3, rank 2
                      [0.2, 0.2, 0.6],      # label 1: p .2, rank 2 (tied with class 0)
                      [0.1, 0.1, 0.8]])     # label 0: p .1, rank 2 (tied)
    labels = np.array([0, 1, 1, 0])
    assert keep_mask(probs, labels, 0.0, 1).tolist() == [True, False, False, False]
    assert keep_mask(probs, labels, 0.0, 2).tolist() == [True, True, True, True]
    assert keep_mask(probs, labels, 0.25, 2).tolist() == [True, True, False, False]
    assert keep_mask(probs, labels, 0.0, None).tolist() == [True] * 4


@pytest.fixture(scope="module")
def scored(tmp_path_factory, build_round, build_fast):
    from actgen.builder.config import load_config

    data = tmp_path_factory.mktemp("f") / "shards"
    run(load_config(None, [f"checkpoint={build_round / 'checkpoint'}", f"manifest={build_round / 'hard_samples.json'}",
                           f"output.path={data}", *build_fast, "budget=12", "output.samples_per_shard=4"]))
    shards = ShardRandomAccess(data)
    probs = ClassifierScorer(build_round / "checkpoint")([shards[i][0] for i in range(len(shards))])
    p_true = probs[np.arange(len(shards)), shards.labels()]
    return data, shards, p_true


def test_filter_keeps_what_the_classifier_assigns_to_the_label(scored, build_round, tmp_path):
    data, shards, p_true = scored
    threshold = float(np.median(p_true))
    out = tmp_path / "kept"
    result = CliRunner().invoke(main, ["filter", str(data), str(out), "--checkpoint", str(build_round / "checkpoint"),
                                       "--min-prob", str(threshold), "--max-rank", "10"])
    assert result.exit_code == 0, result.output
    expected = {shards.key(i) for i in range(len(shards)) if p_true[i] >= threshold}
    kept = ShardRandomAccess(out)
    assert {kept.key(i) for i in range(len(kept))} == expected and 0 < len(expected) < len(shards)
    assert verify(out).num_samples == len(expected)          # an ordinary data set: the trainer reads it
    created = json.loads((out / "index.json").read_text())["created"]
    assert created["filter"]["scorer"]["checkpoint_sha256"] == bundle_sha256(build_round / "checkpoint")
    assert created["filter"]["min_prob"] == threshold and created["filter"]["kept"] == len(expected)
    assert "Filter: kept" in (out / "README.md").read_text()
    assert all(kept.provenance(i)["filter_score"] >= threshold for i in range(len(kept)))


def test_filter_refuses_bad_thresholds_other_classes_and_an_empty_result(scored, build_round, tmp_path, write_round):
    data, _, _ = scored
    ckpt = str(build_round / "checkpoint")
    none = CliRunner().invoke(main, ["filter", str(data), str(tmp_path / "o"), "--checkpoint", ckpt, "--min-prob", "1"])
    assert none.exit_code == 2 and "no image" in none.stderr and not (tmp_path / "o" / "index.json").exists()
    bad = CliRunner().invoke(main, ["filter", str(data), str(tmp_path / "o"), "--checkpoint", ckpt, "--min-prob", "2"])
    assert bad.exit_code == 2 and "--min-prob" in bad.output
    other, _ = write_round(tmp_path / "r" / "1", class_names=[f"c{i}" for i in range(10)])
    wrong = CliRunner().invoke(main, ["filter", str(data), str(tmp_path / "o"), "--checkpoint",
                                      str(other / "checkpoint")])
    assert wrong.exit_code == 2 and "the scorer's classes" in wrong.stderr
