"""``actgen-demo``: the whole loop from one command (fit, active run with inline builds, baseline,
report), resumable, refusing a generator fitted on other data. Tiny sizes throughout."""
from __future__ import annotations

import json
import re

import pytest
from PIL import Image

from actgen.demo.config import DemoConfig
from actgen.demo.run import run
from actgen.fitting.config import load_fit_config
from actgen.shards.config import to_yaml
from actgen.shards.fit_record import FIT_RECORD_FILE, FitData, FitRecord, write_fit_record
from actgen.shards.reader import read_index
from actgen.shards.rounds import read_status
from actgen.trainer.config import config_to_yaml

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture
def demo_config(tiny_train_config, tiny_fit, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the fit and build subprocesses
    train = tmp_path / "train.yaml"
    train.write_text(config_to_yaml(tiny_train_config()))   # 4 epochs: rounds after epochs 0 and 1
    fit = tmp_path / "fit.yaml"
    fit.write_text(to_yaml(load_fit_config(None, ["output=unused", *tiny_fit, "model.attention_resolution=4"])))
    return DemoConfig(output=str(tmp_path / "demo"), train_config=str(train), build_config="configs/build-smoke.yaml",
                      build_overrides=["ray.executor=local", "budget=8", "schedule.horizon=null",
                                       "generator.attention_resolution=4"],
                      generator=str(tmp_path / "gen"), fit_config=str(fit))


@pytest.mark.slow
def test_demo_runs_the_loop_to_a_report_and_resumes(demo_config, tmp_path):
    report = run(demo_config)
    out = tmp_path / "demo"
    active = json.loads((out / "active" / "summary.json").read_text())
    baseline = json.loads((out / "baseline" / "summary.json").read_text())
    # The generator was fitted, every round built by it and consumed; the baseline saw none.
    record = json.loads((tmp_path / "gen" / FIT_RECORD_FILE).read_text())
    assert active["complete"] and baseline["complete"]
    assert [e["round"] for e in active["pool"]] == [0, 1] and active["synthetic_pool"] == 16
    assert baseline["synthetic_pool"] == 0
    for r in (0, 1):
        assert read_status(out / "active" / "rounds" / str(r)).state == "done"   # inline builds are marked too
        built = json.loads((out / "active" / "rounds" / str(r) / "shards" / "build.json").read_text())
        assert built["settings"]["generator"]["path"] == str((tmp_path / "gen").absolute())
        assert record["weights_sha256"]
    # Round 1 starts from round 0's memory bank (the paper's bank lives for the whole run).
    bank0 = read_index(out / "active" / "rounds" / "0" / "shards").created["memory_bank"]
    start1 = json.loads((out / "active" / "rounds" / "1" / "shards" / "build.json").read_text())["settings"]["bank_start"]
    assert bank0["entries"] > 0 and start1["rounds"] == [0] and start1["entries"] == bank0["entries"]
    # The report states the runs' own numbers and draws both figures.
    text = report.read_text()
    final = re.search(r"Final test accuracy: \*\*([\d.]+)%\*\* with synthetic data, ([\d.]+)% without", text)
    assert final, text
    assert float(final.group(1)) == pytest.approx(100 * active["final"]["test_acc"], abs=0.006)
    assert float(final.group(2)) == pytest.approx(100 * baseline["final"]["test_acc"], abs=0.006)
    assert text.count("\n| ") >= 2 + 4                       # round rows + per-epoch rows
    for png in ("accuracy.png", "hard_vs_rendered.png"):
        assert f"]({png})" in text
        with Image.open(out / png) as image:
            assert image.size[0] > 200 and image.size[1] > 50
    # A rerun reuses the generator and the finished runs: nothing is fitted or trained again.
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "gen" / FIT_RECORD_FILE, out / "active" / "last.pt",
                                                 out / "baseline" / "last.pt")}
    run(demo_config)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert "generator (reused)" in report.read_text() and "finished earlier" in report.read_text()


def test_demo_refuses_a_generator_fitted_on_other_data(demo_config, tmp_path):
    gen = tmp_path / "gen"
    names = [str(i) for i in range(10)]
    write_fit_record(gen, FitRecord(method="scratch", data=FitData(path="elsewhere", fingerprint="f" * 64,
                                                                   num_images=10, class_names=names),
                                    prompts=names, prompt_template="{}", steps=0, seed=0, seconds=0.0,
                                    weights_sha256="0" * 64, losses=[], config={}))
    with pytest.raises(ValueError, match=r"fit_record.json: this generator was fitted on data set ffffffffffff"):
        run(demo_config)
    assert not (tmp_path / "demo").exists()
