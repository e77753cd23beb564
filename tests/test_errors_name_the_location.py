"""Errors about a received data set name the location the user gave (and the member inside it),
never a staging copy: the trainer's received sets and rounds, and actgen-data's readers of URLs."""
from __future__ import annotations

import dataclasses

import pytest
from click.testing import CliRunner

from actgen.shards.errors import FormatError
from actgen.shards.reader import read_index
from actgen.shards.sources import DIGIT_NAMES
from actgen.shards.writer import write_index


def _miscounted(write_digit_shards, directory):
    """A set whose index claims one sample more in its first shard than the shard holds (the
    checksums still match: it fetches, then fails verification)."""
    write_digit_shards(directory, n=6)
    index = read_index(directory)
    first = dataclasses.replace(index.shards[0], num_samples=index.shards[0].num_samples + 1)
    write_index(directory, dataclasses.replace(index, shards=[first, *index.shards[1:]],
                                               num_samples=index.num_samples + 1))
    return index.shards[0].filename


def test_a_received_set_that_fails_verification_is_named_as_given(write_digit_shards, tmp_path):
    from actgen.trainer.synthetic import acquire, acquire_static

    shard = _miscounted(write_digit_shards, tmp_path / "theirs")
    location = str(tmp_path / "theirs")
    for call in (lambda: acquire_static(location, 0, tmp_path / "run", 0, list(DIGIT_NAMES)),
                 lambda: acquire(location, tmp_path / "run", 0, 1, list(DIGIT_NAMES))):
        with pytest.raises(FormatError) as e:
            call()
        assert e.value.where.startswith(location) and shard in str(e.value)
        assert "unverified" not in str(e.value) and ".static-" not in str(e.value) and "synthetic/" not in str(e.value)
    assert not any((tmp_path / "run" / "synthetic").iterdir())      # nothing left behind


@pytest.mark.parametrize("command", ["info", "verify", "merge", "filter"])
def test_actgen_data_names_the_url_not_its_temporary_copy(command, write_digit_shards, serve_directory, tmp_path,
                                                          write_round):
    from actgen.sharing.cli import main

    shard = _miscounted(write_digit_shards, tmp_path / "served" / "set")
    url = serve_directory(tmp_path / "served") + "/set"
    round_dir, _ = write_round(tmp_path / "round")
    argv = {"info": ["info", url], "verify": ["verify", url], "merge": ["merge", str(tmp_path / "out"), url],
            "filter": ["filter", url, str(tmp_path / "out"), "--checkpoint", str(round_dir / "checkpoint")]}[command]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code in (1, 2), result.output
    (line,) = [x for x in result.output.splitlines() if x.startswith(f"actgen-data {command}: ") or "FAILED" in x
               or x.startswith(f"{url}: ")]
    assert f"{url}/{shard}" in line and "actgen-data-" not in line, result.output
