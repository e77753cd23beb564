"""Weights & Biases and MLflow through one logger interface (fakes of both packages, in-process):
every epoch's metrics, the loss and learning rate at every log line, the same run continued on
resume, and the missing package named before the run folder exists."""
from __future__ import annotations

import importlib.machinery
import sys
import types
from types import SimpleNamespace

import pytest

from actgen.trainer.run import run


def _module(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    for k, v in attrs.items():
        setattr(module, k, v)
    return module


@pytest.fixture
def fake_wandb(monkeypatch):
    calls = SimpleNamespace(init=[], logs=[], metrics=[], finished=0)

    class Run:
        def log(self, data):
            calls.logs.append(dict(data))

        def define_metric(self, name, step_metric=None):
            calls.metrics.append((name, step_metric))

        def finish(self):
            calls.finished += 1

    def init(**kw):
        calls.init.append(kw)
        return Run()

    monkeypatch.setitem(sys.modules, "wandb", _module(
        "wandb", init=init, util=SimpleNamespace(generate_id=lambda: "run0001"),
        Image=lambda path, caption=None: ("image", path, caption)))
    return calls


@pytest.fixture
def fake_mlflow(monkeypatch):
    calls = SimpleNamespace(started=[], params={}, metrics=[], ended=0, experiment=None)

    def start_run(run_name=None, run_id=None):
        calls.started.append({"run_name": run_name, "run_id": run_id})
        return SimpleNamespace(info=SimpleNamespace(run_id=run_id or "mlrun42"))

    monkeypatch.setitem(sys.modules, "mlflow", _module(
        "mlflow", start_run=start_run, set_experiment=lambda name: setattr(calls, "experiment", name),
        log_params=lambda p: calls.params.update(p),
        log_metrics=lambda m, step: calls.metrics.append((step, dict(m))),
        log_artifact=lambda path, artifact_path=None: None, end_run=lambda: setattr(calls, "ended", calls.ended + 1)))
    return calls


def test_wandb_and_mlflow_get_every_epoch_and_log_line_and_a_resume_continues_their_runs(
        tiny_train_config, fake_wandb, fake_mlflow, torch_one_thread, tmp_path):
    cfg = tiny_train_config("synthetic.source=none", "train.epochs=2", "rounds.horizon=1", "rounds.merge_epoch=2",
                            "train.loggers=[wandb, mlflow]", "train.logger_project=digits")
    run(cfg, stop_after=1)
    run(cfg, resume=True)
    # W&B: one run id for both processes of the run, the config, both epochs' test accuracy.
    assert [kw["id"] for kw in fake_wandb.init] == ["run0001", "run0001"]
    assert fake_wandb.init[0]["project"] == "digits" and fake_wandb.init[0]["config"]["train"]["epochs"] == 2
    epochs = [log for log in fake_wandb.logs if "epoch" in log]
    assert [log["epoch"] for log in epochs] == [0, 1] and all("eval/test_accuracy" in log for log in epochs)
    steps = [log for log in fake_wandb.logs if "step" in log]
    assert steps and all(log["train/step_loss"] > 0 and log["train/step_lr"] > 0 for log in steps)
    assert ("eval/test_accuracy", "epoch") in fake_wandb.metrics and fake_wandb.finished == 2
    # MLflow: the experiment and the parameters once, the same run continued, metrics per epoch.
    assert fake_mlflow.experiment == "digits" and fake_mlflow.params["train.epochs"] == "2"
    assert fake_mlflow.started == [{"run_name": "run", "run_id": None}, {"run_name": None, "run_id": "mlrun42"}]
    assert [step for step, m in fake_mlflow.metrics if "eval/test_accuracy" in m] == [0, 1]
    assert fake_mlflow.ended == 2


def test_a_logger_whose_package_is_missing_is_named_before_the_run_folder_exists(tiny_train_config, tmp_path,
                                                                                 monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    cfg = tiny_train_config("train.loggers=[mlflow]")
    with pytest.raises(ValueError, match=r"'train.loggers' = \['mlflow'\] needs the mlflow package.*actgen\[mlflow\]"):
        run(cfg)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="train.loggers"):
        tiny_train_config("train.loggers=[comet]")


def test_tensorboard_gets_the_log_lines_and_each_rounds_contact_sheet(tiny_train_config, tmp_path):
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from actgen.trainer.loggers import RunLoggers

    sheet = tmp_path / "run" / "rounds" / "0" / "shards" / "contact_sheet.png"
    sheet.parent.mkdir(parents=True)
    Image.new("RGB", (8, 4), (200, 10, 10)).save(sheet)
    logs = RunLoggers(tiny_train_config("train.tensorboard=true"), tmp_path / "run", enabled=True)
    logs.step(5, loss=1.5, lr=0.05)
    logs.round_image(tmp_path / "run", 0)
    logs.round_image(tmp_path / "run", 1)         # no sheet drawn for round 1: nothing
    logs.close()
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/step_loss")] == [(5, 1.5)]
    (image,) = events.Images("rounds/contact_sheet")
    assert image.step == 0 and (image.width, image.height) == (8, 4)
