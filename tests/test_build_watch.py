"""``actgen.builder.watch`` without subprocesses: idle timeout, failure marking, staleness."""
from __future__ import annotations

import json
import shutil

import pytest

from actgen.builder.watch import WatchOptions, is_built, watch
from actgen.shards.rounds import BuildStatus, read_status, write_status

SMOKE = "configs/build-smoke.yaml"


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def sleep(self, seconds):
        self.now += seconds

    def __call__(self):
        return self.now


def test_watch_gives_up_after_the_idle_timeout_naming_the_round(tmp_path):
    clock = FakeClock()
    with pytest.raises(TimeoutError, match=r"no new round to build for 30 s .* round 0 never appeared"):
        watch(SMOKE, [], WatchOptions(tmp_path / "not-yet", poll_s=10, idle_timeout_s=30),
              build=lambda cfg: pytest.fail("nothing to build"), sleep=clock.sleep, clock=clock)
    assert clock.now == 40  # looked at 0, 10, 20, 30 s, gave up past 30 s


def test_a_failed_round_is_marked_with_the_error_and_raised(build_round, tmp_path):
    directory = tmp_path / "run" / "rounds" / "1"
    shutil.copytree(build_round, directory)

    def broken(cfg):
        assert cfg.output.overwrite and cfg.manifest.endswith("rounds/1/hard_samples.json")
        raise RuntimeError("CUDA error: out of memory\n(more lines)")

    clock = FakeClock()
    with pytest.raises(RuntimeError, match="out of memory"):
        watch(SMOKE, ["ray.executor=local"], WatchOptions(tmp_path / "run", poll_s=1, retries=2, backoff_s=30),
              build=broken, sleep=clock.sleep, clock=clock)
    assert clock.now == 30 + 60                          # two retries, the second after twice the wait
    status = read_status(directory)
    assert (status.state, status.attempts, status.round) == ("failed", 3, 1)
    assert status.error.startswith("CUDA error: out of memory") and "\n" not in status.error


def test_a_round_that_fails_once_is_marked_retrying_then_built(build_round, tmp_path):
    directory = tmp_path / "run" / "rounds" / "0"
    shutil.copytree(build_round, directory)
    from actgen.builder.pipeline import run

    seen = []

    def flaky(cfg):
        status = read_status(directory)
        seen.append((status.state, status.attempts))
        if len(seen) == 1:
            raise OSError("Input/output error: node lost")
        # While the watcher waits to retry, the trainer sees "retrying", not "failed".
        return run(cfg)

    states = []
    clock = FakeClock()

    def sleep(seconds):
        if seconds == 5:                                 # the retry's wait, not a poll
            states.append((read_status(directory).state, read_status(directory).error))
        clock.sleep(seconds)

    with pytest.raises(TimeoutError, match="round 1 never appeared"):   # the run's later rounds never come
        watch(SMOKE, ["ray.executor=local"], WatchOptions(tmp_path / "run", poll_s=1, idle_timeout_s=3, retries=1,
                                                          backoff_s=5), build=flaky, sleep=sleep, clock=clock)
    assert seen == [("building", 1), ("building", 2)]
    assert states == [("retrying", "Input/output error: node lost")]
    status = read_status(directory)
    assert (status.state, status.attempts) == ("done", 2) and is_built(directory)


def test_no_retries_marks_failed_at_the_first_error(build_round, tmp_path):
    directory = tmp_path / "run" / "rounds" / "1"
    shutil.copytree(build_round, directory)
    with pytest.raises(ValueError, match="bad"):
        watch(SMOKE, ["ray.executor=local"], WatchOptions(tmp_path / "run", retries=0),
              build=lambda cfg: (_ for _ in ()).throw(ValueError("bad")), sleep=lambda s: pytest.fail("waited"))
    assert read_status(directory).state == "failed"


def test_a_bad_config_fails_before_any_round_is_touched(build_round, tmp_path):
    directory = tmp_path / "run" / "rounds" / "1"
    shutil.copytree(build_round, directory)
    with pytest.raises(ValueError, match="budgett"):
        watch(SMOKE, ["budgett=3"], WatchOptions(tmp_path / "run"), build=lambda cfg: pytest.fail("built"))
    assert read_status(directory) is None


def test_done_counts_only_with_an_index_of_the_manifest_now_there(build_config, build_round, tmp_path):
    from actgen.builder.pipeline import run

    directory = tmp_path / "rounds" / "1"
    shutil.copytree(build_round, directory)
    write_status(directory, BuildStatus(state="done", round=1))
    assert not is_built(directory)                      # marked, but no data set
    run(build_config(f"manifest={directory / 'hard_samples.json'}", output=directory / "shards"))
    assert is_built(directory)
    manifest = json.loads((directory / "hard_samples.json").read_text())
    manifest["samples"] = manifest["samples"][:-1]      # the trainer wrote the round anew
    (directory / "hard_samples.json").write_text(json.dumps(manifest))
    assert not is_built(directory)
