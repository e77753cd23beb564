"""Shard data sets: writing, index files, atomicity, streaming, random access, timm compatibility."""
from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest

from actgen.shards import writer as writer_mod
from actgen.shards.errors import FormatError
from actgen.shards.reader import ShardRandomAccess, iter_samples, read_index, shard_urls
from actgen.shards.verify import verify
from actgen.shards.writer import (CARD_FILE, INDEX_FILE, TIMM_INFO_FILE, ShardSetWriter, write_index,
                                  write_shard)
SHARDS_CLASS_NAMES = ["cat", "dog", "bird"]  # the names conftest.shard_dataset uses


def _same(a, b) -> bool:
    """Two SyntheticSample hold the same key, label, provenance and pixels."""
    return (a.key == b.key and a.label == b.label and a.provenance == b.provenance
            and np.array_equal(np.asarray(a.image), np.asarray(b.image)))


def _assert_not_a_dataset(directory):
    """Every reader refuses a directory without a finished index."""
    for read in (read_index, verify, ShardRandomAccess, lambda d: list(iter_samples(d))):
        with pytest.raises(FormatError, match="index.json: file not found"):
            read(directory)


def test_index_round_trip_and_files(shard_dataset):
    directory, index, samples = shard_dataset
    assert read_index(directory) == index
    assert index.num_samples == 10 and [s.num_samples for s in index.shards] == [4, 3, 3]
    assert [s.filename for s in index.shards] == ["synth-000000.tar", "synth-000001.tar", "synth-000002.tar"]
    assert index.image_size == (12, 16) and index.class_names == SHARDS_CLASS_NAMES
    assert index.created["round"] == 1 and index.created["tool_version"]
    assert sorted(os.listdir(directory)) == sorted([CARD_FILE, TIMM_INFO_FILE, INDEX_FILE]
                                                   + [s.filename for s in index.shards])
    data = json.loads((directory / INDEX_FILE).read_text())
    assert data["format"] == "actgen.synthetic-shards" and data["format_version"] == 1
    for shard in index.shards:
        assert (directory / shard.filename).stat().st_size == shard.size_bytes


def test_timm_info_json_matches_reader_wds(shard_dataset):
    from timm.data.readers.reader_wds import _parse_split_info

    directory, index, _ = shard_dataset
    info = json.loads((directory / TIMM_INFO_FILE).read_text())
    assert info == {"name": "actgen-synthetic", "splits": {"train": {
        "name": "train", "num_samples": 10, "filenames": [s.filename for s in index.shards],
        "shard_lengths": [4, 3, 3]}}}
    split = _parse_split_info("train", info)
    assert split.num_samples == 10 and split.shard_lengths == (4, 3, 3)


def test_dataset_card_front_matter(shard_dataset):
    import yaml

    directory, _, _ = shard_dataset
    text = (directory / CARD_FILE).read_text()
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["task_categories"] == ["image-classification"]
    assert meta["size_categories"] == ["n<1K"] and "synthetic" in meta["tags"] and meta["license"]
    assert "\"cat\", \"dog\", \"bird\"" in text
    # "other" comes with the Hub's license_name; a known id needs none.
    assert (meta["license"] == "other") == ("license_name" in meta)
    from actgen.shards.card import card_license

    assert card_license({"license": "CreativeML Open RAIL++-M"})["dataset_name"] == "creativeml-open-rail-m"
    assert card_license({})["dataset_name"] == "unspecified"
    assert card_license({"license": "cc-by-4.0"}) == {"dataset": "cc-by-4.0", "generator": None,
                                                      "source_terms": None, "dataset_name": None}


def test_index_is_written_last(tmp_path, make_synthetic_samples, monkeypatch):
    written = []
    real = writer_mod.atomic_write_text

    def record(path, text):
        written.append(os.path.basename(path))
        real(path, text)

    monkeypatch.setattr(writer_mod, "atomic_write_text", record)
    info = write_shard(tmp_path, "s-000000.tar", make_synthetic_samples(2))
    write_index(tmp_path, writer_mod.DatasetIndex(class_names=SHARDS_CLASS_NAMES, image_size=(12, 16),
                                                  shards=[info], num_samples=2))
    assert written[-1] == INDEX_FILE and set(written) == {INDEX_FILE, TIMM_INFO_FILE, CARD_FILE}


def test_stream_local_directory_and_brace_pattern(shard_dataset):
    directory, _, samples = shard_dataset
    streamed = list(iter_samples(directory))
    assert len(streamed) == 10 and all(_same(a, b) for a, b in zip(samples, streamed))
    pattern = f"{directory}/synth-{{000000..000002}}.tar"
    assert shard_urls(pattern) == [str(directory / f"synth-{i:06d}.tar") for i in range(3)]
    assert [s.key for s in iter_samples(pattern)] == [s.key for s in samples]


def test_random_access(shard_dataset):
    directory, _, samples = shard_dataset
    data = ShardRandomAccess(directory)
    assert len(data) == 10 and data.class_names == SHARDS_CLASS_NAMES
    assert data.labels() == [s.label for s in samples]
    for i in (0, 3, 4, 9, -1):
        image, label = data[i]
        assert image.mode == "RGB" and label == samples[i].label
        assert np.array_equal(np.asarray(image), np.asarray(samples[i].image))
        assert data.key(i) == samples[i].key
    assert _same(data.sample(7), samples[7])
    with pytest.raises(IndexError):
        data[10]
    # DataLoader workers receive a pickled copy.
    clone = pickle.loads(pickle.dumps(data))
    assert np.array_equal(np.asarray(clone[5][0]), np.asarray(samples[5].image))


