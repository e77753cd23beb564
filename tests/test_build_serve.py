"""``actgen-build --serve``: requests on stdin, one reply line each, one worker pool for all rounds."""
from __future__ import annotations

import io
import json

import pytest

from actgen.builder.serve import REPLY_PREFIX, parse_request, serve
from actgen.shards.rounds import read_status
from actgen.shards.sources import DIGIT_NAMES
from actgen.shards.verify import verify


def _replies(out: io.StringIO) -> list[dict]:
    lines = out.getvalue().splitlines()
    assert all(line.startswith(REPLY_PREFIX) for line in lines)
    return [json.loads(line[len(REPLY_PREFIX):]) for line in lines]


@pytest.mark.parametrize("line, error", [
    ("not json", "not JSON"),
    ("[1, 2]", "JSON list: expected an object"),
    ('{"round_dir": 3}', "round_dir = 3"),
    ('{"round_dir": "r", "outptu": "o"}', "unknown keys ['outptu']"),
    ('{"round_dir": "r", "dataset": "builtin:digits"}', "dataset = 'builtin:digits'"),
])
def test_a_bad_request_is_named(line, error):
    with pytest.raises(ValueError, match=error.replace("[", r"\[").replace("]", r"\]")):
        parse_request(line)


def test_every_request_gets_one_reply_and_a_failure_does_not_end_the_server(build_round, build_fast, tmp_path):
    pools, seen = [], []

    def fake_build(cfg, round_dir, pool):
        pools.append(pool)
        seen.append((round_dir, cfg.output.path, cfg.budget))
        if round_dir.name == "bad":
            raise FileNotFoundError(f"{round_dir}/hard_samples.json: no such file")
        return 6

    requests = [json.dumps({"round_dir": str(build_round), "output": str(tmp_path / "a")}), "",
                "garbage", json.dumps({"round_dir": str(tmp_path / "bad")}),
                json.dumps({"round_dir": str(build_round), "output": str(tmp_path / "b")})]
    out = io.StringIO()
    built = serve(None, [*build_fast, "budget=6"], requests, out, build=fake_build)
    replies = _replies(out)
    assert built == 2 and [r["ok"] for r in replies] == [True, False, False, True]
    assert "not JSON" in replies[1]["error"] and "hard_samples.json: no such file" in replies[2]["error"]
    assert replies[0]["images"] == 6
    assert len(set(map(id, pools))) == 1                 # one pool for every round
    assert seen[0][1] == str(tmp_path / "a") and seen[0][2] == 6   # the server's overrides apply
    assert seen[1][1] == str(tmp_path / "bad" / "shards")          # no output: the round's own shards/


def test_serving_a_round_folder_builds_and_marks_it(write_round, build_fast, tmp_path):
    directory, _ = write_round(tmp_path / "run" / "rounds" / "0", round=0)
    out = io.StringIO()
    assert serve(None, [*build_fast, "budget=4"], [json.dumps({"round_dir": str(directory)})], out) == 1
    (reply,) = _replies(out)
    assert reply["ok"] and reply["images"] == 4
    assert verify(directory / "shards", class_names=list(DIGIT_NAMES)).num_samples == 4
    assert read_status(directory).state == "done"


def test_a_request_with_a_huge_folder_or_odd_paths_is_answered_quickly(write_round, build_fast, tmp_path,
                                                                        monkeypatch):
    """A request naming a folder far larger than a data set is refused after a bounded walk (the
    server answers it and the next one); paths are taken literally, ``${`` and quotes included."""
    import actgen.shards.folders as folders

    monkeypatch.setattr(folders, "MAX_FOLDER_FILES", 50)
    huge = tmp_path / "home"
    for d in range(3):
        (huge / f"d{d}").mkdir(parents=True)
        for f in range(30):
            (huge / f"d{d}" / f"{f}.txt").write_text("x")
    directory, _ = write_round(tmp_path / "run ${oc.env:HOME} 'q\"" / "rounds" / "0", round=0)
    requests = [json.dumps({"round_dir": str(directory), "dataset": {"path": str(huge)}}),
                json.dumps({"round_dir": str(directory)})]
    out = io.StringIO()
    assert serve(None, [*build_fast, "budget=4"], requests, out) == 1
    first, second = _replies(out)
    assert not first["ok"] and "holds more than 50 files" in first["error"]
    assert second["ok"] and verify(directory / "shards").num_samples == 4     # the literal folder, built


