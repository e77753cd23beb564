"""Generator fit record (``fit_record.json``): round trip, validation naming the file and field,
records written before the versioned format."""
from __future__ import annotations

import dataclasses
import json

import pytest

from actgen.shards.errors import FormatError
from actgen.shards.fit_record import (FIT_RECORD_FILE, FIT_RECORD_FORMAT, FitData, FitRecord, read_fit_record,
                                      write_fit_record)

NAMES = ["cat", "dog"]


def _record(**overrides) -> FitRecord:
    values = dict(method="scratch", data=FitData(path="builtin:digits", fingerprint="ab" * 32, num_images=4,
                                                 class_names=NAMES),
                  prompts=["a photo of cat", "a photo of dog"], prompt_template="a photo of {}", steps=2, seed=0,
                  seconds=1.5, weights_sha256="cd" * 32, losses=[0.5, 0.25], config={"train": {"lr": 0.001}},
                  vocabulary=["a", "photo", "of", "cat", "dog"],
                  builder_settings={"generator.path": "/g", "generator.attention_resolution": 4},
                  autoencoder_losses=[0.1], created="2025-01-01T00:00:00Z", tool_version="test")
    values.update(overrides)
    return FitRecord(**values)


def test_round_trip(tmp_path):
    record = _record()
    path = write_fit_record(tmp_path, record)
    assert path == tmp_path / FIT_RECORD_FILE
    data = json.loads(path.read_text())
    assert list(data)[:2] == ["format", "format_version"] and data["format"] == FIT_RECORD_FORMAT
    assert read_fit_record(tmp_path) == record
    lora = _record(method="lora", base="tiny", adapter_parameters=8, vocabulary=[], builder_settings={},
                   autoencoder_losses=[])
    write_fit_record(tmp_path, lora)
    assert read_fit_record(tmp_path) == lora


def test_write_fills_time_and_version_and_validates(tmp_path):
    written = read_fit_record(write_fit_record(tmp_path, _record(created="", tool_version="")).parent)
    assert written.created.endswith("Z") and written.tool_version
    with pytest.raises(FormatError, match="'method'"):
        write_fit_record(tmp_path / "x", _record(method="magic"))
    with pytest.raises(FormatError, match="'steps' is 3"):
        write_fit_record(tmp_path / "x", _record(steps=3))
    assert not (tmp_path / "x" / FIT_RECORD_FILE).exists()


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("weights_sha256"), "missing field 'weights_sha256'"),
    (lambda d: d["data"].update(num_images="4"), "field 'data.num_images' must be an integer"),
    (lambda d: d.update(format="actgen.other"), "field 'format' must be 'actgen.fit-record'"),
    (lambda d: d.update(format_version=2), "format_version 2 is newer"),
    (lambda d: d.update(extra=1), "unknown field"),
    (lambda d: d.update(prompts=["one"]), "field 'prompts' has 1 prompts"),
])
def test_read_names_the_file_and_field(tmp_path, edit, message):
    data = json.loads(write_fit_record(tmp_path, _record()).read_text())
    edit(data)
    (tmp_path / FIT_RECORD_FILE).write_text(json.dumps(data))
    with pytest.raises(FormatError, match=message) as info:
        read_fit_record(tmp_path)
    assert info.value.where == str(tmp_path / FIT_RECORD_FILE)


def test_missing_or_malformed_file(tmp_path):
    with pytest.raises(FormatError, match="file not found"):
        read_fit_record(tmp_path)
    (tmp_path / FIT_RECORD_FILE).write_text("{")
    with pytest.raises(FormatError, match="not valid JSON"):
        read_fit_record(tmp_path)


def test_reads_records_written_before_the_versioned_format(tmp_path):
    # A fit from scratch's record as actgen wrote it before: no version, no method, no times.
    legacy = {k: v for k, v in json.loads(write_fit_record(tmp_path, _record()).read_text()).items()
              if k not in ("format_version", "method", "created", "tool_version")}
    legacy["format"] = "actgen-fit-record/1"
    (tmp_path / FIT_RECORD_FILE).write_text(json.dumps(legacy, indent=1))
    assert read_fit_record(tmp_path) == dataclasses.replace(_record(), created="", tool_version="")