def test_timm_create_dataset_reads_shards(shard_dataset):
    from timm.data import create_dataset

    directory, _, samples = shard_dataset
    dataset = create_dataset("wds/actgen", root=str(directory), split="train", is_training=False)
    items = list(dataset)
    assert len(items) == len(samples) == len(dataset)
    for (image, label), sample in zip(items, samples):
        assert label == sample.label
        assert np.array_equal(np.asarray(image), np.asarray(sample.image))


@pytest.mark.parametrize("image_format", ["jpg", "webp"])
def test_lossy_formats_stream(tmp_path, make_synthetic_samples, image_format):
    samples = make_synthetic_samples(4)
    writer = ShardSetWriter(tmp_path / "d", SHARDS_CLASS_NAMES, total=4, num_shards=2, image_format=image_format)
    for s in samples:
        writer.write(s)
    writer.close()
    streamed = list(iter_samples(tmp_path / "d"))
    assert [(s.key, s.label) for s in streamed] == [(s.key, s.label) for s in samples]
    assert verify(tmp_path / "d").num_samples == 4


def test_shard_bytes_are_deterministic(tmp_path, make_synthetic_samples):
    a = write_shard(tmp_path / "a", "x-000000.tar", make_synthetic_samples(3))
    b = write_shard(tmp_path / "b", "x-000000.tar", make_synthetic_samples(3))
    assert a == b


def test_crash_mid_shard_leaves_nothing(tmp_path, make_synthetic_samples):
    samples = make_synthetic_samples(5)

    def crashing():
        yield from samples[:3]
        raise RuntimeError("generator died")

    with pytest.raises(RuntimeError, match="generator died"):
        write_shard(tmp_path, "synth-000000.tar", crashing())
    assert os.listdir(tmp_path) == []  # no shard, no temporary file, no index
    _assert_not_a_dataset(tmp_path)


def test_crash_in_rename_leaves_no_shard(tmp_path, make_synthetic_samples, monkeypatch):
    def crash(src, dst):
        raise OSError("killed during rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="killed"):
        write_shard(tmp_path, "synth-000000.tar", make_synthetic_samples(2))
    assert os.listdir(tmp_path) == []


def test_crash_mid_data_set_is_not_accepted(tmp_path, make_synthetic_samples):
    samples = make_synthetic_samples(10)
    with pytest.raises(RuntimeError, match="boom"):
        with ShardSetWriter(tmp_path, SHARDS_CLASS_NAMES, total=10, num_shards=3) as writer:
            for i, s in enumerate(samples):
                if i == 6:
                    raise RuntimeError("boom")
                writer.write(s)
    # The first shard (4 samples) was finished; the second was in progress and is gone.
    assert sorted(os.listdir(tmp_path)) == ["synth-000000.tar"]
    _assert_not_a_dataset(tmp_path)
    # Streaming the shard itself still works: it is whole.
    assert len(list(iter_samples(tmp_path / "synth-000000.tar"))) == 4


def test_short_data_set_gets_no_index(tmp_path, make_synthetic_samples):
    writer = ShardSetWriter(tmp_path, SHARDS_CLASS_NAMES, total=5, num_shards=2)
    for s in make_synthetic_samples(4):
        writer.write(s)
    with pytest.raises(ValueError, match="got 4 samples, expected total=5"):
        writer.close()
    assert not (tmp_path / INDEX_FILE).exists()
    assert sorted(os.listdir(tmp_path)) == ["synth-000000.tar"]


def test_writer_validates_samples(tmp_path, make_synthetic_samples):
    import dataclasses

    from PIL import Image

    s = make_synthetic_samples(2)
    writer = ShardSetWriter(tmp_path, SHARDS_CLASS_NAMES, total=5, num_shards=1)
    writer.write(s[0])
    with pytest.raises(ValueError, match="duplicate sample key"):
        writer.write(s[0])
    with pytest.raises(ValueError, match="label 3 outside 0..2"):
        writer.write(dataclasses.replace(s[1], label=3))
    with pytest.raises(ValueError, match="class_name 'dog' is not 'bird'"):
        writer.write(dataclasses.replace(s[1], label=2))
    with pytest.raises(ValueError, match=r"\(5, 5\)"):
        writer.write(dataclasses.replace(s[1], image=Image.new("RGB", (5, 5))))
    with pytest.raises(ValueError, match="num_shards"):
        ShardSetWriter(tmp_path / "x", SHARDS_CLASS_NAMES, total=2, num_shards=3)


def test_existing_data_set_is_not_overwritten_silently(shard_dataset, make_synthetic_samples):
    directory, _, _ = shard_dataset
    with pytest.raises(FileExistsError, match="index.json"):
        ShardSetWriter(directory, SHARDS_CLASS_NAMES, total=2, num_shards=1)
    writer = ShardSetWriter(directory, SHARDS_CLASS_NAMES, total=2, num_shards=1, overwrite=True)
    assert not (directory / INDEX_FILE).exists()  # unfinished while rewriting
    for s in make_synthetic_samples(2, seed=9):
        writer.write(s)
    index = writer.close()
    assert read_index(directory) == index and index.num_samples == 2
    assert len(list(iter_samples(directory))) == 2


def test_malformed_index(shard_dataset):
    directory, _, _ = shard_dataset
    path = directory / INDEX_FILE
    data = json.loads(path.read_text())
    data["shards"][1]["num_samples"] = "3"
    path.write_text(json.dumps(data))
    with pytest.raises(FormatError, match=r"field 'shards\[1\]\.num_samples' must be an integer"):
        read_index(directory)
    data["shards"][1]["num_samples"] = 3
    data["num_samples"] = 11
    path.write_text(json.dumps(data))
    with pytest.raises(FormatError, match="'num_samples' is 11 but the shards hold 10"):
        read_index(directory)
