"""Prompt names apart from class names, and guides cut as the classifier sees them (ImageNet done right)."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from actgen.builder.prompts import classifier_crop, imagenet_simple_names, load_prompt_names
from actgen.shards.errors import FormatError

WNIDS = ["n01440764", "n01443537"]          # tench, goldfish


def test_prompt_names_from_a_mapping_a_list_or_lines(tmp_path):
    mapping = tmp_path / "names.json"
    mapping.write_text(json.dumps({"n01443537": "goldfish", "n01440764": "tench", "n99999999": "extra"}))
    assert load_prompt_names(mapping, WNIDS) == ["tench", "goldfish"]
    listed = tmp_path / "names-list.json"
    listed.write_text(json.dumps(["fish", "fish"]))                  # duplicates are allowed
    assert load_prompt_names(listed, WNIDS) == ["fish", "fish"]
    lines = tmp_path / "names.txt"
    lines.write_text("tench\n goldfish \n")
    assert load_prompt_names(lines, WNIDS) == ["tench", "goldfish"]
    with pytest.raises(FormatError, match=r"no prompt name for 1 classes, e.g. \['n01443537'\]"):
        mapping.write_text(json.dumps({"n01440764": "tench"}))
        load_prompt_names(mapping, WNIDS)
    with pytest.raises(FormatError, match="lists 1 prompt names for 2 classes"):
        load_prompt_names(lines.write_text("tench\n") and lines, WNIDS)
    with pytest.raises(FormatError, match="prompt name of entry 1 is ''"):
        listed.write_text(json.dumps(["tench", ""]))
        load_prompt_names(listed, WNIDS)
    with pytest.raises(FileNotFoundError, match="generator.prompt_names"):
        load_prompt_names(tmp_path / "absent.json", WNIDS)


def test_shipped_imagenet_simple_names_are_unique_and_derived_from_timm():
    from pathlib import Path

    shipped = json.loads((Path(__file__).parents[1] / "configs" / "imagenet-simple-names.json").read_text())
    assert len(shipped) == 1000 and len(set(shipped.values())) == 1000
    assert shipped["n01440764"] == "tench" and shipped["n03710721"] == "tank suit"
    assert {shipped["n02012849"], shipped["n03126707"]} == {"crane bird", "construction crane"}
    assert shipped == imagenet_simple_names()


def test_classifier_crop_is_the_eval_transforms_centre_crop():
    image = np.arange(4 * 6).reshape(4, 6, 1).repeat(3, axis=2)       # H 4, W 6
    # crop_pct 1: the shorter side, centred (timm: resize 4 -> input, centre crop input).
    np.testing.assert_array_equal(classifier_crop(image, (16, 16), 1.0)[..., 0],
                                  [[1, 2, 3, 4], [7, 8, 9, 10], [13, 14, 15, 16], [19, 20, 21, 22]])
    # crop_pct 0.5 at input 4: shorter side resized to 8, centre 4 of it = the centre 2x2 here.
    np.testing.assert_array_equal(classifier_crop(image, (4, 4), 0.5)[..., 0], [[8, 9], [14, 15]])
    square = np.zeros((5, 5, 3), np.uint8)
    assert classifier_crop(square, (16, 16), 1.0) is not None and classifier_crop(square, (16, 16), 1.0).shape == (5, 5, 3)


# -- a tiny ImageNet-like imagefolder through actgen-build -----------------------------------------


def _imagenet_like_round(tmp_path):
    """Folders n01440764/ and n01443537/ of 24x36 (H x W) images with a bright centre square, a
    test_resnet bundle (input 16, crop_pct 1) and a manifest naming 2 hard samples."""
    import timm
    import torch

    from actgen.shards.bundle import BundleConfig, write_bundle
    from actgen.shards.manifest import HardSample, HardSampleManifest, ManifestHeader, write_manifest
    from actgen.shards.sources import DataSource, load_source

    folder = tmp_path / "imagenet" / "train"
    rng = np.random.default_rng(0)
    for wnid in WNIDS:
        (folder / wnid).mkdir(parents=True)
        for k in range(2):
            pixels = rng.integers(0, 256, (24, 36, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / wnid / f"{wnid}_{k}.png")
    images = load_source(DataSource(path=str(folder)))
    assert images.class_names == WNIDS
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=2)
    sha = write_bundle(tmp_path / "round" / "checkpoint", model.state_dict(), BundleConfig(
        architecture="test_resnet", num_classes=2, class_names=WNIDS, input_size=(3, 16, 16), mean=(0.5,) * 3,
        std=(0.5,) * 3, interpolation="bilinear", dataset_fingerprint=images.fingerprint, round=1, epoch=1,
        crop_pct=1.0))
    samples = [HardSample(id=images.sample_id(i), label=images.label(i), class_name=WNIDS[images.label(i)],
                          predicted=1 - images.label(i), prob_true=0.1, loss=2.3) for i in (0, 2)]
    header = ManifestHeader(dataset=dataclasses.asdict(images.source), dataset_fingerprint=images.fingerprint,
                            class_names=WNIDS, split_seed=0, holdout_fraction=0.5, num_evaluated=4,
                            checkpoint_sha256=sha, round=1, epoch=1)
    write_manifest(tmp_path / "round" / "hard_samples.json", HardSampleManifest(header=header, samples=samples))
    return tmp_path / "round", images


@pytest.mark.parametrize("preprocess", ["classifier", "raw"])
def test_wnid_imagefolder_builds_with_prompt_names_and_cropped_guides(tmp_path, build_fast, monkeypatch,
                                                                      preprocess):
    from actgen.builder.config import load_config
    from actgen.builder.pipeline import run
    from actgen.builder.batch_transform import GuidedRenderer
    from actgen.shards.reader import ShardRandomAccess
    from actgen.shards.verify import verify

    round_dir, images = _imagenet_like_round(tmp_path)
    names = tmp_path / "simple-names.json"
    names.write_text(json.dumps({"n01440764": "tench", "n01443537": "goldfish"}))
    guides: list[np.ndarray] = []
    real_call = GuidedRenderer.__call__

    def recording_call(self, batch):
        guides.extend(np.asarray(g) for g in batch.get("guide", []))
        return real_call(self, batch)

    monkeypatch.setattr(GuidedRenderer, "__call__", recording_call)
    cfg = load_config(None, [f"checkpoint={round_dir / 'checkpoint'}", f"manifest={round_dir / 'hard_samples.json'}",
                             f"dataset.path={images.source.path}", f"output.path={tmp_path / 'shards'}", "budget=2",
                             *build_fast, "mode=img2img", f"generator.prompt_names={names}",
                             f"guide_preprocess={preprocess}"])
    run(cfg)
    verify(tmp_path / "shards", class_names=WNIDS)
    # Labels and class names stay the data set's; the prompt says what the class is.
    shards = ShardRandomAccess(tmp_path / "shards")
    records = [shards.sample(i) for i in range(len(shards))]
    for record in records:
        wnid = record.provenance["class_name"]
        assert wnid in WNIDS and WNIDS[record.label] == wnid
        assert record.provenance["prompt"] == f"a photo of {dict(zip(WNIDS, ['tench', 'goldfish']))[wnid]}"
    assert {r.provenance["prompt"] for r in records} <= {"a photo of tench", "a photo of goldfish"}
    build = json.loads((tmp_path / "shards" / "build.json").read_text())
    assert build["settings"]["prompt_names"] == ["tench", "goldfish"]
    # The guide is the classifier's centre crop of the 24x36 image (its middle 24 columns), or all of it.
    assert len(guides) == 2
    for guide in guides:
        raws = [np.array(images.image(i)) for i in range(len(images))]
        expected = [raw[:, 6:30] if preprocess == "classifier" else raw for raw in raws]
        assert guide.shape == ((24, 24, 3) if preprocess == "classifier" else (24, 36, 3))
        assert any(np.array_equal(guide, e) for e in expected)


def test_bundles_without_crop_pct_still_read(tmp_path, write_round):
    from actgen.shards.bundle import load_classifier, read_bundle_config

    directory, _ = write_round(tmp_path / "r")
    config_file = directory / "checkpoint" / "config.json"
    data = json.loads(config_file.read_text())
    assert data["crop_pct"] == 1.0
    del data["crop_pct"]                                   # a bundle written before the field
    config_file.write_text(json.dumps(data))
    assert read_bundle_config(directory / "checkpoint").crop_pct == 1.0
    model, _ = load_classifier(directory / "checkpoint")
    assert model.pretrained_cfg["crop_pct"] == 1.0
    data["crop_pct"] = 0.0
    config_file.write_text(json.dumps(data))
    with pytest.raises(FormatError, match=r"crop_pct must be in \(0, 1\], got 0.0"):
        read_bundle_config(directory / "checkpoint")
