"""Data-set folders load the way the Hub loads them: ``datasets.load_dataset(<folder>)`` reads the
shards (labels, provenance, images), whatever the count of JSON files beside them, and the card's
licence comes from the build's config."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from actgen.builder.config import load_config as load_build_config
from actgen.builder.pipeline import run as build
from actgen.shards.reader import ShardRandomAccess
from actgen.shards.writer import CARD_FILE
from actgen.sharing.merge import merge


def _front_matter(directory) -> dict:
    """The card's metadata as the Hub reads it."""
    from huggingface_hub import DatasetCard

    return DatasetCard.load(directory / CARD_FILE).data.to_dict()


def _check_loads_as_written(directory):
    """Every row of ``load_dataset(directory)`` against the shards as ShardRandomAccess reads them."""
    import datasets

    rows = datasets.load_dataset(str(directory), split="train", cache_dir=str(directory.parent / "hf-cache"))
    access = ShardRandomAccess(directory)
    assert len(rows) == len(access) > 0
    # The card's features: labels load with the set's class names, provenance as JSON objects.
    assert rows.features["cls"] == datasets.ClassLabel(names=access.class_names)
    assert rows.features["json"] == datasets.Json() and rows.features["png"] == datasets.Image()
    assert rows.features["cls"].int2str(rows[0]["cls"]) == rows[0]["json"]["class_name"]
    by_key = {access.key(i): i for i in range(len(access))}
    for row in rows:
        i = by_key[row["__key__"]]
        assert row["cls"] == access.label(i)
        provenance = access.provenance(i)
        assert row["json"]["class_name"] == provenance["class_name"] == access.class_names[row["cls"]]
        assert row["json"]["seed"] == provenance["seed"]
        assert row["png"].convert("RGB").tobytes() == access[i][0].tobytes()
    return rows


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_a_built_set_and_a_merged_one_load_with_datasets(build_config, build_fast, tmp_path):
    one = build(build_config("budget=3", "output.samples_per_shard=8", "generator.license=openrail++",
                             "output.source_terms='digits: CC BY 4.0 (UCI)'", output=tmp_path / "a")).index
    two = build(build_config("budget=4", "seed=1", "output.samples_per_shard=2", "generator.license=openrail++",
                             "output.source_terms='digits: CC BY 4.0 (UCI)'", output=tmp_path / "b")).index
    # One shard beside three JSON files (index.json, _info.json, build.json): the folder's most
    # frequent file type is JSON, which is what made an unmarked folder load as JSON and fail.
    assert len(one.shards) == 1 and len(list((tmp_path / "a").glob("*.json"))) >= 3
    for directory, index in ((tmp_path / "a", one), (tmp_path / "b", two)):
        meta = _front_matter(directory)
        assert meta["configs"] == [{"config_name": "default", "data_files": [
            {"split": "train", "path": [s.filename for s in index.shards]}]}]
        assert meta["license"] == "openrail++" and meta["generator_license"] == "openrail++"
        assert meta["source_data_terms"] == "digits: CC BY 4.0 (UCI)"
        _check_loads_as_written(directory)

    merged_index = merge([tmp_path / "a", tmp_path / "b"], tmp_path / "merged", samples_per_shard=3)
    rows = _check_loads_as_written(tmp_path / "merged")
    assert len(rows) == 7 and merged_index.num_samples == 7
    assert _front_matter(tmp_path / "merged")["license"] == "openrail++"


def test_the_card_says_other_unless_the_licence_is_known_and_escapes_what_the_index_says(
        tmp_path, make_synthetic_samples):
    from actgen.shards.writer import ShardSetWriter

    def write(directory, created):
        samples = make_synthetic_samples(4)
        with ShardSetWriter(directory, ["cat", "dog", "bird"], total=4, num_shards=1, created=created) as w:
            for s in samples:
                w.write(s)
            w.close()
        return _front_matter(directory), (directory / CARD_FILE).read_text()

    meta, _ = write(tmp_path / "unknown", {"round": 1})
    assert meta["license"] == "other" and meta["generator_license"] == "unknown"
    meta, text = write(tmp_path / "hostile", {"round": 1, "license": {
        "dataset": "MIT\nevil: 1", "generator": ["not", "text"], "source_terms": "line\n---\nevil: `1`"}})
    assert meta["license"] == "other" and meta["generator_license"] == "unknown" and "evil" not in meta
    assert meta["source_data_terms"] == "line --- evil: `1`"     # one line: YAML and text hold it
    body = text.split("\n---\n", 1)[1]
    assert "\n---" not in body and "line --- evil: \\u00601\\u0060" in body


