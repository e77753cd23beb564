"""Data in: built-in digits, image folders, parquet, save_to_disk; fingerprints and sample ids."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from actgen.shards.errors import FormatError
from actgen.shards.sources import (DIGIT_NAMES, DataSource, load_source, parse_sample_id, sample_id)

NAMES = ["circle", "square"]


def _write_imagefolder(root, per_class=3):
    """root/<class>/<i>.png with distinct pixel content per image."""
    for c, name in enumerate(NAMES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.full((6, 5, 3), 40 * i + 100 * c, dtype=np.uint8)
            pixels[0, 0] = (i, c, 7)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def _small_dataset(labels=(0, 1, 0, 1, 1), class_label=True):
    import datasets

    images = [Image.fromarray(np.full((4, 4, 3), 30 * i, np.uint8)) for i in range(len(labels))]
    label_feature = datasets.ClassLabel(names=NAMES) if class_label else datasets.Value("int64")
    features = datasets.Features({"img": datasets.Image(), "y": label_feature})
    return datasets.Dataset.from_dict({"img": images, "y": list(labels)}, features=features)


def test_builtin_digits():
    data = load_source(DataSource())
    assert len(data) == 1797
    assert data.class_names == list(DIGIT_NAMES)
    image = data.image(0)
    assert image.mode == "RGB" and image.size == (8, 8)
    from sklearn.datasets import load_digits

    raw = load_digits().images[0]  # 0..16
    pixels = np.asarray(image)
    assert pixels.dtype == np.uint8
    assert np.array_equal(pixels[..., 0], np.rint(raw * 255 / 16).astype(np.uint8))
    assert np.array_equal(pixels[..., 0], pixels[..., 2])  # grey scans served as RGB
    assert max(np.asarray(data.image(i)).max() for i in range(20)) == 255
    labels = data.labels()
    assert labels.dtype == np.int64 and labels.shape == (1797,)
    assert set(labels.tolist()) == set(range(10))
    assert data.label(5) == int(labels[5])
    assert data.sample_id(7) == f"{data.fingerprint[:12]}-00000007"
    assert data.index_of(data.sample_id(7)) == 7


def test_builtin_digits_fingerprint_is_stable():
    a, b = load_source(DataSource()), load_source(DataSource())
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 64
    assert np.array_equal(np.asarray(a.image(100)), np.asarray(b.image(100)))


def test_builtin_digits_fingerprint_is_pinned():
    """Sample ids in manifests embed this value: trainer and builder machines must agree on it.

    A change here (new Pillow PNG bytes, new scikit-learn data) breaks every existing manifest;
    update the value only together with a note in FORMAT.md.
    """
    assert load_source(DataSource()).fingerprint == (
        "1a9d3bd3128048736c5c3ee0270b5c212d44d0921fac960e0f8f0d22bd174738")


def test_imagefolder_and_copy_elsewhere_share_fingerprint(tmp_path):
    root = _write_imagefolder(tmp_path / "a" / "folder")
    first = load_source(DataSource(path=str(root)))
    assert len(first) == 6 and first.class_names == NAMES
    assert first.image(0).mode == "RGB" and first.image(0).size == (5, 6)
    assert load_source(DataSource(path=str(root))).fingerprint == first.fingerprint
    copy = tmp_path / "elsewhere" / "renamed"
    shutil.copytree(root, copy)
    assert load_source(DataSource(path=str(copy))).fingerprint == first.fingerprint


def test_fingerprint_changes_with_one_label(tmp_path):
    base = _small_dataset()
    base.save_to_disk(str(tmp_path / "a"))
    changed = _small_dataset(labels=(0, 1, 0, 1, 0))
    changed.save_to_disk(str(tmp_path / "b"))
    fa = load_source(DataSource(path=str(tmp_path / "a"), image_column="img", label_column="y")).fingerprint
    fb = load_source(DataSource(path=str(tmp_path / "b"), image_column="img", label_column="y")).fingerprint
    assert fa != fb


def test_parquet_file_and_glob(tmp_path):
    ds = _small_dataset()
    ds.to_parquet(str(tmp_path / "part-0.parquet"))
    source = DataSource(path=str(tmp_path / "part-0.parquet"), image_column="img", label_column="y")
    data = load_source(source)
    assert len(data) == 5 and data.class_names == NAMES
    assert data.labels().tolist() == [0, 1, 0, 1, 1]
    assert data.image(3).mode == "RGB" and np.asarray(data.image(3))[0, 0, 0] == 90
    globbed = load_source(DataSource(path=str(tmp_path / "*.parquet"), image_column="img", label_column="y"))
    assert globbed.fingerprint == data.fingerprint


def test_save_to_disk_dataset_and_dict(tmp_path):
    import datasets

    ds = _small_dataset()
    ds.save_to_disk(str(tmp_path / "single"))
    datasets.DatasetDict({"train": ds, "test": ds.select([0, 1])}).save_to_disk(str(tmp_path / "dict"))
    single = load_source(DataSource(path=str(tmp_path / "single"), image_column="img", label_column="y"))
    test = load_source(DataSource(path=str(tmp_path / "dict"), split="test", image_column="img", label_column="y"))
    assert len(single) == 5 and len(test) == 2
    assert single.labels().tolist() == [0, 1, 0, 1, 1]
    with pytest.raises(FormatError, match=r"split 'validation' not found.*\['train', 'test'\]"):
        load_source(DataSource(path=str(tmp_path / "dict"), split="validation", image_column="img", label_column="y"))


def test_class_names_from_config_when_labels_are_plain_ints(tmp_path):
    _small_dataset(class_label=False).save_to_disk(str(tmp_path / "d"))
    source = DataSource(path=str(tmp_path / "d"), image_column="img", label_column="y")
    with pytest.raises(FormatError, match="not a ClassLabel.*class_names"):
        load_source(source)
    data = load_source(DataSource(path=source.path, image_column="img", label_column="y", class_names=["a", "b"]))
    assert data.class_names == ["a", "b"]
    with pytest.raises(FormatError, match=r"label 1, outside 0\.\.0"):
        load_source(DataSource(path=source.path, image_column="img", label_column="y", class_names=["only"]))


def test_missing_path_names_it(tmp_path):
    missing = tmp_path / "nope" / "train.parquet"
    with pytest.raises(FormatError, match="no such file") as err:
        load_source(DataSource(path=str(missing)))
    assert err.value.where == str(missing)
    with pytest.raises(FormatError, match="no files match"):
        load_source(DataSource(path=str(tmp_path / "*.parquet")))


def test_missing_column_names_column_and_present_ones(tmp_path):
    _small_dataset().save_to_disk(str(tmp_path / "d"))
    with pytest.raises(FormatError, match=r"label_column 'label' not found; columns present: \['img', 'y'\]") as err:
        load_source(DataSource(path=str(tmp_path / "d"), image_column="img"))
    assert str(tmp_path / "d") in str(err.value)
    with pytest.raises(FormatError, match=r"image_column 'image' not found"):
        load_source(DataSource(path=str(tmp_path / "d"), label_column="y"))


def test_class_name_mismatch_shows_both_lists():
    wrong = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
    with pytest.raises(FormatError) as err:
        load_source(DataSource(class_names=wrong))
    message = str(err.value)
    assert str(wrong) in message and str(list(DIGIT_NAMES)) in message


def test_sample_ids():
    fp = "0123456789abcdef" * 4
    assert sample_id(fp, 42) == "0123456789ab-00000042"
    assert parse_sample_id("0123456789ab-00000042") == ("0123456789ab", 42)
    for bad in ("0123456789ab_00000042", "0123456789AB-00000042", "0123456789ab-42", "x"):
        with pytest.raises(FormatError, match="not a sample id"):
            parse_sample_id(bad)
    data = load_source(DataSource())
    with pytest.raises(FormatError, match="belongs to data set 0123456789ab"):
        data.index_of("0123456789ab-00000001")
    with pytest.raises(FormatError, match="out of range"):
        data.index_of(sample_id(data.fingerprint, 1797))
    with pytest.raises(IndexError):
        data.image(1797)


def test_real_images_in_a_gs_bucket_load_with_the_fingerprint_they_have_on_disk(tmp_path, monkeypatch):
    """gs:// through fsspec, on an in-memory file system registered for the scheme (gcsfs is an
    extra): an imported folder uploaded to the bucket opens with the local copy's fingerprint and
    sample ids (s3:// is tested on a loopback S3 server in test_shards_s3.py)."""
    import importlib

    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem

    from actgen.sharing.importing import import_source

    class InMemoryGCS(MemoryFileSystem):
        protocol = ("gs", "gcs")
        store: dict = {}          # its own bucket contents, not the memory:// file system's
        pseudo_dirs = [""]

    # fsspec's own table of schemes (the package's `registry` attribute is a read-only view of it).
    monkeypatch.setitem(importlib.import_module("fsspec.registry")._registry, "gs", InMemoryGCS)
    import_source(DataSource(), tmp_path / "arrow")
    fs = fsspec.filesystem("gs")
    for path in (tmp_path / "arrow").iterdir():
        fs.put_file(str(path), f"gs://bucket/digits-arrow/{path.name}")
    local = load_source(DataSource(path=str(tmp_path / "arrow")))
    remote = load_source(DataSource(path="gs://bucket/digits-arrow"))
    assert remote.fingerprint == local.fingerprint and len(remote) == 1797
    assert remote.sample_id(1796) == local.sample_id(1796) and remote.label(1796) == local.label(1796)
    assert remote.image(5).tobytes() == local.image(5).tobytes()
