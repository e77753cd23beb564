"""A received data set is data, not control: what it says is escaped before it reaches a terminal,
a field of an unexpected type fails ``verify`` (so a set that verifies never crashes a reader),
and a malformed optional ``build.json`` is reported and skipped (regression tests of a hostile probe)."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from actgen.shards.verify import verify
from actgen.shards.writer import ShardSetWriter
from actgen.sharing.cli import main


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _write(directory, samples, class_names):
    with ShardSetWriter(directory, class_names, total=len(samples), num_shards=1, created={"round": 1}) as w:
        for s in samples:
            w.write(s)
        w.close()
    return directory


def test_info_escapes_what_a_data_set_says(tmp_path, make_synthetic_samples):
    names = ["\x1b[2J\x1b[31mred", "ok", "rtl\u202eevil"]
    samples = make_synthetic_samples(6, class_names=names)
    samples[0].provenance["generator"]["name"] = "gen\x1b]0;pwned\x07"
    samples[0].provenance["guidance"]["mode"] = "actgen\r\x1b[1A"
    data = _write(tmp_path / "d", samples, names)
    result = _invoke("info", data)
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\u202e" not in result.output and "\r" not in result.output
    assert "\\x1b[2J\\x1b[31mred" in result.output and "rtl\\u202eevil" in result.output


@pytest.mark.parametrize("field,value", [("generator", "a string"), ("guidance", ["a", "list"]), ("round", "3"),
                                         ("seed", True), ("prompt", 7), ("source_id", None)])
def test_a_provenance_field_of_the_wrong_type_fails_verify_and_crashes_no_reader(tmp_path, make_synthetic_samples,
                                                                                   field, value):
    samples = make_synthetic_samples(3)
    samples[1].provenance[field] = value
    data = _write(tmp_path / "d", samples, ["cat", "dog", "bird"][:3])
    with pytest.raises(ValueError, match=f"provenance field '?{field}"):
        verify(data)
    for args in (("info", data), ("verify", data), ("browse", data, tmp_path / "g")):
        result = _invoke(*args)
        assert result.exit_code in (1, 2) and result.output.count("\n") <= 2, (args, result.output)
        assert "Traceback" not in result.output and f"field '{field}" in result.output, (args, result.output)


@pytest.mark.parametrize("content", [b"{", b"[1, 2]", b'{"settings": "not an object"}', b"x" * (2 << 20)])
def test_a_malformed_build_json_is_reported_and_skipped(tmp_path, make_synthetic_samples, content):
    data = _write(tmp_path / "d", make_synthetic_samples(3), ["cat", "dog", "bird"])
    (data / "build.json").write_bytes(content)
    result = _invoke("info", data)
    assert result.exit_code == 0, result.output
    assert "build.json: skipped" in result.output and "verify: ok" in result.output


def _stored(directory):
    from actgen.shards.reader import ShardRandomAccess

    data = ShardRandomAccess(directory)
    return {data.key(i): data.sample(i).encoded for i in range(len(data))}


def test_merge_keeps_each_images_bytes_and_re_encodes_only_when_asked(tmp_path, make_synthetic_samples):
    names = ["cat", "dog", "bird"]

    def write(directory, fmt, round):
        samples = make_synthetic_samples(4, round=round)
        with ShardSetWriter(directory, names, total=4, num_shards=1, image_format=fmt) as w:
            for s in samples:
                w.write(s)
            w.close()
        return directory

    png, jpg1, jpg2 = write(tmp_path / "png", "png", 1), write(tmp_path / "j1", "jpg", 2), write(tmp_path / "j2", "jpg", 3)
    # Same format: every stored image is copied byte for byte (no second lossy encode).
    assert _invoke("merge", tmp_path / "jj", jpg1, jpg2).exit_code == 0
    assert _stored(tmp_path / "jj") == {**_stored(jpg1), **_stored(jpg2)}
    # Different formats: refused, naming them, unless a format is asked for.
    result = _invoke("merge", tmp_path / "mixed", png, jpg1)
    assert result.exit_code == 2 and "different image formats" in result.output and "--format jpg|png" in result.output
    assert not (tmp_path / "mixed").exists()
    import logging

    from actgen.sharing.merge import merge

    said: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())
    logging.getLogger("actgen.sharing.merge").addHandler(handler)
    try:
        merge([png, jpg1], tmp_path / "mixed", image_format="png")     # what --format png runs
    finally:
        logging.getLogger("actgen.sharing.merge").removeHandler(handler)
    assert any("re-encoding the 4 jpg images" in line for line in said)
    merged = _stored(tmp_path / "mixed")
    assert all(merged[k] == v for k, v in _stored(png).items())           # the PNGs untouched
    assert {ext for ext, _ in merged.values()} == {"png"}
