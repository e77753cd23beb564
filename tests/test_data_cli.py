"""``actgen-data info|verify`` on a built data set, and on things that are not one."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from actgen.builder.pipeline import run
from actgen.sharing.cli import main
from actgen.shards.reader import ShardRandomAccess
from actgen.shards.verify import verify


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, build_round, build_fast):
    from actgen.builder.config import load_config

    out = tmp_path_factory.mktemp("data") / "shards"
    run(load_config(None, [f"checkpoint={build_round / 'checkpoint'}", f"manifest={build_round / 'hard_samples.json'}",
                           f"output.path={out}", *build_fast, "budget=6", "schedule.enabled=false"]))
    return out


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_info_counts_what_verify_counts(dataset):
    result = _invoke("info", dataset, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    report = verify(dataset)
    assert info["num_samples"] == report.num_samples == 6
    assert info["per_class"] == report.class_counts
    assert sum(info["per_mode"].values()) == sum(info["per_round"].values()) == 6
    assert info["per_round"] == {"1": 6} and info["verify"] == {"ok": True, "decoded": False, "extra_members": {}}
    (gen,) = info["generators"]
    assert gen["images"] == 6 and len(gen["weights_sha256"]) == 64 and not gen["name"].startswith("/")
    assert info["build"]["budget"] == 6
    text = _invoke("info", dataset)
    assert text.exit_code == 0 and "6 images in 3 shards" in text.stdout and "verify: ok" in text.stdout


def test_verify_command(dataset):
    ok = _invoke("verify", dataset)
    assert ok.exit_code == 0 and "ok, 6 samples in 3 shards" in ok.stdout
    wrong = _invoke("verify", dataset, "--class-names", "a,b")
    assert wrong.exit_code == 2 and "class names differ" in wrong.stderr and "['a', 'b']" in wrong.stderr


def test_not_a_data_set_and_a_partial_one_are_named(dataset, tmp_path):
    none = _invoke("info", tmp_path)
    assert none.exit_code == 2 and "index.json" in none.stderr
    assert [ln for ln in none.stderr.splitlines() if ln.startswith("actgen-data info: ")] == [none.stderr.strip()]
    partial = tmp_path / "partial"
    partial.mkdir()
    for p in dataset.iterdir():
        if p.name != "synth-000001.tar" and p.is_file():
            (partial / p.name).write_bytes(p.read_bytes())
    for command in ("info", "verify"):
        result = _invoke(command, partial)
        assert result.exit_code == 2 and "synth-000001.tar" in result.stderr, (command, result.output)


def test_a_corrupted_shard_fails_verify_and_info_says_so(dataset, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for p in dataset.iterdir():
        if p.is_file():
            (bad / p.name).write_bytes(p.read_bytes())
    shard = bad / "synth-000000.tar"
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF                      # same size, other bytes
    shard.write_bytes(bytes(data))
    info = _invoke("info", bad)
    assert info.exit_code == 1 and "verify: FAILED" in info.stdout and "sha256" in info.stdout
    result = _invoke("verify", bad)
    assert result.exit_code == 2 and "synth-000000.tar" in result.stderr and "sha256" in result.stderr


def test_hf_datasets_reads_a_built_set_with_labels_and_provenance(dataset, tmp_path):
    # Hugging Face `datasets`' own webdataset loader, on the shards as actgen-build writes them.
    import datasets

    ds = datasets.load_dataset("webdataset", data_files={"train": sorted(str(p) for p in dataset.glob("*.tar"))},
                               split="train", cache_dir=str(tmp_path / "hf-cache"))
    ours = ShardRandomAccess(dataset)
    assert len(ds) == len(ours) == 6
    by_key = {row["__key__"]: row for row in ds}
    for i in range(len(ours)):
        row = by_key[ours.key(i)]
        assert row["cls"] == ours.label(i)
        assert row["json"]["source_id"] == ours.provenance(i)["source_id"]
        assert row["png"].size == tuple(reversed(ours.index.image_size))



@pytest.fixture(scope="module")
def round_two(tmp_path_factory, build_fast, write_round):
    """A second data set of the same classes: round 2, other keys."""
    from actgen.builder.config import load_config

    directory, _ = write_round(tmp_path_factory.mktemp("round2") / "2", round=2)
    out = directory / "shards"
    run(load_config(None, [f"checkpoint={directory / 'checkpoint'}", f"manifest={directory / 'hard_samples.json'}",
                           f"output.path={out}", *build_fast, "budget=4", "schedule.enabled=false"]))
    return out


def test_merge_keeps_every_sample_and_lists_its_sources(dataset, round_two, tmp_path):
    out = tmp_path / "merged"
    result = _invoke("merge", out, dataset, round_two, "--samples-per-shard", "4")
    assert result.exit_code == 0, result.output
    assert "10 images in 3 shards from 2 data sets" in result.stdout
    merged, a, b = ShardRandomAccess(out), ShardRandomAccess(dataset), ShardRandomAccess(round_two)
    assert verify(out).num_samples == 10
    sources = {s.key(i): (s, i) for s in (a, b) for i in range(len(s))}
    assert sorted(merged.key(i) for i in range(len(merged))) == sorted(sources)
    for i in range(len(merged)):
        src, j = sources[merged.key(i)]
        assert merged.provenance(i) == src.provenance(j) and merged.label(i) == src.label(j)
        assert list(merged[i][0].getdata()) == list(src[j][0].getdata())      # png: lossless
    listed = merged.index.created["sources"]
    assert [s["num_samples"] for s in listed] == [6, 4] and [s["round"] for s in listed] == [1, 2]
    assert all(not s["path"].startswith("/") for s in listed)
    assert "Source: `\"shards\"` (4 samples, round 2" in (out / "README.md").read_text()
    again = _invoke("merge", out, dataset)
    assert again.exit_code == 2 and "already here" in again.stderr


def _other_set(directory, class_names):
    """Two 16x16 samples of another data set, written by the shard writer itself."""
    from PIL import Image

    from actgen.shards.samples import SyntheticSample
    from actgen.shards.writer import ShardSetWriter

    with ShardSetWriter(directory, class_names, total=2, num_shards=1) as writer:
        for i in range(2):
            writer.write(SyntheticSample(
                key=f"other-{i}", image=Image.new("RGB", (16, 16), (i * 50, 0, 0)), label=i,
                provenance={"class_name": class_names[i], "source_id": f"s{i}", "generator": {"id": "g"},
                            "prompt": "p", "seed": i, "guidance": {"mode": "txt2img"}, "checkpoint_sha256": "0" * 64,
                            "round": 0, "tool_version": "test"}))
    return directory


def test_merge_refuses_mismatched_classes_a_repeated_source_and_a_partial_set(dataset, tmp_path):
    other = _other_set(tmp_path / "other", [f"c{i}" for i in range(10)])
    for sources, message in [((dataset, other), "class names"), ((dataset, dataset), "listed twice"),
                             ((dataset, tmp_path / "empty"), "index.json")]:
        (tmp_path / "empty").mkdir(exist_ok=True)
        result = _invoke("merge", tmp_path / "out", *sources)
        assert result.exit_code == 2 and message in result.stderr, (sources, result.output)
        errors = [line for line in result.stderr.splitlines() if line.startswith("actgen-data merge: ")]
        assert len(errors) == 1 and errors[0].startswith("actgen-data merge: error: ")   # one line
        assert not (tmp_path / "out" / "index.json").exists()


def test_merge_refuses_a_key_in_two_sets(dataset, tmp_path):
    a = _other_set(tmp_path / "a", list(ShardRandomAccess(dataset).class_names))
    b = _other_set(tmp_path / "b", list(ShardRandomAccess(dataset).class_names))
    result = _invoke("merge", tmp_path / "out", a, b)
    assert result.exit_code == 2 and "key 'other-0' is in both" in result.stderr
