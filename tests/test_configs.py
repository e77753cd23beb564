"""Every shipped config loads; the paper-recipe configs carry the paper's schedule and budget."""
from __future__ import annotations

from pathlib import Path

import pytest

from actgen.builder.config import load_config as load_build
from actgen.demo.config import load_demo_config
from actgen.fitting.config import load_fit_config, load_lora_config
from actgen.trainer.config import load_config as load_train
from actgen.trainer.schedule import RoundSchedule

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ROUND = ["checkpoint=r/checkpoint", "manifest=r/hard_samples.json", "output.path=r/shards"]


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    kind = path.name.split("-")[0].removesuffix(".yaml")
    loader = {"train": lambda p: load_train(p), "build": lambda p: load_build(p, ROUND),
              "fit": lambda p: (load_lora_config if p.name.startswith("fit-lora-") else load_fit_config)(p),
              "demo": lambda p: load_demo_config(p)}
    assert kind in loader, f"{path.name}: name it train-/build-/fit-*.yaml (fit-lora-*.yaml for --lora) or demo.yaml"
    loader[kind](path)


def test_the_demo_points_at_shipped_configs():
    demo = load_demo_config(CONFIGS / "demo.yaml")
    for path in (demo.train_config, demo.build_config, demo.fit_config):
        assert (CONFIGS.parent / path).is_file(), path
    fit = load_fit_config(CONFIGS.parent / demo.fit_config)
    build = load_build(CONFIGS.parent / demo.build_config, ROUND)
    assert build.generator.path == demo.generator == fit.output
    assert build.generator.attention_resolution == fit.model.attention_resolution


@pytest.mark.parametrize("train, build, total", [
    ("train-cifar10-sd21.yaml", "build-sd21-base.yaml", 9_600),          # paper: 9.6K
    ("train-cifar100-sd21.yaml", "build-sd21-base.yaml", 9_600),         # paper: 9.6K
    ("train-imagenet-resnet50.yaml", "build-imagenet-sd21.yaml", 130_050),  # paper: 0.13M
])
def test_paper_recipes_have_the_papers_schedule_and_budget(train, build, total):
    t = load_train(CONFIGS / train)
    b = load_build(CONFIGS / build, ROUND)
    schedule = RoundSchedule.from_config(t.rounds, t.train.epochs)
    assert t.train.epochs == 300 and schedule.num_rounds == 150 and schedule.merge_epoch == 150
    assert b.budget * schedule.num_rounds == total
    # The builder's §1.3 schedules follow the trainer's round count (from the manifest).
    assert b.schedule.enabled and b.schedule.horizon is None
    assert (b.guidance.num_steps, b.guidance.cfg_scale, b.guidance.guidance_steps) == (40, 7.5, 10)
    assert t.synthetic.source == "shards" and t.synthetic.on_missing == "wait"
    assert t.loader.batch_size == 128 and t.train.seed == 42
    if "imagenet" in train:
        assert (t.optim.opt, t.optim.lr, t.optim.eps, t.train.ema_decay) == ("adamw", 1e-3, 1e-3, 0.9998)
        assert round(t.data.holdout_fraction * 1_281_167) == 9_993   # ~10,000 held out
        assert b.output.resize == "fixed" and b.output.size == 256
    else:
        assert (t.optim.opt, t.optim.lr, t.optim.weight_decay) == ("momentum", 0.1, 1e-4)
        assert t.data.holdout_fraction == 0.1 and b.output.resize == "classifier"
