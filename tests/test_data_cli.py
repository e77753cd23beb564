"""``actgen-data info|verify`` on a built data set, and on things that are not one."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from actgen.builder.pipeline import run
from actgen.sharing.cli import main
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
    assert info["per_round"] == {"1": 6} and info["verify"] == {"ok": True, "decoded": False}
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
    assert none.exit_code == 2 and "index.json" in none.stderr and len(none.stderr.strip().splitlines()) == 1
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
