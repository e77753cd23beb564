"""Shard data sets over HTTP: WebDataset streaming (curl), index reads and fetch (urllib)."""
from __future__ import annotations

import os
import tarfile

import numpy as np
import pytest

from actgen.shards.errors import FormatError
from actgen.shards.reader import fetch, iter_samples, read_index, shard_urls
from actgen.shards.verify import verify


def test_stream_over_http(shard_dataset, serve_directory):
    directory, index, samples = shard_dataset
    url = serve_directory(directory)
    assert read_index(url) == index
    for location in (url, url + "/"):
        assert shard_urls(location)[0] == f"{url}/synth-000000.tar"
        streamed = list(iter_samples(location))
        assert [(s.key, s.label) for s in streamed] == [(s.key, s.label) for s in samples]
        assert all(np.array_equal(np.asarray(a.image), np.asarray(b.image)) for a, b in zip(streamed, samples))


def test_brace_pattern_url(shard_dataset, serve_directory):
    directory, _, samples = shard_dataset
    url = serve_directory(directory)
    streamed = list(iter_samples(f"{url}/synth-{{000000..000002}}.tar"))
    assert [(s.key, s.label) for s in streamed] == [(s.key, s.label) for s in samples]
    assert streamed[4].provenance == samples[4].provenance


def test_fetch_over_http(shard_dataset, serve_directory, tmp_path):
    directory, index, samples = shard_dataset
    url = serve_directory(directory)
    destination = tmp_path / "cache" / "round1"
    assert fetch(url, destination) == index
    assert read_index(destination) == index
    assert verify(destination).num_samples == 10
    for shard in index.shards:
        assert (destination / shard.filename).read_bytes() == (directory / shard.filename).read_bytes()
    assert sorted(os.listdir(destination.parent)) == ["round1"]
    assert fetch(url, destination) == index  # already there: kept


def test_fetch_rejects_corrupted_shard(shard_dataset, serve_directory, tmp_path):
    directory, index, _ = shard_dataset
    path = directory / index.shards[2].filename
    data = bytearray(path.read_bytes())
    data[700] ^= 0xFF
    path.write_bytes(bytes(data))
    url = serve_directory(directory)
    with pytest.raises(FormatError, match=f"sha256 is [0-9a-f]{{64}}, index says {index.shards[2].sha256}") as err:
        fetch(url, tmp_path / "copy")
    assert err.value.where == f"{url}/{index.shards[2].filename}"
    assert not (tmp_path / "copy").exists() and os.listdir(tmp_path) == ["synth"]


def test_fetch_local_directory(shard_dataset, tmp_path):
    directory, index, _ = shard_dataset
    assert fetch(directory, tmp_path / "copy") == index
    assert verify(tmp_path / "copy").class_counts == {"cat": 4, "dog": 3, "bird": 3}


def test_unfinished_data_set_over_http(tmp_path, make_synthetic_samples, serve_directory):
    from actgen.shards.writer import write_shard

    write_shard(tmp_path, "synth-000000.tar", make_synthetic_samples(2))  # shards, but no index yet
    url = serve_directory(tmp_path)
    with pytest.raises(FormatError, match="HTTP 404.*no finished data set") as err:
        read_index(url)
    assert err.value.where == f"{url}/index.json"
    with pytest.raises(FormatError, match="HTTP 404"):
        list(iter_samples(url))
    with pytest.raises(FormatError, match="HTTP 404"):
        fetch(url, tmp_path / "copy")


def test_verify_over_http(shard_dataset, serve_directory):
    directory, _, _ = shard_dataset
    report = verify(serve_directory(directory), class_names=["cat", "dog", "bird"])
    assert report.num_samples == 10 and report.num_shards == 3


def test_missing_shard_url_raises_naming_it(shard_dataset, serve_directory):
    directory, _, _ = shard_dataset
    url = serve_directory(directory)
    # curl's exit status or the empty stream, whichever WebDataset sees first; both name the URL.
    with pytest.raises((OSError, tarfile.ReadError), match="synth-000003.tar"):
        list(iter_samples(f"{url}/synth-{{000000..000003}}.tar"))
