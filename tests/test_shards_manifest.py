"""Hard-sample manifest: round trip, validation naming file and field, atomic write."""
from __future__ import annotations

import dataclasses
import json
import os

import pytest

from actgen.shards.errors import FormatError
from actgen.shards.manifest import (HardSample, HardSampleManifest, ManifestHeader, read_manifest,
                                    write_manifest)
from actgen.shards.sources import DataSource, sample_id

NAMES = ["cat", "dog", "bird"]
FP = "0123456789abcdef" * 4


def _manifest(n: int = 4) -> HardSampleManifest:
    header = ManifestHeader(dataset=dataclasses.asdict(DataSource(path="/data/train.parquet")),
                            dataset_fingerprint=FP, class_names=NAMES, split_seed=0, holdout_fraction=0.2,
                            num_evaluated=50, checkpoint_sha256="c" * 64, round=3, epoch=11,
                            tool_version="test", created="2025-01-01T00:00:00Z")
    samples = [HardSample(id=sample_id(FP, 10 * i), label=i % 3, class_name=NAMES[i % 3],
                          predicted=(i + 1) % 3, prob_true=0.125 * (i + 1), loss=0.5 + i)
               for i in range(n)]
    return HardSampleManifest(header=header, samples=samples)


def test_round_trip(tmp_path):
    manifest = _manifest()
    write_manifest(tmp_path / "rounds" / "3" / "hard_samples.json", manifest)
    assert read_manifest(tmp_path / "rounds" / "3" / "hard_samples.json") == manifest
    data = json.loads((tmp_path / "rounds" / "3" / "hard_samples.json").read_text())
    assert data["header"]["format"] == "actgen.hard-samples" and data["header"]["format_version"] == 1
    assert len(data["samples"]) == 4


def test_empty_manifest_and_filled_header(tmp_path):
    manifest = _manifest(0)
    manifest = dataclasses.replace(manifest, header=dataclasses.replace(manifest.header, created="", tool_version=""))
    write_manifest(tmp_path / "m.json", manifest)
    read = read_manifest(tmp_path / "m.json")
    assert read.samples == [] and read.header.created and read.header.tool_version


@pytest.mark.parametrize("mutate, pattern", [
    (lambda d: d["samples"][3].update(label="cat"), r"field 'samples\[3\]\.label' must be an integer, got 'cat'"),
    (lambda d: d["samples"][1].update(label=7), r"field 'samples\[1\]\.label' must be in 0\.\.2, got 7"),
    (lambda d: d["samples"][0].update(class_name="dog"), r"field 'samples\[0\]\.class_name' is 'dog' but label 0"),
    (lambda d: d["samples"][2].update(id="x-1"), r"field 'samples\[2\]\.id': not a sample id"),
    (lambda d: d["samples"][2].update(id="ffffffffffff-00000001"), r"field 'samples\[2\]\.id'.*does not belong"),
    (lambda d: d["samples"][2].update(id=d["samples"][0]["id"]), r"field 'samples\[2\]\.id'.*repeats samples\[0\]"),
    (lambda d: d["samples"][1].update(prob_true=1.5), r"field 'samples\[1\]\.prob_true' must be in \[0, 1\]"),
    (lambda d: d["samples"][1].pop("loss"), r"missing field 'samples\[1\]\.loss'"),
    (lambda d: d["header"].pop("round"), r"missing field 'header\.round'"),
    (lambda d: d["header"].update(holdout_fraction="a fifth"), r"field 'header\.holdout_fraction' must be a number"),
    (lambda d: d["header"].update(format="actgen.synthetic-shards"), r"field 'header\.format' must be 'actgen\.hard-samples'"),
    (lambda d: d["header"].update(num_evaluated=2), r"'header\.num_evaluated' \(2\) is smaller"),
    (lambda d: d.update(extra=1), r"unknown field.*'extra'"),
])
def test_malformed_manifest_names_file_and_field(tmp_path, mutate, pattern):
    path = tmp_path / "hard_samples.json"
    write_manifest(path, _manifest())
    data = json.loads(path.read_text())
    mutate(data)
    path.write_text(json.dumps(data))
    with pytest.raises(FormatError, match=pattern) as err:
        read_manifest(path)
    assert err.value.where == str(path)


def test_missing_manifest(tmp_path):
    with pytest.raises(FormatError, match="file not found"):
        read_manifest(tmp_path / "absent.json")


def test_writer_rejects_inconsistent_manifest(tmp_path):
    manifest = _manifest()
    bad = dataclasses.replace(manifest, samples=[dataclasses.replace(manifest.samples[0], class_name="bird")])
    with pytest.raises(FormatError, match="class_name"):
        write_manifest(tmp_path / "m.json", bad)
    assert not (tmp_path / "m.json").exists()


def test_crash_during_write_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "hard_samples.json"
    write_manifest(path, _manifest(2))
    before = path.read_bytes()

    def crash(src, dst):
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="power cut"):
        write_manifest(path, _manifest(4))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["hard_samples.json"]  # the temporary file was removed
