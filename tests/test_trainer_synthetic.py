"""Consuming a round's shards: the on_missing policies, fetch + verify, the pool."""
from __future__ import annotations

import logging

import pytest

from actgen.shards.errors import FormatError
from actgen.shards.sources import DIGIT_NAMES
from actgen.trainer.config import SyntheticConfig
from actgen.trainer.data import SyntheticImages, build_train_transform
from actgen.trainer.config import InputConfig
from actgen.trainer.synthetic import acquire, is_finished, pool_from_state, round_location, wait_until_finished


class _Clock:
    """A fake clock whose sleep advances time, and which can run a callback at a given time."""

    def __init__(self, at=None, action=None):
        self.now, self.at, self.action, self.sleeps = 0.0, at, action, []

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds
        if self.at is not None and self.now >= self.at and self.action:
            self.action()
            self.action = None

    def __call__(self):
        return self.now


def test_round_location_pattern():
    assert round_location("{run_dir}/rounds/{round}/shards", "runs/a", 3) == "runs/a/rounds/3/shards"
    assert round_location("http://host/x/r{round:04d}", "runs/a", 3) == "http://host/x/r0003"


def test_unfinished_directory_is_not_finished(tmp_path):
    (tmp_path / "synth-000000.tar").write_bytes(b"partial")
    assert not is_finished(str(tmp_path))
    assert not is_finished(str(tmp_path / "absent"))


def test_a_corrupt_index_is_an_error_not_unfinished(tmp_path):
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(FormatError, match="index.json"):
        is_finished(str(tmp_path))


def test_on_missing_error_and_skip(tmp_path):
    where = str(tmp_path / "none")
    with pytest.raises(FileNotFoundError, match="round 2's synthetic data set at .*none is not finished"):
        wait_until_finished(where, SyntheticConfig(on_missing="error"), round=2)
    assert wait_until_finished(where, SyntheticConfig(on_missing="skip"), round=2) is False


def test_skip_warns_on_the_first_look_only(tmp_path, caplog):
    cfg = SyntheticConfig(on_missing="skip")
    with caplog.at_level(logging.DEBUG, logger="actgen.trainer.synthetic"):
        assert not wait_until_finished(str(tmp_path / "r0"), cfg, round=0, first_look=True)
        assert not wait_until_finished(str(tmp_path / "r0"), cfg, round=0, first_look=False)
    levels = [r.levelno for r in caplog.records if "round 0" in r.getMessage()]
    assert levels == [logging.WARNING, logging.DEBUG]


def test_on_missing_wait_polls_until_the_data_set_appears(tmp_path, write_digit_shards):
    where = tmp_path / "late"
    clock = _Clock(at=25.0, action=lambda: write_digit_shards(where, n=4))
    cfg = SyntheticConfig(on_missing="wait", timeout_s=100, poll_s=10)
    assert wait_until_finished(str(where), cfg, 0, sleep=clock.sleep, clock=clock) is True
    assert clock.sleeps == [10, 10, 10]


def test_on_missing_wait_times_out(tmp_path):
    clock = _Clock()
    cfg = SyntheticConfig(on_missing="wait", timeout_s=25, poll_s=10)
    with pytest.raises(TimeoutError, match="after waiting 25 s"):
        wait_until_finished(str(tmp_path / "never"), cfg, 0, sleep=clock.sleep, clock=clock)
    assert clock.sleeps == [10, 10, 5]


def test_acquire_copies_into_the_run_and_opens_as_a_dataset(tmp_path, write_digit_shards):
    source = write_digit_shards(tmp_path / "builder" / "r0", n=6)
    run_dir = tmp_path / "run"
    entry = acquire(str(source), run_dir, round=0, epoch=1, class_names=list(DIGIT_NAMES))
    assert (entry.round, entry.num_samples, entry.epoch) == (0, 6, 1)
    copy = run_dir / entry.directory
    assert (copy / "index.json").is_file()
    # The copy is independent of the builder's folder.
    for f in source.iterdir():
        f.unlink()
    assert pool_from_state([entry.to_dict()], run_dir) == [entry]
    images = SyntheticImages(copy, build_train_transform(InputConfig(image_size=16, crop="none")))
    x, y = images[5]
    assert x.shape == (3, 16, 16) and 0 <= y < 10


def test_acquire_rejects_other_class_names_showing_both_lists(tmp_path, write_digit_shards):
    source = write_digit_shards(tmp_path / "b", n=4, class_names=["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"])
    with pytest.raises(FormatError) as info:
        acquire(str(source), tmp_path / "run", round=0, epoch=1, class_names=list(DIGIT_NAMES))
    message = str(info.value)
    assert "class names differ" in message and "'a'" in message and "'zero'" in message
    assert not (tmp_path / "run" / "synthetic" / "round-0000").exists()  # nothing half-accepted