def test_a_request_naming_a_system_folder_is_refused_in_seconds(write_round, build_fast, tmp_path):
    """A folder of many files that are not images (a home or system folder named by mistake) is
    refused by its listing, well within the bound, never crawled by `datasets`."""
    import time

    system = tmp_path / "usr"
    for d in range(4):
        (system / f"lib{d}").mkdir(parents=True)
        for f in range(400):
            (system / f"lib{d}" / f"mod{f}.py").write_text("x")
    (system / "icon.png").write_bytes(b"\x89PNG")
    directory, _ = write_round(tmp_path / "run" / "rounds" / "0", round=0)
    out = io.StringIO()
    started = time.monotonic()
    serve(None, [*build_fast, "budget=4"], [json.dumps({"round_dir": str(directory), "dataset": {"path": str(system)}})],
          out)
    (reply,) = _replies(out)
    assert not reply["ok"] and "files that are not images" in reply["error"] and str(system) in reply["error"]
    assert time.monotonic() - started < 10


def test_a_request_folder_is_bounded_by_its_listing_time_and_a_configured_one_is_not(write_round, build_fast,
                                                                                     tmp_path):
    """The bound is on time, not only on files: a request naming a folder that lists slowly is
    refused with the import advice; the server's own configured data set is listed unbounded."""
    from PIL import Image

    tiny = 1e-9      # every listing is "too slow"
    photos = tmp_path / "photos"
    for c in ("a", "b"):
        (photos / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (4, 4), (i, 9, 9)).save(photos / c / f"{i}.png")
    directory, _ = write_round(tmp_path / "run" / "rounds" / "0", round=0)
    out = io.StringIO()
    request = json.dumps({"round_dir": str(directory), "dataset": {"path": str(photos)}})
    serve(None, [*build_fast, "budget=4"], [request], out, listing_seconds=tiny)
    (reply,) = _replies(out)
    assert not reply["ok"] and "listing its files took over" in reply["error"] and "actgen-data import" in reply["error"]
    # The trainer's own server (no bound) lists the folder its requests name.
    out = io.StringIO()
    serve(None, [*build_fast, "budget=4"], [request], out, listing_seconds=None)
    (reply,) = _replies(out)
    assert not reply["ok"] and "listing" not in reply["error"] and "fingerprint" in reply["error"]
    out = io.StringIO()
    serve(None, [*build_fast, "budget=4", f"dataset.path={photos}"], [json.dumps({"round_dir": str(directory)})], out,
          listing_seconds=tiny)
    (reply,) = _replies(out)
    # Listed and read (then refused for being another data set than the manifest's, not for its listing).
    assert not reply["ok"] and "listing" not in reply["error"] and "fingerprint" in reply["error"]


def test_the_server_opens_its_data_set_once_for_every_round(write_round, build_fast, tmp_path, monkeypatch):
    """Opening a data set lists, indexes and fingerprints it: a server does it at its first round,
    not at every round (a changed file is opened again)."""
    import actgen.builder.inputs as inputs
    import actgen.builder.resident as resident

    opened = []
    real = inputs.load_source
    monkeypatch.setattr(inputs, "load_source", lambda source: opened.append(source.path) or real(source))
    monkeypatch.delitem(resident._RESIDENT, "dataset", raising=False)
    rounds = [write_round(tmp_path / "run" / "rounds" / str(r), round=r)[0] for r in range(3)]
    out = io.StringIO()
    assert serve(None, [*build_fast, "budget=4"], [json.dumps({"round_dir": str(d)}) for d in rounds], out) == 3
    assert [r["ok"] for r in _replies(out)] == [True] * 3
    assert len(opened) == 1


def test_a_data_set_file_replaced_between_rounds_is_opened_again(tmp_path, monkeypatch):
    import os

    import actgen.builder.inputs as inputs
    import actgen.builder.resident as resident
    from actgen.shards.sources import DataSource, digits_dataset

    monkeypatch.delitem(resident._RESIDENT, "dataset", raising=False)
    path = tmp_path / "d.parquet"
    digits_dataset().select(range(20)).to_parquet(str(path))
    source = DataSource(path=str(path))
    first = inputs.open_source(source)
    assert inputs.open_source(source) is first
    digits_dataset().select(range(30)).to_parquet(str(path))
    os.utime(path, ns=(1, 1))                 # a modification time unlike the first file's
    again = inputs.open_source(source)
    assert again is not first and len(again) == 30
