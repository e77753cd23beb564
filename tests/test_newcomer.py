"""What a newcomer meets first: configs found from any folder, --version everywhere, and logs
that read well in a file (dated lines, no progress bars, a log file in every run folder)."""
from __future__ import annotations

import logging
import os
import re

import pytest
from click.testing import CliRunner

from actgen.shards import __version__

DATED = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} (INFO|WARNING|DEBUG|ERROR) ")


def test_shipped_configs_resolve_from_any_folder_and_a_path_wins(tmp_path, monkeypatch):
    from actgen.demo.config import load_demo_config
    from actgen.trainer.config import load_config

    monkeypatch.chdir(tmp_path)
    assert load_config("train-digits").name == "digits"                       # a bare name
    assert load_config("configs/train-digits.yaml").name == "digits"          # the repository's path
    assert load_demo_config("demo", []).train_config == "configs/train-digits.yaml"
    (tmp_path / "train-digits.yaml").write_text("name: mine\n")             # a file of that name here wins
    assert load_config("train-digits.yaml").name == "mine"
    with pytest.raises(FileNotFoundError, match="nor a config shipped with actgen.*train-digits"):
        load_config("train-digitz")


@pytest.mark.parametrize("module,name", [("actgen.trainer.cli", "train-digits"), ("actgen.builder.cli", "build-digits"),
                                         ("actgen.fitting.cli", "fit-digits-demo"), ("actgen.demo.cli", "demo")])
def test_config_by_name_from_a_folder_that_holds_a_directory_of_that_name(tmp_path, monkeypatch, module, name):
    """``make demo`` runs ``actgen-demo --config demo`` in the repository root, beside the ``demo/``
    package: the shipped config is loaded (an unknown --set key is then the error, named)."""
    import importlib

    monkeypatch.chdir(tmp_path)
    (tmp_path / name).mkdir()
    result = CliRunner().invoke(importlib.import_module(module).main, ["--config", name, "--set", "nokey=1"])
    assert result.exit_code == 2 and "nokey" in result.output and "directory" not in result.output, result.output


@pytest.mark.parametrize("module,prog", [("actgen.trainer.cli", "actgen-train"), ("actgen.builder.cli", "actgen-build"),
                                         ("actgen.fitting.cli", "actgen-fit-generator"),
                                         ("actgen.demo.cli", "actgen-demo"), ("actgen.sharing.cli", "actgen-data")])
def test_every_program_says_its_version(module, prog):
    import importlib

    result = CliRunner().invoke(importlib.import_module(module).main, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"{prog} {__version__}"


def test_no_progress_bars_off_a_terminal(monkeypatch):
    from actgen.fitting.progress import progress_bar
    from actgen.shards.runtime import progress_bars, setup_logging

    for name in ("TQDM_DISABLE", "HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.setenv(name, "")         # recorded, so the test leaves the environment as it found it
        monkeypatch.delenv(name)
    assert not progress_bars()               # pytest captures stderr: not a terminal
    setup_logging()
    assert os.environ["TQDM_DISABLE"] == "1" and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    assert progress_bar(True, 0, 100) is None   # the fit logs a line every log_every steps instead


@pytest.mark.usefixtures("torch_one_thread")
def test_a_run_keeps_its_own_dated_log(tiny_train_config):
    from actgen.shards.runtime import setup_logging
    from actgen.trainer.run import LOG_FILE, run

    setup_logging()
    cfg = tiny_train_config("synthetic.source=none", "train.epochs=1", "rounds.enabled=false")
    run(cfg)
    log = cfg.resolved_run_dir() / LOG_FILE
    lines = log.read_text().splitlines()
    assert lines and all(DATED.match(line) for line in lines if line and not line.startswith(" "))
    assert any("epoch 0/1 done" in line for line in lines) and "\r" not in log.read_text()
    # Detached when the run ends: a later run's lines do not land in this file.
    assert not [h for h in logging.getLogger().handlers
                if isinstance(h, logging.FileHandler) and h.baseFilename == str(log.absolute())]


@pytest.mark.usefixtures("torch_one_thread")
def test_tensorboard_scalars_match_the_metrics(tiny_train_config):
    import json

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from actgen.trainer.run import run

    cfg = tiny_train_config("synthetic.source=none", "train.epochs=2", "train.tensorboard=true")
    run(cfg)
    run_dir = cfg.resolved_run_dir()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    for tag, column in (("train/loss", "loss"), ("eval/test_accuracy", "test_acc"), ("train/lr", "lr"),
                        ("synthetic/share_of_epoch", "synthetic_share")):
        got = [(e.step, e.value) for e in events.Scalars(tag)]
        assert got == [(r["epoch"], pytest.approx(r[column], rel=1e-6)) for r in rows], tag
    assert [e.step for e in events.Scalars("rounds/hard_samples")] == [r["epoch"] for r in rows if r["round"] is not None]


@pytest.mark.parametrize("name", ["${oc.env:HOME}", "it's \"quoted\"", "a=b {x} ${y"])
def test_paths_from_the_command_line_are_literal(tmp_path, name, monkeypatch):
    """--run-dir, --output and a build's paths are taken as given: no interpolation, any name."""
    from actgen.builder.config import load_config as load_build, round_overrides
    from actgen.fitting.config import load_fit_config
    from actgen.trainer.cli import _load

    monkeypatch.setenv("HOME", "/somewhere/else")
    folder = tmp_path / name
    cfg = _load(Path_("configs/train-digits.yaml"), (), folder, False)
    assert cfg.resolved_run_dir() == folder
    assert load_fit_config("fit-digits", literal={"output": str(folder)}).output == str(folder)
    build = load_build("build-smoke", literal=round_overrides(folder))
    assert (build.checkpoint, build.manifest, build.output.path) == (
        str(folder / "checkpoint"), str(folder / "hard_samples.json"), str(folder / "shards"))


def Path_(text):
    from pathlib import Path

    return Path(__file__).resolve().parents[1] / text


def test_a_bad_set_value_is_exit_2_naming_the_key():
    from actgen.trainer.cli import main

    for value in ("train.epochs=abc", "train.epochs=[1", "train.epochs=${nope}"):
        result = CliRunner().invoke(main, ["--config", str(Path_("configs/train-digits.yaml")), "--set", value,
                                           "--print-config"])
        assert result.exit_code == 2, (value, result.output)
        assert "train.epochs" in result.output or "epochs" in result.output, (value, result.output)
