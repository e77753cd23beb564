"""``actgen-build``: help, and bad input giving one error line, exit code 2 and nothing written."""
from __future__ import annotations

import logging
import shutil

import pytest
from click.testing import CliRunner

from actgen.builder.cli import main


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _build(round_dir, output, build_fast, *sets: str):
    args = ["--round-dir", str(round_dir), "--output", str(output)]
    for s in (*build_fast, "budget=4", *sets):
        args += ["--set", s]
    return _invoke(*args)


def _assert_one_error_line(result, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [ln for ln in result.stderr.splitlines() if "error" in ln.lower()]
    assert len(errors) == 1, errors
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("actgen-build: error: ") and last == errors[0]
    for fragment in fragments:
        assert fragment in last, last
    return last


def test_help_explains_the_command():
    result = _invoke("--help")
    assert result.exit_code == 0
    for text in ("--config", "--round-dir", "--checkpoint", "--manifest", "--output", "--set", "KEY=VALUE",
                 "hard_samples.json", "status 2"):
        assert text in result.output


def test_print_config_shows_the_resolved_config(build_round, tmp_path):
    result = _invoke("--round-dir", str(build_round), "--set", "guidance.margin=200", "--print-config")
    assert result.exit_code == 0
    assert "margin: 200.0" in result.output and f"checkpoint: {build_round / 'checkpoint'}" in result.output
    assert not (build_round / "shards").exists()


def test_budget_of_zero(build_round, tmp_path, build_fast):
    _assert_one_error_line(_build(build_round, tmp_path / "out", build_fast, "budget=0"), "config key 'budget' = 0")
    assert not (tmp_path / "out").exists()


def test_data_set_with_another_fingerprint(build_round, tmp_path, build_fast):
    import datasets
    import numpy as np

    from actgen.shards.sources import DIGIT_NAMES

    # Same features and names as the digits, other pixels: only the fingerprint tells them apart.
    pixels = np.zeros((3, 8, 8), dtype=np.uint8)
    ds = datasets.Dataset.from_dict({"image": list(pixels), "label": [0, 1, 2]}, features=datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(DIGIT_NAMES))}))
    ds.save_to_disk(str(tmp_path / "other"))
    result = _build(build_round, tmp_path / "out", build_fast, f"dataset.path={tmp_path / 'other'}")
    _assert_one_error_line(result, "hard_samples.json", "data-set fingerprint 1a9d3bd31280", "does not match")
    assert not (tmp_path / "out").exists()


def test_checkpoint_with_other_class_names(build_round, tmp_path, build_fast, write_round):
    names = [f"class{i}" for i in range(10)]
    other, _ = write_round(tmp_path / "other", class_names=names)
    result = _invoke("--checkpoint", str(other / "checkpoint"), "--manifest", str(build_round / "hard_samples.json"),
                     "--output", str(tmp_path / "out"), *[a for s in build_fast for a in ("--set", s)])
    line = _assert_one_error_line(result, "config.json: class names differ", "checkpoint has ['class0', 'class1'",
                                  "has ['zero', 'one'")
    assert "class9" in line and "nine" in line                     # both lists, whole
    assert not (tmp_path / "out").exists()


def test_checkpoint_that_did_not_make_the_manifest(build_round, tmp_path, build_fast, write_round):
    other, _ = write_round(tmp_path / "other", weights_seed=1)     # same names, other weights
    result = _invoke("--checkpoint", str(other / "checkpoint"), "--manifest", str(build_round / "hard_samples.json"),
                     "--output", str(tmp_path / "out"), *[a for s in build_fast for a in ("--set", s)])
    _assert_one_error_line(result, "header.checkpoint_sha256", "check_checkpoint=false")
    assert not (tmp_path / "out").exists()


def test_generator_directory_missing_a_component(build_round, tiny_generator, tmp_path, build_fast):
    tiny_generator.save_pretrained(tmp_path / "sd")
    shutil.rmtree(tmp_path / "sd" / "vae")
    result = _build(build_round, tmp_path / "out", build_fast, f"generator.path={tmp_path / 'sd'}")
    _assert_one_error_line(result, f"{tmp_path / 'sd'}: missing component 'vae/'")
    assert not (tmp_path / "out").exists()


def test_unwritable_output(build_round, tmp_path, build_fast):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    _assert_one_error_line(_build(build_round, blocker / "out", build_fast), "a-file is a file, not a directory")
    _assert_one_error_line(_build(build_round, blocker, build_fast), "exists and is not a directory")
    # A directory nobody may create entries in (root included): /proc.
    _assert_one_error_line(_build(build_round, "/proc/actgen-build-test", build_fast), "cannot create output.path under /proc")


def test_missing_manifest_and_unknown_key(build_round, tmp_path, build_fast):
    result = _invoke("--checkpoint", str(build_round / "checkpoint"), "--manifest", str(tmp_path / "none.json"),
                     "--output", str(tmp_path / "out"))
    _assert_one_error_line(result, "none.json: file not found")
    _assert_one_error_line(_build(build_round, tmp_path / "out", build_fast, "guidance.marginn=3"), "marginn")
    assert not (tmp_path / "out").exists()


def test_a_round_dir_that_is_no_round_folder_is_named_and_left_untouched(tmp_path):
    # Nothing there: the missing manifest is named, and no build status or output is written.
    _assert_one_error_line(_invoke("--round-dir", str(tmp_path / "no-round")), "no-round/hard_samples.json")
    assert not (tmp_path / "no-round").exists()
