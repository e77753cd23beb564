"""--print-config on every command that takes a config: the resolved config as YAML, needing no
inputs (no checkpoint, no data, no run folder), with the overrides applied."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("module, argv, key, value", [
    ("actgen.trainer.cli", ["--config", "configs/train-digits.yaml", "--set", "train.epochs=7"],
     ("train", "epochs"), 7),
    ("actgen.builder.cli", ["--config", "configs/build-digits.yaml", "--set", "budget=9"], ("budget",), 9),
    ("actgen.builder.cli", ["--config", "configs/build-digits.yaml", "--watch", "runs/x", "--set", "budget=9"],
     ("budget",), 9),
    ("actgen.builder.cli", ["--serve", "--set", "budget=9"], ("budget",), 9),
    ("actgen.fitting.cli", ["--config", "configs/fit-digits.yaml", "--set", "train.steps=11"], ("train", "steps"), 11),
    ("actgen.fitting.cli", ["--lora", "--set", "base=/models/sd", "--set", "steps=11"], ("steps",), 11),
    ("actgen.demo.cli", ["--config", "demo", "--set", "output=runs/elsewhere"], ("output",), "runs/elsewhere"),
    ("actgen.study.cli", ["docs/study/plan-2.yaml", "--set", "budget=5"], ("budget",), 5),
])
def test_every_command_prints_its_resolved_config_without_inputs(module, argv, key, value, monkeypatch, tmp_path):
    import importlib

    monkeypatch.chdir(REPO)
    main = importlib.import_module(module).main
    result = CliRunner().invoke(main, [*argv, "--print-config"])
    assert result.exit_code == 0, result.output
    data = yaml.safe_load(result.output)
    for k in key:
        data = data[k]
    assert data == value
    assert not (REPO / "runs" / "x").exists()