def test_a_merge_of_sets_with_other_licences_says_other(tmp_path, make_synthetic_samples):
    from actgen.shards.writer import ShardSetWriter

    for round, (name, licence) in enumerate((("x", "mit"), ("y", "cc-by-4.0")), start=1):
        samples = make_synthetic_samples(3, round=round)
        with ShardSetWriter(tmp_path / name, ["cat", "dog", "bird"], total=3, num_shards=1, prefix=name,
                            created={"round": round, "license": {"dataset": licence, "generator": "openrail++"}}) as w:
            for s in samples:
                w.write(s)
            w.close()
    merge([tmp_path / "x", tmp_path / "y"], tmp_path / "m")
    meta = _front_matter(tmp_path / "m")
    assert meta["license"] == "other" and meta["generator_license"] == "openrail++"
    assert json.loads((tmp_path / "m" / "index.json").read_text())["created"]["license"]["dataset"] is None


def test_a_jpeg_set_declares_its_jpg_column_with_the_class_names(tmp_path, make_synthetic_samples):
    """The card's features name the image column the shards hold (read from their tar headers)."""
    import datasets

    from actgen.shards.writer import ShardSetWriter

    with ShardSetWriter(tmp_path / "j", ["cat", "dog", "bird"], total=3, num_shards=1, image_format="jpg") as w:
        for sample in make_synthetic_samples(3):
            w.write(sample)
        w.close()
    features = {f["name"]: f["dtype"] for f in _front_matter(tmp_path / "j")["dataset_info"]["features"]}
    assert features == {"__key__": "string", "__url__": "string", "jpg": "image",
                        "cls": {"class_label": {"names": {"0": "cat", "1": "dog", "2": "bird"}}}, "json": "json"}
    rows = datasets.load_dataset(str(tmp_path / "j"), split="train", cache_dir=str(tmp_path / "hf-cache"))
    assert rows.features["cls"].names == ["cat", "dog", "bird"] and rows[2]["jpg"].format == "JPEG"


class _FakeHub:
    """HfApi's publishing calls, recorded (no network): what a commit would hold."""

    def __init__(self, existing=()):
        self.calls, self.existing = [], set(existing)

    def create_repo(self, repo_id, repo_type=None, exist_ok=False, **kw):
        self.calls.append(("create_repo", repo_id, repo_type))

    def file_exists(self, repo_id, filename, repo_type=None, revision=None, **kw):
        return filename in self.existing

    def upload_folder(self, repo_id, folder_path, repo_type=None, path_in_repo=None, revision=None,
                      commit_message=None, delete_patterns=None, **kw):
        files = sorted(p.name for p in Path(folder_path).iterdir())
        self.calls.append(("upload_folder", repo_id, repo_type, path_in_repo, revision, files, delete_patterns))


def test_publish_to_the_hub_is_one_commit_of_exactly_the_set(write_digit_shards, tmp_path, monkeypatch):
    import huggingface_hub

    from actgen.shards.publish import publish

    write_digit_shards(tmp_path / "set", n=6)
    (tmp_path / "set" / "scratch.txt").write_text("not part of the set")
    hub = _FakeHub()
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda *a, **k: hub)
    n = publish(tmp_path / "set", "hf://datasets/team/digits@main/round-3", create_repo=True)
    expected = sorted(p.name for p in (tmp_path / "set").iterdir() if p.name not in ("build.json", "scratch.txt"))
    assert hub.calls[0] == ("create_repo", "team/digits", "dataset")
    assert hub.calls[1] == ("upload_folder", "team/digits", "dataset", "round-3", "main", expected, None)
    assert n == len(expected)
    # A finished set there is refused without overwrite; with it, the commit replaces the folder.
    hub = _FakeHub(existing={"round-3/index.json"})
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda *a, **k: hub)
    with pytest.raises(ValueError, match="already holds"):
        publish(tmp_path / "set", "hf://datasets/team/digits/round-3")
    publish(tmp_path / "set", "hf://datasets/team/digits/round-3", overwrite=True)
    assert hub.calls[-1][-1] == ["*"]
    with pytest.raises(ValueError, match="hf://datasets/<owner>/<name>"):
        publish(tmp_path / "set", "hf://team/digits")