def test_acquire_rejects_a_truncated_shard(tmp_path, write_digit_shards):
    source = write_digit_shards(tmp_path / "b", n=4)
    shard = sorted(source.glob("*.tar"))[0]
    shard.write_bytes(shard.read_bytes()[:700])
    with pytest.raises(FormatError, match=shard.name):
        acquire(str(source), tmp_path / "run", round=0, epoch=1, class_names=list(DIGIT_NAMES))
    assert not (tmp_path / "run" / "synthetic" / "round-0000").exists()


def test_pool_from_state_names_a_missing_copy(tmp_path):
    entry = {"round": 0, "directory": "synthetic/round-0000", "location": "x", "num_samples": 3, "epoch": 1}
    with pytest.raises(FormatError, match="round-0000"):
        pool_from_state([entry], tmp_path)


def test_acquire_over_http(tmp_path, write_digit_shards, serve_directory):
    write_digit_shards(tmp_path / "served" / "r3", n=5, round=3)
    url = serve_directory(tmp_path / "served")
    location = round_location(url + "/r{round}", "unused", 3)
    assert not is_finished(url + "/r4")  # 404: not finished yet
    assert wait_until_finished(location, SyntheticConfig(on_missing="error"), round=3)
    entry = acquire(location, tmp_path / "run", round=3, epoch=4, class_names=list(DIGIT_NAMES))
    assert entry.location == location and entry.num_samples == 5
    assert (tmp_path / "run" / "synthetic" / "round-0003" / "index.json").is_file()


def test_waiting_for_a_round_whose_build_failed_fails_at_once_with_the_builders_message(tmp_path):
    from actgen.shards.rounds import BuildStatus, write_status
    from actgen.trainer.config import SyntheticConfig
    from actgen.trainer.synthetic import BuildFailed, wait_until_finished

    round_dir = tmp_path / "rounds" / "0"
    round_dir.mkdir(parents=True)
    (round_dir / "hard_samples.json").write_text("{}")
    write_status(round_dir, BuildStatus(state="failed", round=0, attempts=1, error="CUDA out of memory"))
    cfg = SyntheticConfig(on_missing="wait", timeout_s=3600, poll_s=60)
    slept = []
    with pytest.raises(BuildFailed, match="failed to build \\(CUDA out of memory\\)"):
        wait_until_finished(str(round_dir / "shards"), cfg, 0, sleep=slept.append)
    assert slept == []                                   # no waiting out the timeout
    # Under skip the run goes on without it, as for any missing round.
    assert wait_until_finished(str(round_dir / "shards"), SyntheticConfig(on_missing="skip"), 0) is False


def test_a_round_the_builder_is_retrying_is_waited_for(tmp_path):
    from actgen.shards.rounds import BuildStatus, write_status
    from actgen.trainer.config import SyntheticConfig
    from actgen.trainer.synthetic import wait_until_finished

    round_dir = tmp_path / "rounds" / "0"
    round_dir.mkdir(parents=True)
    (round_dir / "hard_samples.json").write_text("{}")
    write_status(round_dir, BuildStatus(state="retrying", round=0, attempts=1, error="node lost"))
    now = [0.0]

    def sleep(seconds):
        now[0] += seconds
        if now[0] >= 120:            # the builder gives up during the wait: the trainer stops then
            write_status(round_dir, BuildStatus(state="failed", round=0, attempts=3, error="node lost"))

    from actgen.trainer.synthetic import BuildFailed
    with pytest.raises(BuildFailed, match="failed to build \\(node lost\\)"):
        wait_until_finished(str(round_dir / "shards"), SyntheticConfig(on_missing="wait", timeout_s=3600, poll_s=60),
                            0, sleep=sleep, clock=lambda: now[0])
    assert now[0] == 120                                 # waited while retrying, stopped at "failed"


def test_a_round_from_the_same_file_system_joins_the_pool_as_hard_links_not_a_second_copy(tmp_path,
                                                                                           write_digit_shards):
    import os

    from actgen.shards.reader import read_index
    from actgen.trainer.synthetic import acquire

    write_digit_shards(tmp_path / "built", n=12)
    entry = acquire(str(tmp_path / "built"), tmp_path / "run", 0, 1, list(DIGIT_NAMES))
    for shard in read_index(tmp_path / "built").shards:
        original, pooled = tmp_path / "built" / shard.filename, tmp_path / "run" / entry.directory / shard.filename
        assert os.path.samefile(original, pooled) and pooled.stat().st_nlink == 2
    # A shard that does not match its index is still refused (and not linked).
    bad = tmp_path / "bad"
    write_digit_shards(bad, n=12)
    first = read_index(bad).shards[0].filename
    data = bytearray((bad / first).read_bytes())
    data[-600] ^= 0xFF
    (bad / first).write_bytes(bytes(data))
    with pytest.raises(FormatError, match="sha256"):
        acquire(str(bad), tmp_path / "run2", 0, 1, list(DIGIT_NAMES))
