"""verify: every kind of damage gives one FormatError naming the shard and the problem."""
from __future__ import annotations

import dataclasses
import io
import json
import tarfile

import pytest

from actgen.shards.errors import FormatError
from actgen.shards.samples import encode_sample
from actgen.shards.verify import verify
from actgen.shards.writer import (INDEX_FILE, DatasetIndex, ShardInfo, file_sha256, write_index,
                                  write_shard)
SHARDS_CLASS_NAMES = ["cat", "dog", "bird"]  # the names conftest.shard_dataset uses


def _reindex(directory, index):
    """Rewrite the index so sizes and checksums match the (tampered) shard files again."""
    shards = [dataclasses.replace(s, sha256=file_sha256(directory / s.filename),
                                  size_bytes=(directory / s.filename).stat().st_size) for s in index.shards]
    write_index(directory, dataclasses.replace(index, shards=shards))


def _raw_shard(path, members: list[tuple[str, bytes]]):
    """A tar with exactly the given members (to build shards the writer would refuse)."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _one_shard_dataset(directory, members):
    _raw_shard(directory / "s-000000.tar", members)
    keys = {name.split(".", 1)[0] for name, _ in members}
    shard = ShardInfo(filename="s-000000.tar", num_samples=len(keys), sha256="0" * 64, size_bytes=1)
    index = DatasetIndex(class_names=SHARDS_CLASS_NAMES, image_size=(12, 16), num_samples=len(keys),
                         shards=[shard])
    _reindex(directory, index)


def test_good_data_set(shard_dataset):
    directory, index, _ = shard_dataset
    report = verify(directory, class_names=SHARDS_CLASS_NAMES)
    assert report.num_shards == 3 and report.num_samples == 10
    assert report.class_counts == {"cat": 4, "dog": 3, "bird": 3}
    assert verify(directory, decode=False) == report


def test_missing_index(tmp_path):
    with pytest.raises(FormatError, match="index.json: file not found"):
        verify(tmp_path)


def test_single_corrupted_byte(shard_dataset):
    directory, index, _ = shard_dataset
    path = directory / index.shards[1].filename
    data = bytearray(path.read_bytes())
    data[1500] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError, match=f"sha256 is {file_sha256(path)}, index says {index.shards[1].sha256}") as err:
        verify(directory)
    assert err.value.where == str(path)


def test_truncated_shard(shard_dataset):
    directory, index, _ = shard_dataset
    path = directory / index.shards[2].filename
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(FormatError, match=r"size is 3000 bytes, index says \d+ \(truncated\)") as err:
        verify(directory)
    assert err.value.where == str(path)
    # Even with an index that matches the truncated bytes, the tar itself is found incomplete.
    _reindex(directory, index)
    with pytest.raises(FormatError, match="truncated or corrupt tar") as err:
        verify(directory)
    assert err.value.where == str(path)


def test_count_mismatch(shard_dataset):
    directory, index, _ = shard_dataset
    shards = list(index.shards)
    shards[0] = dataclasses.replace(shards[0], num_samples=5)
    write_index(directory, dataclasses.replace(index, shards=shards, num_samples=11))
    with pytest.raises(FormatError, match="holds 4 samples, index says 5") as err:
        verify(directory)
    assert err.value.where.endswith("synth-000000.tar")


def test_class_names_mismatch_shows_both_lists(shard_dataset):
    directory, _, _ = shard_dataset
    expected = ["cat", "dog", "fish"]
    with pytest.raises(FormatError) as err:
        verify(directory, class_names=expected)
    assert str(SHARDS_CLASS_NAMES) in str(err.value) and str(expected) in str(err.value)


def test_missing_shard(shard_dataset):
    directory, index, _ = shard_dataset
    (directory / index.shards[1].filename).unlink()
    with pytest.raises(FormatError, match="synth-000001.tar: file not found"):
        verify(directory)


def test_key_with_a_dot(tmp_path, make_synthetic_samples):
    members = encode_sample(make_synthetic_samples(1)[0])
    _one_shard_dataset(tmp_path, [(f"bad.key.{ext}", members[ext]) for ext in ("cls", "json", "png")])
    with pytest.raises(FormatError, match=r"sample 'bad' has none of the image, 'cls' and 'json' members, only "
                                          r"\['key\.cls', 'key\.json', 'key\.png'\] \(a key that contains '\.'"):
        verify(tmp_path)


def test_undecodable_image(tmp_path, make_synthetic_samples):
    members = encode_sample(make_synthetic_samples(1)[0])
    members["png"] = members["png"][:40]
    key = members["__key__"]
    _one_shard_dataset(tmp_path, [(f"{key}.{ext}", members[ext]) for ext in ("cls", "json", "png")])
    with pytest.raises(FormatError, match=f"sample '{key}': 'png' image does not decode"):
        verify(tmp_path)
    verify(tmp_path, decode=False)  # without decoding, the rest is sound


def test_label_out_of_range(tmp_path, make_synthetic_samples):
    sample = make_synthetic_samples(1)[0]
    info = write_shard(tmp_path, "s-000000.tar", [dataclasses.replace(sample, label=5)])
    write_index(tmp_path, DatasetIndex(class_names=SHARDS_CLASS_NAMES, image_size=(12, 16), shards=[info],
                                       num_samples=1))
    with pytest.raises(FormatError, match=r"label 5 outside 0\.\.2"):
        verify(tmp_path)


def test_provenance_class_name_must_match_label(tmp_path, make_synthetic_samples):
    sample = make_synthetic_samples(1)[0]
    info = write_shard(tmp_path, "s-000000.tar", [dataclasses.replace(sample, label=1)])
    write_index(tmp_path, DatasetIndex(class_names=SHARDS_CLASS_NAMES, image_size=(12, 16), shards=[info],
                                       num_samples=1))
    with pytest.raises(FormatError, match="provenance class_name 'cat' is not 'dog'"):
        verify(tmp_path)


def test_duplicate_key_across_shards(tmp_path, make_synthetic_samples):
    samples = make_synthetic_samples(2)
    a = write_shard(tmp_path, "s-000000.tar", samples)
    b = write_shard(tmp_path, "s-000001.tar", samples[:1])
    write_index(tmp_path, DatasetIndex(class_names=SHARDS_CLASS_NAMES, image_size=(12, 16), shards=[a, b],
                                       num_samples=3))
    with pytest.raises(FormatError, match=f"duplicate key '{samples[0].key}', also in .*s-000000.tar") as err:
        verify(tmp_path)
    assert err.value.where.endswith("s-000001.tar")


def test_image_size_must_match_index(tmp_path, make_synthetic_samples):
    info = write_shard(tmp_path, "s-000000.tar", make_synthetic_samples(1))
    write_index(tmp_path, DatasetIndex(class_names=SHARDS_CLASS_NAMES, image_size=(16, 16), shards=[info],
                                       num_samples=1))
    with pytest.raises(FormatError, match=r"image is 12x16 \(HxW\), index says 16x16"):
        verify(tmp_path)


def test_index_is_json_checked(shard_dataset):
    directory, _, _ = shard_dataset
    (directory / INDEX_FILE).write_text(json.dumps({"format": "actgen.synthetic-shards", "format_version": 1}))
    with pytest.raises(FormatError, match="missing field 'class_names'"):
        verify(directory)


def test_a_ray_worker_checks_the_shards_it_is_given_as_verify_does(shard_dataset, monkeypatch):
    """The worker Ray Data drives, called here as Ray calls it (one row of numpy columns at a
    time): its results, assembled by verify, give the same report; a damaged shard comes back as
    its problem, raised by verify naming that shard."""
    import numpy as np

    from actgen.shards import cluster

    directory, index, _ = shard_dataset
    reference = verify(directory)

    def map_here(rows, worker, kwargs):        # map_on_ray's part: one actor, one row per batch
        actor = worker(**kwargs)
        for row in rows:
            out = actor({k: np.array([v]) for k, v in row.items()})
            yield {k: v[0] for k, v in out.items()}
    monkeypatch.setattr(cluster, "map_on_ray", map_here)
    monkeypatch.setattr(cluster, "ray_workers", lambda rows: 1)
    assert verify(directory, ray=True) == reference
    second = directory / index.shards[1].filename
    second.write_bytes(second.read_bytes()[:-512])
    with pytest.raises(FormatError, match=rf"{index.shards[1].filename}: size is \d+ bytes, index says \d+ \(truncated\)"):
        verify(directory, ray=True)
