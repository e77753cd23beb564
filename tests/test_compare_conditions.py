"""The comparison's control conditions, by what they do to a run: rounds that search the training
images (``rounds.search: train``, nothing withheld) and builds that copy their guides
(``mode: copy``, no generation)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from actgen.shards.manifest import read_manifest
from actgen.shards.reader import ShardRandomAccess, read_index

REPO = Path(__file__).resolve().parents[1]


def test_train_search_needs_no_hold_out_and_a_hold_out_search_does(tiny_train_config):
    cfg = tiny_train_config("data.holdout_fraction=0", "rounds.search=train", "rounds.selection.rule=loss",
                            "rounds.selection.k=4")
    assert cfg.rounds.search == "train" and cfg.data.holdout_fraction == 0
    with pytest.raises(ValueError, match="data.holdout_fraction"):
        tiny_train_config("data.holdout_fraction=0", "rounds.search=holdout")


@pytest.mark.slow
def test_rounds_that_search_the_training_images_pick_the_highest_loss_ones(tiny_train_config, torch_one_thread):
    from actgen.shards.sources import DataSource, load_source
    from actgen.trainer.run import run

    cfg = tiny_train_config("data.holdout_fraction=0", "rounds.search=train", "rounds.selection.rule=loss",
                            "rounds.selection.k=5", "synthetic.source=none")
    summary = run(cfg)
    run_dir = cfg.resolved_run_dir()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    images = load_source(DataSource(path="builtin:digits"))
    train = len(images) - round(0.5 * len(images))      # the tiny config's test split is half
    # Nothing is withheld: every epoch trains on every labeled image outside the test split.
    assert {row["real_images"] for row in rows} == {train}
    for info in summary["rounds"]:
        manifest = read_manifest(run_dir / "rounds" / str(info["round"]) / "hard_samples.json")
        assert manifest.header.searched == "train" and manifest.header.format_version == 2
        assert manifest.header.num_evaluated == train and len(manifest.samples) == 5
        losses = [s.loss for s in manifest.samples]
        assert losses == sorted(losses, reverse=True)
        # The guide pool never repeats a selected image (both are training images now).
        assert not {s.id for s in manifest.samples} & set(manifest.header.guide_pool)
        assert info["holdout_acc"] is None and 0 <= info["search_train_acc"] <= 1


def test_a_hold_out_manifest_stays_version_1_without_the_new_field(write_round, tmp_path):
    directory, _ = write_round(tmp_path / "r")
    data = json.loads((directory / "hard_samples.json").read_text())
    assert data["header"]["format_version"] == 1 and "searched" not in data["header"]


def test_a_version_1_manifest_cannot_claim_a_train_search(write_round, tmp_path):
    from actgen.shards.errors import FormatError

    directory, _ = write_round(tmp_path / "r")
    path = directory / "hard_samples.json"
    data = json.loads(path.read_text())
    data["header"]["searched"] = "train"
    path.write_text(json.dumps(data))
    with pytest.raises(FormatError, match="format_version 2"):
        read_manifest(path)


def test_copy_refuses_settings_that_leave_an_image_without_a_guide(build_config):
    with pytest.raises(ValueError, match="schedule.enabled"):
        build_config("mode=copy", "schedule.enabled=true")
    with pytest.raises(ValueError, match="allocation.policy"):
        build_config("mode=copy", "schedule.enabled=false", "allocation.policy=balanced")
    build_config("mode=copy", "schedule.enabled=false", "allocation.policy=balanced", "allocation.fill=train")


def test_copy_writes_the_planned_guides_themselves(build_config, build_round, tmp_path):
    from actgen.builder.pipeline import run as build
    from actgen.builder.plan import make_plan
    from actgen.shards.sources import DataSource, load_source

    cfg = build_config("mode=copy", "schedule.enabled=false", "guide_preprocess=raw", "output.resize=none",
                       "generator.path=/no/generator/is/loaded")
    build(cfg)
    out = Path(cfg.output.path)
    index = read_index(out)
    assert index.format_version == 2 and index.created["holds_copies"] is True
    manifest = read_manifest(build_round / "hard_samples.json")
    plan = make_plan(manifest.samples, 6, cfg.seed, 1, len(index.shards), mode="copy")
    images = load_source(DataSource(path="builtin:digits"))
    data = ShardRandomAccess(out)
    assert len(data) == 6
    for i, planned in enumerate(plan.samples):
        sample = data.sample(i)
        # The same allocation as a render (the paper's: a permutation of the hard samples), and
        # each image is its guide, pixel for pixel.
        assert sample.provenance["source_id"] == planned.source_id
        assert sample.provenance["guidance"]["mode"] == "copy"
        guide = np.array(images.image(images.index_of(planned.source_id)).convert("RGB"))
        assert np.array_equal(np.array(sample.image.convert("RGB")), guide)
    assert index.created["allocation"]["modes"] == {"copy": 6}
