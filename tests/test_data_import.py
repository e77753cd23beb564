"""actgen-data import: a data set converted once into Arrow shards, with the source's fingerprint
(so manifests written against the source stay valid), never over its source, never half-written."""
from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

from actgen.sharing.cli import main
from actgen.sharing.importing import import_source
from actgen.shards.errors import FormatError
from actgen.shards.sources import DataSource, load_source
from test_shards_sources import NAMES, _small_dataset, _write_imagefolder


def test_an_image_folder_imports_with_its_fingerprint_and_opens_without_its_files(tmp_path):
    folder = _write_imagefolder(tmp_path / "photos", per_class=4)
    source = load_source(DataSource(path=str(folder)))
    done = import_source(DataSource(path=str(folder)), tmp_path / "arrow")
    assert done["rows"] == 8 and done["fingerprint"] == source.fingerprint and done["shards"] >= 1
    shutil.rmtree(folder)                     # the images are inside the shards, not referenced
    imported = load_source(DataSource(path=str(tmp_path / "arrow")))
    assert imported.fingerprint == source.fingerprint and imported.class_names == NAMES
    assert [imported.label(i) for i in range(8)] == [source.label(i) for i in range(8)]
    assert imported.image(5).size == (5, 6)
    # Every row keeps its sample id: a manifest's hard samples point to the same images.
    assert imported.sample_id(7) == source.sample_id(7)


def test_only_the_image_and_label_columns_are_kept_and_plain_int_labels_need_their_names(tmp_path):
    ds = _small_dataset(class_label=False).add_column("note", ["a", "b", "c", "d", "e"])
    ds.to_parquet(str(tmp_path / "d.parquet"))
    spec = DataSource(path=str(tmp_path / "d.parquet"), image_column="img", label_column="y", class_names=NAMES)
    done = import_source(spec, tmp_path / "arrow")
    import datasets

    assert datasets.load_from_disk(str(tmp_path / "arrow")).column_names == ["img", "y"]
    again = load_source(DataSource(path=str(tmp_path / "arrow"), image_column="img", label_column="y",
                                   class_names=NAMES))
    assert again.fingerprint == done["fingerprint"]


def test_an_output_that_overlaps_its_source_or_holds_user_files_is_refused(tmp_path):
    folder = _write_imagefolder(tmp_path / "photos")
    with pytest.raises(ValueError, match="lies inside the source"):
        import_source(DataSource(path=str(folder)), folder / "arrow")
    with pytest.raises(ValueError, match="contains the source"):
        import_source(DataSource(path=str(folder)), tmp_path)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    with pytest.raises(ValueError, match="not an imported data set"):
        import_source(DataSource(path=str(folder)), tmp_path / "mine", overwrite=True)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "x"
    import_source(DataSource(path=str(folder)), tmp_path / "arrow")
    with pytest.raises(FileExistsError, match="--overwrite"):
        import_source(DataSource(path=str(folder)), tmp_path / "arrow")
    import_source(DataSource(path="builtin:digits"), tmp_path / "arrow", overwrite=True)
    assert len(load_source(DataSource(path=str(tmp_path / "arrow")))) == 1797


def test_a_failed_write_leaves_nothing_that_looks_finished(tmp_path, monkeypatch):
    from actgen.sharing import importing

    folder = _write_imagefolder(tmp_path / "photos")
    real = importing._write_state

    def half(dataset, folder, num_shards):      # the shards are written, the folder's JSON too, then the disk fills
        real(dataset, folder, num_shards)
        raise OSError(28, "No space left on device", str(folder))
    monkeypatch.setattr(importing, "_write_state", half)
    with pytest.raises(OSError, match="No space left"):
        import_source(DataSource(path=str(folder)), tmp_path / "arrow")
    assert not (tmp_path / "arrow").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["photos"]      # no staging folder left behind


def test_the_folder_is_the_one_save_to_disk_writes(tmp_path):
    """The shards are written by ActGen's own writer (so workers can write them apart): the folder
    must be byte-for-byte what datasets' save_to_disk writes, or load_from_disk could drift."""
    import datasets

    source = load_source(DataSource(path="builtin:digits"))
    reference = source.dataset.select_columns(["image", "label"])
    reference.save_to_disk(str(tmp_path / "reference"), num_shards=3)
    done = import_source(DataSource(path="builtin:digits"), tmp_path / "arrow", max_shard_size="100KB")
    assert done["shards"] == 3                      # 1,797 tiny PNGs in 273 kB: split by size, as save_to_disk does
    for name in ("state.json", "dataset_info.json", *(f"data-0000{i}-of-00003.arrow" for i in range(3))):
        assert (tmp_path / "arrow" / name).read_bytes() == (tmp_path / "reference" / name).read_bytes(), name
    assert datasets.load_from_disk(str(tmp_path / "arrow"))[1796]["label"] == source.label(1796)


def test_local_processes_write_the_same_rows_and_decode_finds_a_broken_image(tmp_path):
    import datasets

    folder = _write_imagefolder(tmp_path / "photos", per_class=4)
    source = load_source(DataSource(path=str(folder)))
    done = import_source(DataSource(path=str(folder)), tmp_path / "arrow", num_proc=2, decode=True)
    assert done["shards"] == 2 and done["fingerprint"] == source.fingerprint
    assert sorted(p.name for p in (tmp_path / "arrow").iterdir()) == [
        "data-00000-of-00002.arrow", "data-00001-of-00002.arrow", "dataset_info.json", "state.json"]
    # A truncated PNG: listed and fingerprinted like any file (only 8 of 1,024 images are hashed),
    # found only when decoded, and then named by its row; nothing is kept.
    broken = folder / NAMES[1] / "2.png"
    broken.write_bytes(broken.read_bytes()[:20])
    stored = load_source(DataSource(path=str(folder))).dataset.cast_column("image", datasets.Image(decode=False))
    row = [value["path"] for value in stored["image"]].index(str(broken))
    with pytest.raises(FormatError, match=rf"{NAMES[1]}/2.png: row {row} image does not decode"):
        import_source(DataSource(path=str(folder)), tmp_path / "again", decode=True)
    assert not (tmp_path / "again").exists()
    assert import_source(DataSource(path=str(folder)), tmp_path / "again")["rows"] == 8   # not decoded: not checked


def test_the_command_reports_what_it_wrote_and_refuses_a_url_output(tmp_path):
    folder = _write_imagefolder(tmp_path / "photos")
    done = CliRunner().invoke(main, ["import", str(folder), str(tmp_path / "arrow")])
    assert done.exit_code == 0, done.output
    assert "6 images, 2 classes" in done.output and "(the source's)" in done.output
    url = CliRunner().invoke(main, ["import", str(folder), "s3://bucket/arrow"])
    assert url.exit_code == 2 and "takes a local folder" in url.output
