"""``actgen-data merge|filter|browse`` never destroy a source, never write through a link, and an
overwritten output holds only what its new index lists (regression tests of a hostile probe)."""
from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

from actgen.shards.reader import ShardRandomAccess
from actgen.shards.verify import verify
from actgen.shards.writer import file_sha256
from actgen.sharing.cli import main


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _fingerprint(directory):
    return {p.name: file_sha256(p) for p in sorted(directory.iterdir()) if p.is_file()}


@pytest.fixture
def two_sets(tmp_path, write_digit_shards):
    a = write_digit_shards(tmp_path / "a", n=8, round=0, seed=1)
    b = write_digit_shards(tmp_path / "b", n=30, round=1, seed=2, num_shards=4)
    return a, b


def test_filter_onto_its_own_source_is_refused_and_suggests_no_flag(two_sets, tmp_path, build_round):
    a, _ = two_sets
    before = _fingerprint(a)
    for output in (a, a / "inside"):
        result = _invoke("filter", a, output, "--checkpoint", build_round / "checkpoint", "--overwrite")
        assert result.exit_code == 2, result.output
        assert "source" in result.output and "--overwrite" not in result.output
    assert _fingerprint(a) == before and verify(a).num_samples == 8


def test_merge_into_a_folder_that_contains_or_is_a_source_is_refused(two_sets, tmp_path):
    a, b = two_sets
    for output in (tmp_path, a):                 # contains both / is one
        result = _invoke("merge", output, a, b, "--overwrite")
        assert result.exit_code == 2 and "source" in result.output and "--overwrite" not in result.output
    assert verify(a).num_samples == 8 and verify(b).num_samples == 30


def test_merge_overwrite_leaves_only_what_the_new_index_lists(two_sets, tmp_path):
    a, b = two_sets
    out = tmp_path / "merged"
    assert _invoke("merge", out, a, b, "--samples-per-shard", "5").exit_code == 0     # 38 images, 8 shards
    assert _invoke("merge", out, a, "--overwrite").exit_code == 0                      # 8 images, 2 shards
    listed = {s.filename for s in ShardRandomAccess(out).index.shards}
    assert {p.name for p in out.glob("*.tar")} == listed and len(listed) == 1
    assert verify(out).num_samples == 8
    # Without --overwrite the existing set is left alone, and the message says how to replace it.
    result = _invoke("merge", out, b)
    assert result.exit_code == 2 and "--overwrite" in result.output and verify(out).num_samples == 8


def test_overwrite_never_replaces_a_folder_of_other_files(two_sets, tmp_path):
    a, _ = two_sets
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "thesis.tex").write_text("keep me")
    for args in (("merge", mine, a, "--overwrite"), ("browse", a, mine, "--overwrite")):
        result = _invoke(*args)
        assert result.exit_code == 2 and "not a" in result.output
    assert (mine / "thesis.tex").read_text() == "keep me"


def test_browse_overwrite_writes_nothing_through_a_symlinked_thumbs_folder(two_sets, tmp_path):
    a, _ = two_sets
    gallery = tmp_path / "gallery"
    assert _invoke("browse", a, gallery).exit_code == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.rmtree(gallery / "thumbs")
    (gallery / "thumbs").symlink_to(elsewhere, target_is_directory=True)
    assert _invoke("browse", a, gallery, "--overwrite").exit_code == 0
    assert list(elsewhere.iterdir()) == []                      # nothing went through the link
    assert not (gallery / "thumbs").is_symlink() and len(list((gallery / "thumbs").iterdir())) == 8
    # An output that is itself a link is refused.
    link = tmp_path / "link"
    link.symlink_to(elsewhere, target_is_directory=True)
    result = _invoke("browse", a, link)
    assert result.exit_code == 2 and "symbolic link" in result.output and list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("output, source", [
    ("s3://b/a", "s3://b/a"), ("s3://b/a/", "s3a://b/a"), ("s3://b//a/./x/..", "s3://b/a"),
    ("s3://b/a/merged", "s3://b/a"), ("s3://b", "s3://b/a"), ("gcs://b/a", "gs://b/a"),
    ("hf://datasets/me/set", "hf://datasets/me/set/"), ("HTTPS://Host/a", "http://host/a/b"),
])
def test_one_location_however_spelled_is_never_an_output_over_a_source(output, source):
    from actgen.sharing.outputs import check_locations

    with pytest.raises(ValueError, match="the source"):
        check_locations(output, [source])


@pytest.mark.parametrize("output, source", [
    ("s3://b/ab", "s3://b/a"), ("s3://c/a", "s3://b/a"), ("gs://b/a", "s3://b/a"), ("runs/b/a", "s3://b/a"),
])
def test_locations_that_only_look_alike_are_not_refused(output, source, tmp_path, monkeypatch):
    from actgen.sharing.outputs import check_locations

    monkeypatch.chdir(tmp_path)
    check_locations(output, [source])
