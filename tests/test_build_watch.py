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

    with pytest.raises(RuntimeError, match="out of memory"):
        watch(SMOKE, ["ray.executor=local"], WatchOptions(tmp_path / "run", poll_s=1), build=broken)
    status = read_status(directory)
    assert (status.state, status.attempts, status.round) == ("failed", 1, 1)
    assert status.error.startswith("CUDA error: out of memory") and "\n" not in status.error


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
